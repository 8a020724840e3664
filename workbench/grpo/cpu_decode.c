/* The fused sampler's CPU decode step for bf16 Llama-style models on x86 CPUs with AVX512-BF16, and the small-batch
 * matrix product it is built on. Compiled and loaded at first use by `cpu_kernels.py`, which says why it exists.
 *
 * Rounding follows the HF bf16 forward op by op (each result rounded to bf16 where HF rounds it); sums, norms and
 * the softmax run in fp32, as in HF's kernels.
 *
 * Weights are packed once per refresh (`wb_pack_rows`) into panels of 16 output columns, with each pair of input
 * columns interleaved ("VNNI" order): one 64-byte load then holds 16 columns x 2 inputs, and `vdpbf16ps` multiplies
 * it by a broadcast pair of an input row, adding into 16 fp32 sums. A row block of up to 8 inputs runs against NP
 * panels at a time, so each weight byte is read from memory once per call and no horizontal sums are needed. The NP
 * panels of a tile are interleaved pair by pair, so a tile is read as one forward stream (three streams 18 KB apart
 * before: a rollout 379 -> 367 ms, A/B).
 */
#include "cpu_simd.h"

/* ---- packing --------------------------------------------------------------------------------------------- */

/* Panels of a (N, K) row-major matrix: ceil(N/COLS) tiles of NP panels of 16 columns; a tile holds, for each of
 * the ceil(K/2) input pairs, its NP panels' 16 columns x 2 (64 bytes each). */
#define PF 12288 /* bytes of weights prefetched ahead of the product (see `tile`) */
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
          for (int c = 0; c < 16; c++)
            bt[j * 16 + c] = c >= c0 && c < c1 ? b2f(b[(size_t)(p * 16 + c - n0) * r + j]) : 0.f;
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
      uint32_t *dst = (uint32_t *)(out + ((size_t)(p / NP) * NP * kp + p % NP) * 32);
      __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(kp));
      __mmask16 rows = (__mmask16)(((1u << c1) - 1) & ~((1u << c0) - 1));
      for (int j = 0; j < kp; j++)
        _mm512_mask_storeu_epi32(dst + j * NP * 16, rows, _mm512_i32gather_epi32(idx, (const int *)t + j, 4));
    }
    free(t);
    free(bt);
  }
  return err;
}

/* ---- the matrix product ------------------------------------------------------------------------------------ */

enum { OUT_BF16 = 0, OUT_F32 = 1, OUT_ADD_BF16 = 2, OUT_ACC_BF16 = 3 };

/* Rows m0..m0+MR of x (bf16, row stride xs, even, zero past K) times the NP panels at w0; rounded as a bf16 linear
 * layer with its bias; written per mode: bf16, fp32 (of the bf16 value), or added to a bf16 residual (rounded
 * again); or, OUT_ACC_BF16, added unrounded to a bf16 block and rounded once, as torch.addmm(out, x, w^T) in bf16. */
static inline __attribute__((always_inline)) void tile(int MR, int NL, const bf16 *x, int xs, const bf16 *w0,
                                                       int kp, const bf16 *bias, int N, int n0, void *out, int os,
                                                       int mode) {
  __m512 a[8][NP]; /* NL <= NP: the panels with columns inside N (the last tile's others are padding) */
  for (int i = 0; i < MR; i++)
    for (int c = 0; c < NL; c++) a[i][c] = _mm512_setzero_ps();
  const uint32_t *xp = (const uint32_t *)x;
  for (int j = 0; j < kp; j++) {
    __m512bh w[NP];
    /* PF ahead into L2; with a tile read as one stream, 12 KB ahead took a rollout ~5 % less than 4 KB (A/B; 8 and
     * 16 KB alike, 24 KB worse). With three streams 4 KB was best, and 2 or 8 KB, or into L1, no better. */
    for (int c = 0; c < NL; c++) _mm_prefetch((const char *)(w0 + ((size_t)j * NP + c) * 32) + PF, _MM_HINT_T1);
    for (int c = 0; c < NL; c++) w[c] = (__m512bh)_mm512_loadu_si512((const void *)(w0 + ((size_t)j * NP + c) * 32));
    for (int i = 0; i < MR; i++) {
      __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[(size_t)i * (xs / 2) + j]);
      for (int c = 0; c < NL; c++) a[i][c] = _mm512_dpbf16_ps(a[i][c], xv, w[c]);
    }
  }
  int nn = N - n0 < COLS ? N - n0 : COLS;
  for (int i = 0; i < MR; i++)
    for (int c = 0; c < NL; c++) {
      int n = n0 + 16 * c, live = nn - 16 * c; /* columns of this panel inside N */
      if (live <= 0) break;
      size_t at = (size_t)i * os + n;
      __m512 v = a[i][c];
      if (live >= 16) { /* a whole panel: 16 columns rounded and written at once */
        if (bias) v = _mm512_add_ps(v, ld16(bias + n));
        if (mode != OUT_ACC_BF16) v = rb16(v);
        if (mode == OUT_F32)
          _mm512_storeu_ps((float *)out + at, v);
        else if (mode == OUT_ADD_BF16 || mode == OUT_ACC_BF16)
          st16((bf16 *)out + at, _mm512_add_ps(ld16((bf16 *)out + at), v));
        else
          st16((bf16 *)out + at, v);
        continue;
      }
      float s[16];
      _mm512_storeu_ps(s, v);
      for (int e = 0; e < live; e++) {
        float f = bias ? s[e] + b2f(bias[n + e]) : s[e];
        if (mode != OUT_ACC_BF16) f = rb(f);
        if (mode == OUT_F32)
          ((float *)out)[at + e] = f;
        else if (mode == OUT_ADD_BF16 || mode == OUT_ACC_BF16)
          ((bf16 *)out)[at + e] = f2b(b2f(((bf16 *)out)[at + e]) + f);
        else
          ((bf16 *)out)[at + e] = f2b(f);
      }
    }
}

/* Rows m0.. (up to 8) of x times the tile pp of the packed weight (see wb_linear). */
static void linear_block(const bf16 *x, int M, int xs, const bf16 *wp, int N, int kp, const bf16 *bias, void *out,
                         int os, int mode, int pp, int m0) {
  const bf16 *w0 = wp + (size_t)pp * NP * kp * 32, *xm = x + (size_t)m0 * xs;
  char *om = (char *)out + (size_t)m0 * os * (mode == OUT_F32 ? sizeof(float) : sizeof(bf16));
  int mr = M - m0 < 8 ? M - m0 : 8, nl = (N - pp * COLS + 15) / 16;
#define ROWS(NL)                                                                 \
  switch (mr) {                                                                  \
    case 1: tile(1, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 2: tile(2, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 3: tile(3, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 4: tile(4, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 5: tile(5, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 6: tile(6, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    case 7: tile(7, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
    default: tile(8, NL, xm, xs, w0, kp, bias, N, pp * COLS, om, os, mode); break; \
  }
  if (nl == 1) { /* a last tile of one or two live panels skips the padding's products */
    ROWS(1)
  } else if (nl == 2) {
    ROWS(2)
  } else {
    ROWS(NP)
  }
#undef ROWS
}

/* out (M, N) = x (M, K) W^T + bias, W packed by wb_pack_rows; x has row stride xs (even, entries past K zero).
 * Tiles x row blocks are split across the threads. A large W is streamed once, tile by tile, each against every row
 * block; a small one (a LoRA factor: under 256 KB, it stays in cache) goes row block by row block, so the output is
 * written row by row instead of in narrow strips (xa (sB)^T at 328 x 1536, r = 16: 108 -> 75 us a call). */
void wb_linear(const bf16 *x, int M, int xs, const bf16 *wp, int N, int K, const bf16 *bias, void *out, int os,
               int mode, int threads) {
  int kp = (K + 1) / 2, tiles = (N + COLS - 1) / COLS, mb = (M + 7) / 8;
  if ((size_t)tiles * COLS * kp * 4 > (256u << 10)) {
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
    for (int pp = 0; pp < tiles; pp++)
      for (int b = 0; b < mb; b++) linear_block(x, M, xs, wp, N, kp, bias, out, os, mode, pp, b * 8);
  } else {
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
    for (int b = 0; b < mb; b++)
      for (int pp = 0; pp < tiles; pp++) linear_block(x, M, xs, wp, N, kp, bias, out, os, mode, pp, b * 8);
  }
}

/* ---- the decode step --------------------------------------------------------------------------------------- */

/* Per layer, the addresses `cpu_kernels.decode_table` lays out (int64 each). */
enum { T_LN1, T_QKV, T_QKV_B, T_O, T_O_B, T_LN2, T_GU, T_GU_B, T_DOWN, T_DOWN_B, T_CK, T_CV, T_N };

/* Attention of each query head over the written slots its sequence may see, the query heads of one KV head
 * together (each key and value row is read once for all of them): fp32 scores (bf16 pairs by `vdpbf16ps`, products
 * exact) and softmax, output rounded to bf16. The output sums run 4 query heads x 64 columns at a time in
 * registers (1.07 -> ~0.5 ms a token on the bundled model, against one head at a time through memory).
 * sc: B*H*n floats of scratch. */
static void attend(const bf16 *qkv, int qs, const bf16 *ck, const bf16 *cv, const uint8_t *key_ok, int B, int H,
                   int KV, int d, int S, int n, float scale, float *sc, bf16 *att, int as, int threads) {
  int rep = H / KV;
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int g = 0; g < KV; g++) {
      const bf16 *kb = ck + ((size_t)b * KV + g) * S * d, *vb = cv + ((size_t)b * KV + g) * S * d;
      const uint8_t *ok = key_ok + (size_t)b * S;
      float mx[64], sum[64]; /* rep <= 64: checked by wb_decode */
      float *p = sc + ((size_t)b * H + (size_t)g * rep) * n;
      const bf16 *q0 = qkv + (size_t)b * qs + (size_t)g * rep * d;
      for (int r = 0; r < rep; r++) mx[r] = -INFINITY, sum[r] = 0.f;
      for (int j = 0; j < n; j++) {
        if (!ok[j]) continue;
        const bf16 *k = kb + (size_t)j * d;
        for (int r = 0; r < rep; r++) {
          __m512 acc = _mm512_setzero_ps();
          for (int e = 0; e < d; e += 32) {
            __mmask32 m = d - e >= 32 ? 0xffffffffu : (1u << (d - e)) - 1;
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(m, q0 + (size_t)r * d + e),
                                   (__m512bh)_mm512_maskz_loadu_epi16(m, k + e));
          }
          float s = _mm512_reduce_add_ps(acc) * scale;
          p[(size_t)r * n + j] = s;
          mx[r] = s > mx[r] ? s : mx[r];
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
      for (int r0 = 0; r0 < rep; r0 += 4)
        for (int e0 = 0; e0 < d; e0 += 64) {
          __m512 o[4][4];
          const float *pr[4];
          for (int i = 0; i < 4; i++) {
            pr[i] = r0 + i < rep ? p + (size_t)(r0 + i) * n : NULL;
            for (int c = 0; c < 4; c++) o[i][c] = _mm512_setzero_ps();
          }
          for (int j = 0; j < n; j++) {
            if (!ok[j]) continue;
            const bf16 *v = vb + (size_t)j * d + e0;
            __m512 vv[4];
            for (int c = 0; c < 4; c++) vv[c] = ld16m(v + 16 * c, d - e0 - 16 * c);
            for (int i = 0; i < 4; i++) {
              __m512 w = _mm512_set1_ps(pr[i] ? pr[i][j] : 0.f);
              for (int c = 0; c < 4; c++) o[i][c] = _mm512_fmadd_ps(w, vv[c], o[i][c]);
            }
          }
          for (int i = 0; i < 4 && r0 + i < rep; i++) {
            bf16 *dst = att + (size_t)b * as + (size_t)(g * rep + r0 + i) * d + e0;
            __m512 inv = _mm512_set1_ps(sum[r0 + i] > 0.f ? 1.f / sum[r0 + i] : 0.f);
            for (int c = 0; c < 4 && e0 + 16 * c < d; c++)
              _mm256_mask_storeu_epi16(dst + 16 * c, tail(d - e0 - 16 * c),
                                       (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(o[i][c], inv)));
          }
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
  for (int l = 0; l < nl; l++) { /* row-wise parts split across the threads too: a rollout 346 -> 337 ms (A/B) */
    const int64_t *t = tab + (size_t)l * T_N;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < B; b++) rms_norm(x + (size_t)b * hs, (const bf16 *)t[T_LN1], hd, eps, h + (size_t)b * hs);
    wb_linear(h, B, hs, (const bf16 *)t[T_QKV], qs, hd, (const bf16 *)t[T_QKV_B], qkv, qs, OUT_BF16, threads);
    bf16 *ck = (bf16 *)t[T_CK], *cv = (bf16 *)t[T_CV];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < B; b++) {
      bf16 *row = qkv + (size_t)b * qs;
      const bf16 *c = cos + (size_t)pos[b] * d, *s = sin + (size_t)pos[b] * d;
      for (int i = 0; i < H + KV; i++) rope_head(row + (size_t)i * d, c, s, row + (size_t)i * d, d, 0);
      for (int g = 0; g < KV; g++) {
        size_t at = (((size_t)b * KV + g) * S + slot) * d;
        memcpy(ck + at, row + (size_t)(H + g) * d, 2 * (size_t)d);
        memcpy(cv + at, row + (size_t)(H + KV + g) * d, 2 * (size_t)d);
      }
    }
    attend(qkv, qs, ck, cv, key_ok, B, H, KV, d, S, n, scale, sc, att, as, threads);
    wb_linear(att, B, as, (const bf16 *)t[T_O], hd, as, (const bf16 *)t[T_O_B], x, hs, OUT_ADD_BF16, threads);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < B; b++) rms_norm(x + (size_t)b * hs, (const bf16 *)t[T_LN2], hd, eps, h + (size_t)b * hs);
    wb_linear(h, B, hs, (const bf16 *)t[T_GU], 2 * I, hd, (const bf16 *)t[T_GU_B], gu, 2 * I, OUT_BF16, threads);
#pragma omp parallel for num_threads(threads) schedule(static)
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
  /* per row: the V probabilities, then (in doubles) the sums of its 16-entry blocks */
  float *buf = malloc(sizeof(float) * (size_t)B * V + sizeof(double) * (size_t)B * (V / 16 + 1));
  if (!buf) return 2;
  int v16 = V / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int b = 0; b < B; b++) {
    const float *x = logits + (size_t)b * V;
    float *z = buf + (size_t)b * V, mx = -INFINITY;
    __m512 tv = _mm512_set1_ps(temperature), acc = _mm512_setzero_ps(), top = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < v16; i += 16) {
      __m512 zv = _mm512_div_ps(_mm512_loadu_ps(x + i), tv);
      _mm512_storeu_ps(z + i, zv);
      top = _mm512_max_ps(zv, top); /* a NaN entry is skipped, as the comparison skips it */
    }
    mx = _mm512_reduce_max_ps(top);
    for (int i = v16; i < V; i++) z[i] = x[i] / temperature, mx = z[i] > mx ? z[i] : mx;
    __m512 mv = _mm512_set1_ps(mx);
    for (int i = 0; i < v16; i += 16) acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + i), mv)));
    float sum = _mm512_reduce_add_ps(acc);
    for (int i = v16; i < V; i++) sum += expf(z[i] - mx);
    float lse = mx + logf(sum);
    __m512 lv = _mm512_set1_ps(lse);
    for (int i = 0; i < v16; i += 16) {
      __m512 lp = _mm512_sub_ps(_mm512_loadu_ps(z + i), lv);
      _mm512_storeu_ps(z + i, exp16(lp));
    }
    for (int i = v16; i < V; i++) z[i] = expf(z[i] - lse);
    /* The cumulative sum in double, 16 entries at a time: each block's sum (vector adds), then the running total
     * over blocks; only the block where it crosses the target is summed entry by entry. (One double add per entry
     * in a chain costs ~4 cycles: 0.2 ms a row at 49k entries, the draw's whole cost otherwise.) */
    double *bs = (double *)(buf + (size_t)B * V) + (size_t)b * (V / 16 + 1), total = 0.0;
    for (int i = 0, k = 0; i < v16; i += 16, k++) {
      __m512 zv = _mm512_loadu_ps(z + i);
      __m512d s = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(zv)),
                                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(zv), 1))));
      total += bs[k] = _mm512_reduce_add_pd(s);
    }
    for (int i = v16; i < V; i++) total += z[i];
    double target = u[b] * total, c = 0.0;
    int pick = V - 1, i = 0;
    for (int k = 0; i < v16; i += 16, k++) {
      if (c + bs[k] <= target) {
        c += bs[k];
        continue;
      }
      int end = i + 16;
      for (; i < end && c + z[i] <= target; i++) c += z[i];
      if (i < end) break; /* crossed at i; else rounding left it short: go on from the next block */
      i -= 16;
    }
    for (; i < V; i++) {
      c += z[i];
      if (c > target) break;
    }
    pick = i < V ? i : V - 1;
    tok[b] = pick;
    logp[b] = x[pick] / temperature - lse;
  }
  free(buf);
  return 0;
}
