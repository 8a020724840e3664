/* What the native CPU kernels (`cpu_decode.c`, `cpu_train.c`, `cpu_attn.c`) share: bf16 <-> fp32 conversion and
 * rounding as a bf16 tensor op rounds, 16-lane AVX-512 loads/stores/exp, the packed product's tile size, and the
 * row-wise ops (RMSNorm, SiLU·up, rotary) that the decode step and the training kernels both use. Built by
 * `cpu_kernels.py`.
 */
#ifndef WB_CPU_SIMD_H
#define WB_CPU_SIMD_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

/* The packed weights of `wb_linear` (cpu_decode.c): tiles of NP panels of 16 output columns. */
#define NP 3 /* panels per tile: 8 rows x 3 panels = 24 fp32 sums in registers */
#define COLS (16 * NP)

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
/* the lanes of the first n of 16 entries (none for n <= 0, all for n >= 16): a tail's mask */
static inline __mmask16 tail(int n) { return (__mmask16)(n <= 0 ? 0 : n >= 16 ? 0xffff : (1u << n) - 1); }
static inline __m512 ld16m(const bf16 *p, int n) { /* ld16 of the first n (< 16 allowed) values, zero after */
  __mmask16 m = tail(n);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
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

/* HF's LlamaRMSNorm of one row in bf16: fp32 mean of squares, x * rsqrt rounded, times the weight rounded. Returns
 * the rsqrt (the backward's saved value). */
static inline float rms_norm(const bf16 *x, const bf16 *w, int n, float eps, bf16 *y) {
  int v = n / 16 * 16;
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < v; i += 16) acc = _mm512_fmadd_ps(ld16(x + i), ld16(x + i), acc);
  float ss = _mm512_reduce_add_ps(acc);
  for (int i = v; i < n; i++) ss += b2f(x[i]) * b2f(x[i]);
  float r = 1.f / sqrtf(ss / n + eps);
  __m512 rv = _mm512_set1_ps(r);
  for (int i = 0; i < v; i += 16) st16(y + i, _mm512_mul_ps(ld16(w + i), rb16(_mm512_mul_ps(ld16(x + i), rv))));
  for (int i = v; i < n; i++) y[i] = f2b(b2f(w[i]) * rb(b2f(x[i]) * r));
  return r;
}

/* HF's SiLU-gated MLP input in bf16, n elements: silu(g) rounded, times u rounded. */
static inline void silu_mul(const bf16 *g, const bf16 *u, long n, bf16 *y) {
  long v = n / 16 * 16;
  for (long i = 0; i < v; i += 16) {
    __m512 gv = ld16(g + i);
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    st16(y + i, _mm512_mul_ps(rb16(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e))), ld16(u + i)));
  }
  for (long i = v; i < n; i++) y[i] = f2b(rb(b2f(g[i]) / (1.f + expf(-b2f(g[i])))) * b2f(u[i]));
}

/* HF's apply_rotary_pos_emb on one head of d in bf16, x*cos + rotate_half(x)*sin with each product rounded; with
 * backward != 0 its gradient, dy*cos + rotate_half^T(dy*sin). y may be x (the head is read first). */
static inline void rope_head(const bf16 *x, const bf16 *cos, const bf16 *sin, bf16 *y, int d, int backward) {
  float t[512];
  int h = d / 2;
  for (int e = 0; e < d; e++) t[e] = b2f(x[e]);
  if (h % 16 == 0) {
    for (int e = 0; e < d; e += 16) {
      int o = e < h ? e + h : e - h; /* the partner half */
      __m512 a = rb16(_mm512_mul_ps(_mm512_loadu_ps(t + e), ld16(cos + e)));
      /* rotate_half's transpose takes sin at the partner's place: +t[e+h] s[e+h] below h, -t[e-h] s[e-h] from h */
      __m512 rot = rb16(_mm512_mul_ps(_mm512_loadu_ps(t + o), ld16(sin + (backward ? o : e))));
      st16(y + e, (backward ? e >= h : e < h) ? _mm512_sub_ps(a, rot) : _mm512_add_ps(a, rot));
    }
    return;
  }
  for (int e = 0; e < d; e++) {
    int o = e < h ? e + h : e - h;
    float rot = rb(t[o] * b2f(sin[backward ? o : e]));
    y[e] = f2b(rb(t[e] * b2f(cos[e])) + ((backward ? e >= h : e < h) ? -rot : rot));
  }
}

#endif
