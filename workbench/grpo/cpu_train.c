/* The training forward's elementwise parts as native kernels, forward and backward, for contiguous bf16 CPU tensors:
 * the SiLU-gated MLP input, RMSNorm with a frozen weight, rotary embeddings, and the log-probs of tokens (with the
 * softmax's entropy) from bf16 logits; and the packing the LoRA terms run on, in training and in the sampler's
 * refresh (`wb_merge_packed`).
 * Each keeps the rounding of the bf16 torch ops it replaces (`cpu_autograd.py` wraps them for autograd; its tests
 * compare each with torch, forward and backward). Built with `cpu_decode.c` by `cpu_kernels.py`.
 */
#include "cpu_simd.h"

/* y = silu(g) * u in bf16 as HF rounds it (`silu_mul`), n elements, in chunks across the threads. */
void wb_silu_mul(const bf16 *g, const bf16 *u, bf16 *y, long n, int threads) {
  const long chunk = 4096;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < n; i += chunk) silu_mul(g + i, u + i, n - i < chunk ? n - i : chunk, y + i);
}

/* The gradients of silu(g) * u over n elements as autograd computes them in bf16: du = dy * silu(g);
 * dg = (dy * u) * silu'(g), silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g); each product rounded as its tensor op
 * rounds. */
static void silu_mul_bwd(const bf16 *g, const bf16 *u, const bf16 *dy, bf16 *dg, bf16 *du, long n) {
  long v = n / 16 * 16;
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

/* The gradients of wb_silu_mul, in chunks across the threads. */
void wb_silu_mul_backward(const bf16 *g, const bf16 *u, const bf16 *dy, bf16 *dg, bf16 *du, long n, int threads) {
  const long chunk = 4096;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < n; i += chunk) silu_mul_bwd(g + i, u + i, dy + i, dg + i, du + i, n - i < chunk ? n - i : chunk);
}

/* wb_silu_mul over the two halves of each row of gu (R, 2I) (gate | up, one fused product): y (R, I). */
void wb_silu_mul_rows(const bf16 *gu, long R, int I, bf16 *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) silu_mul(gu + r * 2 * I, gu + r * 2 * I + I, I, y + r * I);
}

/* Its gradient dgu (R, 2I): the gate's and the up's gradients side by side, as the fused product's output. */
void wb_silu_mul_rows_bwd(const bf16 *gu, long R, int I, const bf16 *dy, bf16 *dgu, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++)
    silu_mul_bwd(gu + r * 2 * I, gu + r * 2 * I + I, dy + r * I, dgu + r * 2 * I, dgu + r * 2 * I + I, I);
}

/* Per row of bf16 logits z (R, V) at temperature T, as torch's log_softmax of z.float() / T computes them in fp32:
 * the log-sum-exp (kept for the backward), the log-prob of the row's token and the softmax's entropy. */
void wb_token_logp(const bf16 *z, long R, int V, const int64_t *ids, float T, float *logp, float *lse, float *ent,
                   int threads) {
  __m512 tv = _mm512_set1_ps(T);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) {
    const bf16 *x = z + (size_t)r * V;
    __m512 mx = _mm512_set1_ps(-INFINITY), s = _mm512_setzero_ps(), t = _mm512_setzero_ps();
    for (int i = 0; i < V; i += 16) {
      __mmask16 m = tail(V - i);
      __m512 v = T == 1.f ? ld16m(x + i, V - i) : _mm512_div_ps(ld16m(x + i, V - i), tv);
      mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    float top = _mm512_reduce_max_ps(mx);
    for (int i = 0; i < V; i += 16) {
      __mmask16 m = tail(V - i);
      __m512 v = T == 1.f ? ld16m(x + i, V - i) : _mm512_div_ps(ld16m(x + i, V - i), tv);
      __m512 d = _mm512_sub_ps(v, _mm512_set1_ps(top)), e = _mm512_maskz_mov_ps(m, exp16(d));
      s = _mm512_add_ps(s, e), t = _mm512_fmadd_ps(e, _mm512_maskz_mov_ps(m, d), t);
    }
    float S = _mm512_reduce_add_ps(s), l = top + logf(S);
    lse[r] = l;
    logp[r] = (T == 1.f ? b2f(x[ids[r]]) : b2f(x[ids[r]]) / T) - l;
    ent[r] = logf(S) - _mm512_reduce_add_ps(t) / S; /* -sum p log p, log p = (v - top) - log S */
  }
}

/* dz of wb_token_logp's log-probs for their gradient g (R): (onehot(id) - softmax) * g / T, rounded to bf16 as the
 * gradient of z.float() is. */
void wb_token_logp_bwd(const bf16 *z, long R, int V, const int64_t *ids, float T, const float *lse, const float *g,
                       bf16 *dz, int threads) {
  __m512 tv = _mm512_set1_ps(T);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) {
    const bf16 *x = z + (size_t)r * V;
    bf16 *out = dz + (size_t)r * V;
    __m512 l = _mm512_set1_ps(lse[r]), gv = _mm512_set1_ps(-g[r]);
    for (int i = 0; i < V; i += 16) {
      __mmask16 m = tail(V - i);
      __m512 v = T == 1.f ? ld16m(x + i, V - i) : _mm512_div_ps(ld16m(x + i, V - i), tv);
      __m512 d = _mm512_mul_ps(exp16(_mm512_sub_ps(v, l)), gv);
      int at = (int)(ids[r] - i);
      if (at >= 0 && at < 16) /* the token's own entry: + g, added where torch's log_softmax backward adds it */
        d = _mm512_mask_add_ps(d, (__mmask16)(1u << at), d, _mm512_set1_ps(g[r]));
      if (T != 1.f) d = _mm512_div_ps(d, tv);
      _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(d));
    }
  }
}

/* ---- the training forward's norms and rotary embeddings (forward and backward) ------------------------------- */

/* y = HF's RMSNorm of each row of x (R, D) with weight w (`rms_norm`); rstd (R) kept for the backward. */
void wb_rms_norm_fwd(const bf16 *x, const bf16 *w, bf16 *y, float *rstd, long R, int D, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < R; r++) rstd[r] = rms_norm(x + (size_t)r * D, w, D, eps, y + (size_t)r * D);
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

/* Rotary embedding of x (N, heads, d) with cos/sin rows (N, d) (`rope_head`), or its gradient (backward != 0). */
void wb_rope(const bf16 *x, const bf16 *cos, const bf16 *sin, bf16 *y, long N, int heads, int d, int backward,
             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long t = 0; t < N; t++)
    for (int k = 0; k < heads; k++) {
      size_t at = ((size_t)t * heads + k) * d;
      rope_head(x + at, cos + (size_t)t * d, sin + (size_t)t * d, y + at, d, backward);
    }
}

/* ---- packing for the LoRA terms: their weight gradients (`cpu_autograd.lora_group`), the sampler's refresh -- */

/* dA = dxa^T x and dB^T = xa^T dy sum over the tokens: `wb_linear` (cpu_decode.c) runs them over x and dy packed
 * transposed, here, straight from their token-major rows (a transpose, then `wb_pack_rows`, would copy each twice).
 * Panels (see wb_pack_rows) of the transpose of x's columns c0..c0+C (x: R rows, row stride ld): the matrix
 * x[:, c0:c0+C]^T (C, R) packed for `wb_linear`, straight from x, padding included (out: wb_packed_elems(C, R),
 * written whole). Each pair of x's rows, interleaved 16 columns at a time, is one 64-byte line of a panel; an odd
 * last row pairs with zeros. Also packs a small matrix W from its transpose (the LoRA factors): pack(W) is
 * wb_pack_t(W^T). A thread writes its tiles' lines in order, one stream. */
void wb_pack_t(const bf16 *x, int R, int ld, int c0, int C, bf16 *out, int threads) {
  int kp = (R + 1) / 2, tiles = (C + COLS - 1) / COLS, chunks = (kp + 63) / 64;
  __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5,
                                    36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
  for (int t = 0; t < tiles; t++)
    for (int q = 0; q < chunks; q++) /* 64 pairs at a time: a single tile still splits across the threads */
      for (int j = q * 64; j < kp && j < q * 64 + 64; j++) {
        const bf16 *r0 = x + (size_t)(2 * j) * ld + c0, *r1 = r0 + ld;
        int two = 2 * j + 1 < R;
        bf16 *dst = out + ((size_t)t * NP * kp + (size_t)j * NP) * 32;
        for (int c = 0; c < NP; c++) {
          int p = t * NP + c, left = C - 16 * p;
          __mmask32 m = left >= 16 ? 0xffffu : left <= 0 ? 0 : (1u << left) - 1;
          __m512i a = _mm512_maskz_loadu_epi16(m, r0 + 16 * p);
          __m512i b = two ? _mm512_maskz_loadu_epi16(m, r1 + 16 * p) : _mm512_setzero_si512();
          _mm512_storeu_si512((void *)(dst + 32 * c), _mm512_permutex2var_epi16(a, lo_idx, b));
        }
      }
}

/* Rows n0..n0+N of a packed (Ntot, K) matrix `out`: the same rows of `base` (its packing without the delta) plus
 * scale * b (N, r) @ a (r, K), line by line in the packed order: the LoRA delta merged as wb_pack_rows merges it
 * (the same fp32 sums in the same order, one rounding: bit for bit the same panels), without re-laying the weight
 * out. A panel's rows of b stay in a small fp32 block; each 64-byte line (16 rows x one pair of columns) is read
 * from base, its delta added in fp32, rounded and written, so a refresh is one read and one write of the weights.
 * at is a transposed (K, r), its bf16 values in fp32, zero rows after K up to a multiple of 8. Rows of a panel
 * outside n0..n0+N are left as they are. 2 when out of memory. */
int wb_merge_packed(const bf16 *base, int K, const float *at, const bf16 *b, int r, float scale, int n0, int N,
                    bf16 *out, int threads) {
  int kp = (K + 1) / 2, p0 = n0 / 16, p1 = (n0 + N + 15) / 16, err = 0;
#pragma omp parallel num_threads(threads)
  {
    float *bt = malloc(sizeof(float) * 16 * (size_t)(r > 0 ? r : 1)); /* the panel's rows of b, by column of b */
    if (!bt) err = 2;
#pragma omp for schedule(static)
    for (int p = p0; p < p1; p++) {
      if (!bt) continue;
      int c0 = p == p0 ? n0 % 16 : 0, c1 = (p + 1) * 16 > n0 + N ? n0 + N - p * 16 : 16;
      for (int t = 0; t < r; t++)
        for (int c = 0; c < 16; c++) bt[t * 16 + c] = c >= c0 && c < c1 ? b2f(b[(size_t)(p * 16 + c - n0) * r + t]) : 0.f;
      __mmask16 rows = (__mmask16)(((1u << c1) - 1) & ~((1u << c0) - 1));
      size_t at0 = ((size_t)(p / NP) * NP * kp + p % NP) * 32;
      __m512 sv = _mm512_set1_ps(scale);
      for (int j0 = 0; j0 < kp; j0 += 4) { /* 4 lines at a time: 8 independent FMA chains hide their latency */
        int nj = kp - j0 < 4 ? kp - j0 : 4;
        __m512 acc[4][2]; /* per line, columns 2j and 2j+1 of the 16 rows */
        for (int u = 0; u < 4; u++) acc[u][0] = acc[u][1] = _mm512_setzero_ps();
        const float *a0 = at + (size_t)(2 * j0) * r; /* rows 2j0 .. 2j0+7 of at, r apart (zero past K) */
        for (int t = 0; t < r; t++) {
          __m512 bv = _mm512_loadu_ps(bt + t * 16);
          for (int u = 0; u < 4; u++) {
            acc[u][0] = _mm512_fmadd_ps(bv, _mm512_set1_ps(a0[(size_t)(2 * u) * r + t]), acc[u][0]);
            acc[u][1] = _mm512_fmadd_ps(bv, _mm512_set1_ps(a0[(size_t)(2 * u + 1) * r + t]), acc[u][1]);
          }
        }
        for (int u = 0; u < 4; u++) { /* constant bounds: the sums stay in registers */
          if (u >= nj) break;
          int j = j0 + u;
          size_t at_j = at0 + (size_t)j * NP * 32;
          __m512i line = _mm512_loadu_si512((const void *)(base + at_j)); /* 16 rows x (column 2j, column 2j+1) */
          __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(line, 16));
          __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(line, _mm512_set1_epi32((int)0xffff0000u)));
          __m512i ye = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_fmadd_ps(acc[u][0], sv, we)));
          __m512i yo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_fmadd_ps(acc[u][1], sv, wo)));
          if (2 * j + 1 >= K) yo = _mm512_setzero_si512(); /* K odd: the last pair's padding stays zero */
          _mm512_mask_storeu_epi32(out + at_j, rows, _mm512_or_si512(ye, _mm512_slli_epi32(yo, 16)));
        }
      }
    }
    free(bt);
  }
  return err;
}
