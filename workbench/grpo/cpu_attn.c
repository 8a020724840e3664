/* The training forward's attention, forward and backward, as `cpu_autograd.attention` computes it in torch: for each
 * sequence n and KV head g, the rep = H/K query heads of g stacked as R = rep*Tq rows against its S keys.
 *
 *   scores = Q K^T (bf16 product, as torch's bmm rounds it), times scale, -inf where the mask says no;
 *   P = softmax(scores) in fp32 (saved for the backward), rounded to bf16; O = P V (bf16).
 *   dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale, rounded to bf16; dQ = dS K, dK = dS^T Q, dV = P^T dO.
 *
 * Each product runs on `wb_linear` (cpu_decode.c) over its right-hand matrix packed by `wb_pack_rows`, one (n, g)
 * per thread at a time. Built with `cpu_decode.c` by `cpu_kernels.py`, which says why these kernels exist; this one
 * because torch's bf16 bmm, softmax and masking cost ~2.3 ms a layer (forward and backward) at the bundled model's
 * 8 x 9 x 32 x 72 completion attention, most of it per-op overhead on tiny matrices.
 */
#include "cpu_simd.h"

long wb_packed_elems(int N, int K);
int wb_pack_rows(const bf16 *w, int N, int K, const bf16 *a, const bf16 *b, int r, float scale, int n0, bf16 *out,
                 int threads);
void wb_linear(const bf16 *x, int M, int xs, const bf16 *wp, int N, int K, const bf16 *bias, void *out, int os,
               int mode, int threads);
void wb_pack_t(const bf16 *x, int R, int ld, int c0, int C, bf16 *out, int threads);
enum { A_BF16 = 0, A_F32 = 1 }; /* wb_linear's output modes used here */

/* The panels of w (N, K) row-major, pairs along K (as `wb_pack_rows` packs a weight). NULL when out of memory. */
static bf16 *packed_rows(const bf16 *w, int N, int K) {
  bf16 *p = calloc((size_t)wb_packed_elems(N, K), sizeof(bf16));
  if (p && wb_pack_rows(w, N, K, NULL, NULL, 0, 0.f, 0, p, 1)) {
    free(p);
    return NULL;
  }
  return p;
}

/* The panels of x^T for x (R, C) row-major: C output columns, pairs along R (`wb_pack_t`, cpu_train.c, which
 * writes every line, padding included). NULL when out of memory. */
static bf16 *packed_cols(const bf16 *x, int R, int C) {
  bf16 *p = malloc(sizeof(bf16) * (size_t)wb_packed_elems(C, R));
  if (p) wb_pack_t(x, R, C, 0, C, p, 1);
  return p;
}

/* t (C, ts) = x (R, C)^T (x's row stride C), ts >= R, the columns past R zero. */
static bf16 *transposed(const bf16 *x, int R, int C, int ts) {
  bf16 *t = calloc((size_t)C * ts, sizeof(bf16));
  if (t)
    for (int r = 0; r < R; r++)
      for (int c = 0; c < C; c++) t[(size_t)c * ts + r] = x[(size_t)r * C + c];
  return t;
}

/* One row of scores (S) in place: times scale, -inf where ok is 0, softmax in fp32; its bf16 rounding into pb. */
static void softmax_row(float *row, const uint8_t *ok, int S, float scale, bf16 *pb) {
  __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps(), sv = _mm512_set1_ps(scale);
  for (int j = 0; j < S; j += 16) {
    __mmask16 m = tail(S - j);
    __mmask16 live = _mm_mask_cmpneq_epi8_mask(m, _mm_maskz_loadu_epi8(m, ok + j), _mm_setzero_si128());
    __m512 v = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), live, _mm512_maskz_loadu_ps(m, row + j), sv);
    _mm512_mask_storeu_ps(row + j, m, v);
    mx = _mm512_max_ps(mx, v);
  }
  __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  for (int j = 0; j < S; j += 16) {
    __mmask16 m = tail(S - j);
    __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), top)));
    _mm512_mask_storeu_ps(row + j, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
  for (int j = 0; j < S; j += 16) {
    __mmask16 m = tail(S - j);
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, row + j), total);
    _mm512_mask_storeu_ps(row + j, m, v);
    _mm256_mask_storeu_epi16(pb + j, m, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

/* out (N*H, Tq, d) and the softmax p (N, K, R, S) fp32 from q (N, H, Tq, d), k and v (N, K, S, d), mask (N, Tq, S)
 * (1 = may attend; every row has one). Returns 2 when out of memory. */
int wb_attn_fwd(const bf16 *q, const bf16 *k, const bf16 *v, const uint8_t *mask, int N, int H, int K, int Tq, int S,
                int d, float scale, bf16 *out, float *p, int threads) {
  int rep = H / K, R = rep * Tq, Sp = (S + 1) & ~1, err = 0;
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
  for (int n = 0; n < N; n++)
    for (int g = 0; g < K; g++) {
      size_t qo = ((size_t)n * H + (size_t)g * rep) * Tq * d, ko = ((size_t)n * K + g) * S * d;
      float *pg = p + ((size_t)n * K + g) * R * S;
      bf16 *pk = packed_rows(k + ko, S, d), *pv = packed_cols(v + ko, S, d), *pb = calloc((size_t)R * Sp, 2);
      if (!pk || !pv || !pb) {
        err = 2;
      } else {
        wb_linear(q + qo, R, d, pk, S, d, NULL, pg, S, A_F32, 1);
        for (int i = 0; i < R; i++)
          softmax_row(pg + (size_t)i * S, mask + ((size_t)n * Tq + i % Tq) * S, S, scale, pb + (size_t)i * Sp);
        wb_linear(pb, R, Sp, pv, d, S, NULL, out + qo, d, A_BF16, 1);
      }
      free(pk), free(pv), free(pb);
    }
  return err;
}

/* dq, dk, dv (shaped as q, k, v) from dout (as out), q, k, v and the forward's p. Returns 2 when out of memory. */
int wb_attn_bwd(const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v, const float *p, int N, int H, int K,
                int Tq, int S, int d, float scale, bf16 *dq, bf16 *dk, bf16 *dv, int threads) {
  int rep = H / K, R = rep * Tq, Sp = (S + 1) & ~1, Rp = (R + 1) & ~1, err = 0;
#pragma omp parallel for num_threads(threads) collapse(2) schedule(static)
  for (int n = 0; n < N; n++)
    for (int g = 0; g < K; g++) {
      size_t qo = ((size_t)n * H + (size_t)g * rep) * Tq * d, ko = ((size_t)n * K + g) * S * d;
      const float *pg = p + ((size_t)n * K + g) * R * S;
      float *dp = malloc(sizeof(float) * (size_t)R * S);
      bf16 *pv = packed_rows(v + ko, S, d), *pkt = packed_cols(k + ko, S, d), *pqt = packed_cols(q + qo, R, d),
           *pot = packed_cols(dout + qo, R, d), *ds = calloc((size_t)R * Sp, 2), *pb = calloc((size_t)R * Sp, 2);
      bf16 *dst = NULL, *pbt = NULL;
      if (dp && pv && pkt && pqt && pot && ds && pb) {
        wb_linear(dout + qo, R, d, pv, S, d, NULL, dp, S, A_F32, 1);
        __m512 sv = _mm512_set1_ps(scale);
        for (int i = 0; i < R; i++) {
          const float *pr = pg + (size_t)i * S, *dr = dp + (size_t)i * S;
          __m512 acc = _mm512_setzero_ps();
          for (int j = 0; j < S; j += 16) {
            __mmask16 m = tail(S - j);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pr + j), _mm512_maskz_loadu_ps(m, dr + j), acc);
          }
          __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
          for (int j = 0; j < S; j += 16) {
            __mmask16 m = tail(S - j);
            __m512 pj = _mm512_maskz_loadu_ps(m, pr + j), dj = _mm512_maskz_loadu_ps(m, dr + j);
            __m512 sj = _mm512_mul_ps(_mm512_mul_ps(pj, _mm512_sub_ps(dj, dot)), sv);
            _mm256_mask_storeu_epi16(ds + (size_t)i * Sp + j, m, (__m256i)_mm512_cvtneps_pbh(sj));
            _mm256_mask_storeu_epi16(pb + (size_t)i * Sp + j, m, (__m256i)_mm512_cvtneps_pbh(pj));
          }
        }
        dst = transposed(ds, R, Sp, Rp), pbt = transposed(pb, R, Sp, Rp);
      }
      if (!dst || !pbt) {
        err = 2;
      } else {
        wb_linear(ds, R, Sp, pkt, d, S, NULL, dq + qo, d, A_BF16, 1);
        wb_linear(dst, S, Rp, pqt, d, R, NULL, dk + ko, d, A_BF16, 1);
        wb_linear(pbt, S, Rp, pot, d, R, NULL, dv + ko, d, A_BF16, 1);
      }
      free(dp), free(pv), free(pkt), free(pqt), free(pot), free(ds), free(pb), free(dst), free(pbt);
    }
  return err;
}
