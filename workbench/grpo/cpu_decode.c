/* The fused sampler's CPU decode step for bf16 Llama-style models on x86 CPUs with AVX512-BF16, and the small-batch
 * matrix product it is built on. Compiled and loaded at first use by `cpu_kernels.py`, which says why it exists.
 *
 * Rounding follows the HF bf16 forward op by op (each result rounded to bf16 where HF rounds it); sums, norms and
 * the softmax run in fp32, as in HF's kernels.
 *
 * Weights are packed once per refresh (`wb_pack_rows`) into panels of 16 output columns, with each pair of input columns
 * interleaved ("VNNI" order): one 64-byte load then holds 16 columns x 2 inputs, and `vdpbf16ps` multiplies it by
 * a broadcast pair of an input row, adding into 16 fp32 sums. A row block of up to 8 inputs runs against NP panels
 * at a time, so each weight byte is read from memory once per call and no horizontal sums are needed.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static inline float b2f(bf16 b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline bf16 f2b(float f) { /* round to nearest even, NaN kept NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}

static inline float rb(float f) { return b2f(f2b(f)); } /* what a bf16 tensor op stores */

/* 16 lanes at a time: bf16 -> fp32 is a shift; fp32 -> bf16 rounds to nearest even (vcvtneps2bf16) */
static inline __m512 ld16(const bf16 *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16));
}
static inline void st16(bf16 *p, __m512 v) { _mm256_storeu_si256((void *)p, (__m256i)_mm512_cvtneps_pbh(v)); }
static inline __m512 rb16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

/* e^x for 16 lanes: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7,
 * far below the bf16 rounding that follows); below -87 (and for -inf) it returns 0, as expf underflows. */
static inline __m512 exp16(__m512 x) {
  __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_GE_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-87.f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 y = _mm512_set1_ps(1.f / 720);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 120));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 24));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(y, n));
}

/* ---- packing --------------------------------------------------------------------------------------------- */

/* Panels of a (N, K) row-major matrix: ceil(N/COLS)*NP panels of 16 columns, each ceil(K/2) pairs x 16 x 2. */
#ifndef NP
#define NP 3 /* panels per tile: 8 rows x 3 panels = 24 fp32 sums in registers */
#endif
#define COLS (16 * NP)
long wb_packed_elems(int N, int K) { return (long)((N + COLS - 1) / COLS) * COLS * ((K + 1) / 2) * 2; }

/* Rows n0..n0+N-1 of a packed (Ntot, K) matrix from w (N, K), plus scale * b (N, r) @ a (r, K) when r > 0: a LoRA
 * delta merged and packed in one pass, as torch.addmm(w, b, a, alpha=scale) in bf16 (fp32 sums, one rounding).
 * Rows outside the range are left as they are (a fused matrix is written part by part). 2 when out of memory. */
int wb_pack_rows(const bf16 *w, int N, int K, const bf16 *a, const bf16 *b, int r, float scale, int n0, bf16 *out,
                 int threads) {
  int kp = (K + 1) / 2, p0 = n0 / 16, p1 = (n0 + N + 15) / 16, err = 0;
#pragma omp parallel num_threads(threads)
  {
    bf16 *t = calloc((size_t)16 * kp * 2, sizeof(bf16)); /* the panel's rows, row-major, K padded to even */
    float *bt = calloc((size_t)(r > 0 ? r : 1) * 16, sizeof(float)); /* B's rows of the panel, transposed */
    if (!t || !bt) err = 2;
#pragma omp for schedule(static)
    for (int p = p0; p < p1; p++) {
      if (!t || !bt) continue;
      int c0 = p == p0 ? n0 % 16 : 0, c1 = (p + 1) * 16 > n0 + N ? n0 + N - p * 16 : 16;
      const bf16 *src = w + (size_t)(p * 16 - n0) * K; /* row c of the panel is src + c * K (for c0 <= c < c1) */
      for (int c = c0; c < c1; c++) memcpy(t + (size_t)c * kp * 2, src + (size_t)c * K, sizeof(bf16) * (size_t)K);
      if (r > 0) { /* delta = B A for the panel's 16 rows, 16 columns at a time: A's row loaded once per j */
        for (int j = 0; j < r; j++)
          for (int c = 0; c < 16; c++) bt[j * 16 + c] = c >= c0 && c < c1 ? b2f(b[(size_t)(p * 16 + c - n0) * r + j]) : 0.f;
        int k = 0;
        for (; k + 16 <= K; k += 16) {
          __m512 acc[16];
          for (int c = 0; c < 16; c++) acc[c] = _mm512_setzero_ps();
          for (int j = 0; j < r; j++) {
            __m512 av = ld16(a + (size_t)j * K + k);
            for (int c = 0; c < 16; c++) acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(bt[j * 16 + c]), av, acc[c]);
          }
          for (int c = c0; c < c1; c++) {
            bf16 *row = t + (size_t)c * kp * 2 + k;
            st16(row, _mm512_fmadd_ps(acc[c], _mm512_set1_ps(scale), ld16(row)));
          }
        }
        for (; k < K; k++)
          for (int c = c0; c < c1; c++) {
            float acc = 0.f;
            for (int j = 0; j < r; j++) acc += bt[j * 16 + c] * b2f(a[(size_t)j * K + k]);
            bf16 *row = t + (size_t)c * kp * 2;
            row[k] = f2b(b2f(row[k]) + scale * acc);
          }
      }
      /* into panel order: for each pair j, the 16 rows' j-th pairs (32 bits each) gathered into one store */
      uint32_t *dst = (uint32_t *)(out + (size_t)p * kp * 32);
      __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(kp));
      __mmask16 rows = (__mmask16)(((1u << c1) - 1) & ~((1u << c0) - 1));
      for (int j = 0; j < kp; j++)
        _mm512_mask_storeu_epi32(dst + j * 16, rows, _mm512_i32gather_epi32(idx, (const int *)t + j, 4));
    }
    free(t);
    free(bt);
  }
  return err;
}

/* ---- the matrix product ------------------------------------------------------------------------------------ */

enum { OUT_BF16 = 0, OUT_F32 = 1, OUT_ADD_BF16 = 2 };

/* Rows m0..m0+MR of x (bf16, row stride xs, even, zero past K) times the NP panels at w0; rounded as a bf16 linear layer
 * with its bias; written per mode: bf16, fp32 (of the bf16 value), or added to a bf16 residual (rounded again). */
static inline __attribute__((always_inline)) void tile(int MR, const bf16 *x, int xs, const bf16 *w0, int kp,
                                                       const bf16 *bias, int N, int n0, void *out, int os,
                                                       int mode) {
  __m512 a[8][NP];
  for (int i = 0; i < MR; i++)
    for (int c = 0; c < NP; c++) a[i][c] = _mm512_setzero_ps();
  const uint32_t *xp = (const uint32_t *)x;
  for (int j = 0; j < kp; j++) {
    __m512bh w[NP];
    /* 4 KB ahead into L2: ~4 % off a rollout on our machine (A/B; 2 and 8 KB, or into L1, measured no better) */
    for (int c = 0; c < NP; c++) _mm_prefetch((const char *)(w0 + ((size_t)c * kp + j) * 32) + 4096, _MM_HINT_T1);
    for (int c = 0; c < NP; c++) w[c] = (__m512bh)_mm512_loadu_si512((const void *)(w0 + ((size_t)c * kp + j) * 32));
    for (int i = 0; i < MR; i++) {
      __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[(size_t)i * (xs / 2) + j]);
      for (int c = 0; c < NP; c++) a[i][c] = _mm512_dpbf16_ps(a[i][c], xv, w[c]);
    }
  }
  int nn = N - n0 < COLS ? N - n0 : COLS;
  for (int i = 0; i < MR; i++)
    for (int c = 0; c < NP; c++) {
      int n = n0 + 16 * c, live = nn - 16 * c; /* columns of this panel inside N */
      if (live <= 0) break;
      size_t at = (size_t)i * os + n;
      __m512 v = a[i][c];
      if (live >= 16) { /* a whole panel: 16 columns rounded and written at once */
        if (bias) v = _mm512_add_ps(v, ld16(bias + n));
        v = rb16(v);
        if (mode == OUT_F32)
          _mm512_storeu_ps((float *)out + at, v);
        else if (mode == OUT_ADD_BF16)
          st16((bf16 *)out + at, _mm512_add_ps(ld16((bf16 *)out + at), v));
        else
          st16((bf16 *)out + at, v);
        continue;
      }
      float s[16];
      _mm512_storeu_ps(s, v);
      for (int e = 0; e < live; e++) {
        float f = rb(bias ? s[e] + b2f(bias[n + e]) : s[e]);
        if (mode == OUT_F32)
          ((float *)out)[at + e] = f;
        else if (mode == OUT_ADD_BF16)
          ((bf16 *)out)[at + e] = f2b(b2f(((bf16 *)out)[at + e]) + f);
        else
          ((bf16 *)out)[at + e] = f2b(f);
      }
    }
}

/* out (M, N) = x (M, K) W^T + bias, W packed by wb_pack_rows; x has row stride xs (even, entries past K zero). */
void wb_linear(const bf16 *x, int M, int xs, const bf16 *wp, int N, int K, const bf16 *bias, void *out, int os,
               int mode, int threads) {
  int kp = (K + 1) / 2, tiles = (N + COLS - 1) / COLS;
  size_t osz = mode == OUT_F32 ? sizeof(float) : sizeof(bf16);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int pp = 0; pp < tiles; pp++) {
    const bf16 *w0 = wp + (size_t)pp * NP * kp * 32;
    for (int m0 = 0; m0 < M; m0 += 8) {
      const bf16 *xm = x + (size_t)m0 * xs;
      char *om = (char *)out + (size_t)m0 * os * osz;
      switch (M - m0 < 8 ? M - m0 : 8) {
        case 1: tile(1, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 2: tile(2, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 3: tile(3, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 4: tile(4, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 5: tile(5, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 6: tile(6, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        case 7: tile(7, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
        default: tile(8, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break;
      }
    }
  }
}

/* ---- the decode step --------------------------------------------------------------------------------------- */

/* HF's LlamaRMSNorm in bf16: fp32 mean of squares, x * rsqrt rounded, times the weight rounded. */
static void rms_norm(const bf16 *x, const bf16 *w, int n, float eps, bf16 *y) {
  int v = n / 16 * 16;
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < v; i += 16) acc = _mm512_fmadd_ps(ld16(x + i), ld16(x + i), acc);
  float ss = _mm512_reduce_add_ps(acc);
  for (int i = v; i < n; i++) ss += b2f(x[i]) * b2f(x[i]);
  float r = 1.f / sqrtf(ss / n + eps);
  __m512 rv = _mm512_set1_ps(r);
  for (int i = 0; i < v; i += 16) st16(y + i, _mm512_mul_ps(ld16(w + i), rb16(_mm512_mul_ps(ld16(x + i), rv))));
  for (int i = v; i < n; i++) y[i] = f2b(b2f(w[i]) * rb(b2f(x[i]) * r));
}

/* HF's SiLU-gated MLP input in bf16: silu(g) rounded, times u rounded. */
static void silu_mul(const bf16 *g, const bf16 *u, int n, bf16 *y) {
  int v = n / 16 * 16;
  for (int i = 0; i < v; i += 16) {
    __m512 gv = ld16(g + i);
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    st16(y + i, _mm512_mul_ps(rb16(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e))), ld16(u + i)));
  }
  for (int i = v; i < n; i++) y[i] = f2b(rb(b2f(g[i]) / (1.f + expf(-b2f(g[i])))) * b2f(u[i]));
}

/* HF's apply_rotary_pos_emb on one head in bf16: x*cos + rotate_half(x)*sin, each product rounded. */
static void rope(bf16 *x, const bf16 *cos, const bf16 *sin, int d) {
  float t[512];
  int h = d / 2;
  for (int e = 0; e < d; e++) t[e] = b2f(x[e]);
  for (int e = 0; e < d; e++) {
    float rot = e < h ? -t[e + h] : t[e - h];
    x[e] = f2b(rb(t[e] * b2f(cos[e])) + rb(rot * b2f(sin[e])));
  }
}

/* Per layer, the addresses `cpu_kernels.decode_table` lays out (int64 each). */
enum { T_LN1, T_QKV, T_QKV_B, T_O, T_O_B, T_LN2, T_GU, T_GU_B, T_DOWN, T_DOWN_B, T_CK, T_CV, T_N };

/* Attention of each query head over the written slots its sequence may see, the query heads of one KV head
 * together (each key and value row is read once for all of them): fp32 scores and softmax, output rounded to bf16.
 * sc: B*H*n floats of scratch. */
static void attend(const bf16 *qkv, int qs, const bf16 *ck, const bf16 *cv, const uint8_t *key_ok, int B, int H,
                   int KV, int d, int S, int n, float scale, float *sc, bf16 *att, int as, int threads) {
  int rep = H / KV;
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int g = 0; g < KV; g++) {
      const bf16 *kb = ck + ((size_t)b * KV + g) * S * d, *vb = cv + ((size_t)b * KV + g) * S * d;
      const uint8_t *ok = key_ok + (size_t)b * S;
      float q[4096], o[4096], mx[64], sum[64]; /* rep * d <= 4096, rep <= 64: checked by wb_decode */
      float *p = sc + ((size_t)b * H + (size_t)g * rep) * n;
      for (int r = 0; r < rep; r++) {
        const bf16 *qr = qkv + (size_t)b * qs + (size_t)(g * rep + r) * d;
        for (int e = 0; e < d; e++) q[r * d + e] = b2f(qr[e]), o[r * d + e] = 0.f;
        mx[r] = -INFINITY, sum[r] = 0.f;
      }
      for (int j = 0; j < n; j++) {
        if (!ok[j]) continue;
        const bf16 *k = kb + (size_t)j * d;
        for (int r = 0; r < rep; r++) {
          float dot = 0.f;
          if (d % 16 == 0) {
            __m512 acc = _mm512_setzero_ps();
            for (int e = 0; e < d; e += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * d + e), ld16(k + e), acc);
            dot = _mm512_reduce_add_ps(acc);
          } else {
            for (int e = 0; e < d; e++) dot += q[r * d + e] * b2f(k[e]);
          }
          p[(size_t)r * n + j] = dot * scale;
          mx[r] = dot * scale > mx[r] ? dot * scale : mx[r];
        }
      }
      for (int r = 0; r < rep; r++) {
        float *pr = p + (size_t)r * n;
        int j = 0;
        for (; j + 16 <= n; j += 16) {
          __mmask16 m = _mm_cmpneq_epi8_mask(_mm_loadu_si128((const void *)(ok + j)), _mm_setzero_si128());
          __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(pr + j), _mm512_set1_ps(mx[r])));
          _mm512_storeu_ps(pr + j, _mm512_maskz_mov_ps(m, e));
        }
        for (; j < n; j++) pr[j] = ok[j] ? expf(pr[j] - mx[r]) : 0.f;
        for (j = 0; j < n; j++) sum[r] += pr[j];
      }
      for (int j = 0; j < n; j++) {
        if (!ok[j]) continue;
        const bf16 *v = vb + (size_t)j * d;
        for (int r = 0; r < rep; r++) {
          float w = p[(size_t)r * n + j];
          if (d % 16 == 0) {
            __m512 wv = _mm512_set1_ps(w);
            for (int e = 0; e < d; e += 16)
              _mm512_storeu_ps(o + r * d + e, _mm512_fmadd_ps(wv, ld16(v + e), _mm512_loadu_ps(o + r * d + e)));
          } else {
            for (int e = 0; e < d; e++) o[r * d + e] += w * b2f(v[e]);
          }
        }
      }
      for (int r = 0; r < rep; r++) {
        bf16 *dst = att + (size_t)b * as + (size_t)(g * rep + r) * d;
        for (int e = 0; e < d; e++) dst[e] = f2b(sum[r] > 0.f ? o[r * d + e] / sum[r] : 0.f);
      }
    }
}

/* dims: B, hidden, H, KV heads, head_dim, intermediate, vocab, cache slots S, layers */
int wb_decode(const int64_t *tab, const int *dims, float eps, const int64_t *tok, const bf16 *embed,
              const bf16 *norm, const bf16 *head, const bf16 *head_b, const bf16 *cos, const bf16 *sin,
              const int64_t *pos, int slot, const uint8_t *key_ok, float *logits, int threads) {
  int B = dims[0], hd = dims[1], H = dims[2], KV = dims[3], d = dims[4], I = dims[5], V = dims[6], S = dims[7],
      nl = dims[8];
  if (d > 512 || d % 2 || H % KV || (H / KV) * d > 4096 || H / KV > 64) return 1;
  int hs = (hd + 1) & ~1, qs = (H + 2 * KV) * d, as = H * d, is = (I + 1) & ~1, n = slot + 1;
  bf16 *x = calloc((size_t)B * hs, 2), *h = calloc((size_t)B * hs, 2), *qkv = calloc((size_t)B * qs, 2),
       *att = calloc((size_t)B * as, 2), *gu = calloc((size_t)B * 2 * I, 2), *act = calloc((size_t)B * is, 2);
  float *sc = malloc(sizeof(float) * (size_t)B * H * n);
  if (!x || !h || !qkv || !att || !gu || !act || !sc) {
    free(x), free(h), free(qkv), free(att), free(gu), free(act), free(sc);
    return 2;
  }
  float scale = 1.f / sqrtf((float)d);
  for (int b = 0; b < B; b++) memcpy(x + (size_t)b * hs, embed + (size_t)tok[b] * hd, 2 * (size_t)hd);
  for (int l = 0; l < nl; l++) {
    const int64_t *t = tab + (size_t)l * T_N;
    for (int b = 0; b < B; b++) rms_norm(x + (size_t)b * hs, (const bf16 *)t[T_LN1], hd, eps, h + (size_t)b * hs);
    wb_linear(h, B, hs, (const bf16 *)t[T_QKV], qs, hd, (const bf16 *)t[T_QKV_B], qkv, qs, OUT_BF16, threads);
    bf16 *ck = (bf16 *)t[T_CK], *cv = (bf16 *)t[T_CV];
    for (int b = 0; b < B; b++) {
      bf16 *row = qkv + (size_t)b * qs;
      const bf16 *c = cos + (size_t)pos[b] * d, *s = sin + (size_t)pos[b] * d;
      for (int i = 0; i < H + KV; i++) rope(row + (size_t)i * d, c, s, d);
      for (int g = 0; g < KV; g++) {
        size_t at = (((size_t)b * KV + g) * S + slot) * d;
        memcpy(ck + at, row + (size_t)(H + g) * d, 2 * (size_t)d);
        memcpy(cv + at, row + (size_t)(H + KV + g) * d, 2 * (size_t)d);
      }
    }
    attend(qkv, qs, ck, cv, key_ok, B, H, KV, d, S, n, scale, sc, att, as, threads);
    wb_linear(att, B, as, (const bf16 *)t[T_O], hd, as, (const bf16 *)t[T_O_B], x, hs, OUT_ADD_BF16, threads);
    for (int b = 0; b < B; b++) rms_norm(x + (size_t)b * hs, (const bf16 *)t[T_LN2], hd, eps, h + (size_t)b * hs);
    wb_linear(h, B, hs, (const bf16 *)t[T_GU], 2 * I, hd, (const bf16 *)t[T_GU_B], gu, 2 * I, OUT_BF16, threads);
    for (int b = 0; b < B; b++) silu_mul(gu + (size_t)b * 2 * I, gu + (size_t)b * 2 * I + I, I, act + (size_t)b * is);
    wb_linear(act, B, is, (const bf16 *)t[T_DOWN], hd, I, (const bf16 *)t[T_DOWN_B], x, hs, OUT_ADD_BF16,
              threads);
  }
  for (int b = 0; b < B; b++) rms_norm(x + (size_t)b * hs, norm, hd, eps, h + (size_t)b * hs);
  wb_linear(h, B, hs, head, V, hd, head_b, logits, V, OUT_F32, threads);
  free(x), free(h), free(qkv), free(att), free(gu), free(act), free(sc);
  return 0;
}

/* ---- sampling ---------------------------------------------------------------------------------------------- */

/* `sampler._pick` without top-p, per row of logits (B, V): the log-softmax at `temperature` (fp32), then the token
 * whose cumulative probability (summed in double, in vocabulary order) first exceeds u[b] times the total: the same
 * inverse-CDF draw, from the same uniform numbers. Writes the token and its log-prob; 2 when out of memory. */
int wb_sample(const float *logits, int B, int V, float temperature, const double *u, int64_t *tok, float *logp,
              int threads) {
  float *buf = malloc(sizeof(float) * (size_t)B * V);
  if (!buf) return 2;
  int v16 = V / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int b = 0; b < B; b++) {
    const float *x = logits + (size_t)b * V;
    float *z = buf + (size_t)b * V, mx = -INFINITY;
    __m512 tv = _mm512_set1_ps(temperature), acc = _mm512_setzero_ps();
    for (int i = 0; i < v16; i += 16) _mm512_storeu_ps(z + i, _mm512_div_ps(_mm512_loadu_ps(x + i), tv));
    for (int i = v16; i < V; i++) z[i] = x[i] / temperature;
    for (int i = 0; i < V; i++) mx = z[i] > mx ? z[i] : mx;
    __m512 mv = _mm512_set1_ps(mx);
    for (int i = 0; i < v16; i += 16) acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + i), mv)));
    float sum = _mm512_reduce_add_ps(acc);
    for (int i = v16; i < V; i++) sum += expf(z[i] - mx);
    float lse = mx + logf(sum);
    __m512 lv = _mm512_set1_ps(lse);
    double total = 0.0;
    for (int i = 0; i < v16; i += 16) {
      __m512 lp = _mm512_sub_ps(_mm512_loadu_ps(z + i), lv);
      _mm512_storeu_ps(z + i, exp16(lp));
    }
    for (int i = v16; i < V; i++) z[i] = expf(z[i] - lse);
    for (int i = 0; i < V; i++) total += z[i];
    double target = u[b] * total, c = 0.0;
    int pick = V - 1;
    for (int i = 0; i < V; i++) {
      c += z[i];
      if (c > target) {
        pick = i;
        break;
      }
    }
    tok[b] = pick;
    logp[b] = x[pick] / temperature - lse;
  }
  free(buf);
  return 0;
}

/* ---- the training forward's gated MLP input ------------------------------------------------------------------ */

/* y = silu(g) * u in bf16 as HF rounds it (silu rounded, then the product), n elements. */
void wb_silu_mul(const bf16 *g, const bf16 *u, bf16 *y, long n, int threads) {
  long v = n / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < v; i += 16) {
    __m512 gv = ld16(g + i), e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    st16(y + i, _mm512_mul_ps(rb16(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e))), ld16(u + i)));
  }
  for (long i = v; i < n; i++) y[i] = f2b(rb(b2f(g[i]) / (1.f + expf(-b2f(g[i])))) * b2f(u[i]));
}

/* The gradients of wb_silu_mul as autograd computes them in bf16: du = dy * silu(g); dg = (dy * u) * silu'(g),
 * silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g); each product rounded as its tensor op rounds. */
void wb_silu_mul_backward(const bf16 *g, const bf16 *u, const bf16 *dy, bf16 *dg, bf16 *du, long n, int threads) {
  long v = n / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < v; i += 16) {
    __m512 gv = ld16(g + i), d = ld16(dy + i), one = _mm512_set1_ps(1.f);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    __m512 silu = rb16(_mm512_mul_ps(gv, s));
    st16(du + i, _mm512_mul_ps(d, silu));
    __m512 ds = rb16(_mm512_mul_ps(d, ld16(u + i)));
    st16(dg + i, _mm512_mul_ps(ds, _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one))));
  }
  for (long i = v; i < n; i++) {
    float gf = b2f(g[i]), d = b2f(dy[i]), s = 1.f / (1.f + expf(-gf));
    du[i] = f2b(d * rb(gf * s));
    dg[i] = f2b(rb(d * b2f(u[i])) * s * (1.f + gf * (1.f - s)));
  }
}

/* The entropy of each row of log-probs (R, V), fp32: -sum(exp(lp) * lp), one pass (a logged metric only). */
void wb_entropy(const float *lp, long R, int V, float *out, int threads) {
  int v16 = V / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) {
    const float *x = lp + (size_t)r * V;
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < v16; i += 16) {
      __m512 l = _mm512_loadu_ps(x + i);
      acc = _mm512_fmadd_ps(exp16(l), l, acc);
    }
    float s = _mm512_reduce_add_ps(acc);
    for (int i = v16; i < V; i++) s += expf(x[i]) * x[i];
    out[r] = -s;
  }
}

/* ---- the training forward's norms and rotary embeddings (forward and backward) ------------------------------- */

/* y = HF's RMSNorm of each row of x (R, D) with weight w, bf16 as `rms_norm` above; rstd (R) kept for the backward. */
void wb_rms_norm_fwd(const bf16 *x, const bf16 *w, bf16 *y, float *rstd, long R, int D, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) {
    const bf16 *xr = x + (size_t)r * D;
    float ss = 0.f;
    int v = D / 16 * 16;
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < v; i += 16) acc = _mm512_fmadd_ps(ld16(xr + i), ld16(xr + i), acc);
    ss = _mm512_reduce_add_ps(acc);
    for (int i = v; i < D; i++) ss += b2f(xr[i]) * b2f(xr[i]);
    rstd[r] = 1.f / sqrtf(ss / D + eps);
    rms_norm(xr, w, D, eps, y + (size_t)r * D);
  }
}

/* dx of wb_rms_norm_fwd (the weight frozen): with n = x * rstd and g = dy * w, dx = rstd * (g - n * mean(g * n)). */
void wb_rms_norm_bwd(const bf16 *x, const bf16 *w, const float *rstd, const bf16 *dy, bf16 *dx, long R, int D,
                     int threads) {
  int v = D / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) {
    const bf16 *xr = x + (size_t)r * D, *dr = dy + (size_t)r * D;
    bf16 *out = dx + (size_t)r * D;
    float s = rstd[r];
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < v; i += 16) acc = _mm512_fmadd_ps(_mm512_mul_ps(ld16(dr + i), ld16(w + i)), ld16(xr + i), acc);
    float dot = _mm512_reduce_add_ps(acc);
    for (int i = v; i < D; i++) dot += b2f(dr[i]) * b2f(w[i]) * b2f(xr[i]);
    float m = dot * s / D; /* mean(g * n) */
    __m512 sv = _mm512_set1_ps(s), mv = _mm512_set1_ps(m);
    for (int i = 0; i < v; i += 16) {
      __m512 n = _mm512_mul_ps(ld16(xr + i), sv);
      st16(out + i, _mm512_mul_ps(sv, _mm512_fnmadd_ps(n, mv, _mm512_mul_ps(ld16(dr + i), ld16(w + i)))));
    }
    for (int i = v; i < D; i++) out[i] = f2b(s * (b2f(dr[i]) * b2f(w[i]) - b2f(xr[i]) * s * m));
  }
}

/* Rotary embedding of x (N, heads, d) with cos/sin rows (N, d), as HF's apply_rotary_pos_emb in bf16; and its
 * gradient (backward != 0): dx = dy cos + rotate_half^T(dy sin). Each product rounded as its tensor op rounds. */
void wb_rope(const bf16 *x, const bf16 *cos, const bf16 *sin, bf16 *y, long N, int heads, int d, int backward,
             int threads) {
  int h = d / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long t = 0; t < N; t++)
    for (int k = 0; k < heads; k++) {
      const bf16 *xr = x + ((size_t)t * heads + k) * d, *c = cos + (size_t)t * d, *s = sin + (size_t)t * d;
      bf16 *yr = y + ((size_t)t * heads + k) * d;
      if (h % 16 == 0) {
        for (int e = 0; e < d; e += 16) {
          int o = e < h ? e + h : e - h; /* the partner half */
          __m512 a = rb16(_mm512_mul_ps(ld16(xr + e), ld16(c + e))), rot;
          if (backward) /* the transpose of rotate_half: +x[e+h] s[e+h] below h, -x[e-h] s[e-h] from h */
            rot = rb16(_mm512_mul_ps(ld16(xr + o), ld16(s + o)));
          else
            rot = rb16(_mm512_mul_ps(ld16(xr + o), ld16(s + e)));
          int neg = backward ? e >= h : e < h;
          st16(yr + e, neg ? _mm512_sub_ps(a, rot) : _mm512_add_ps(a, rot));
        }
        continue;
      }
      for (int e = 0; e < d; e++) {
        float a = rb(b2f(xr[e]) * b2f(c[e])), rot;
        if (backward)
          rot = e < h ? rb(b2f(xr[e + h]) * b2f(s[e + h])) : -rb(b2f(xr[e - h]) * b2f(s[e - h]));
        else
          rot = rb((e < h ? -b2f(xr[e + h]) : b2f(xr[e - h])) * b2f(s[e]));
        yr[e] = f2b(a + rot);
      }
    }
}
