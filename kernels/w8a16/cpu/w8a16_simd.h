// FP32 vector helpers of the W8A16 / float-weight matmul kernels, one set per ISA, chosen at compile time:
//   AVX-512F: 16 lanes;  AVX2 + FMA + F16C: 8 lanes;  otherwise: 1 lane (plain float, portable).
// Weights are widened to FP32 in registers: Widen(int8 *) sign-extends and converts exactly,
// Widen(half *) converts FP16 exactly (F16C / AVX-512 vcvtph2ps), Widen(float *) only loads. Fma is one rounding where the
// ISA has FMA (the kernels are compiled with -ffp-contract=off, so nothing else fuses).
#ifndef CODEGEEX_KERNELS_W8A16_SIMD_H_
#define CODEGEEX_KERNELS_W8A16_SIMD_H_

#include <cstdint>

#include "cg_cpu_common.h"

#if defined(__x86_64__) && (defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)))
#include <immintrin.h>
#endif

namespace w8 {

#if defined(__x86_64__) && defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr const char *kIsa = "avx512";
using V = __m512;
inline V Zero() { return _mm512_setzero_ps(); }
inline V Load(const float *p) { return _mm512_loadu_ps(p); }
inline void Store(float *p, V v) { _mm512_storeu_ps(p, v); }
inline V Broadcast(const float *p) { return _mm512_set1_ps(*p); }
inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
inline float Sum(V v) { return _mm512_reduce_add_ps(v); }
inline V Widen(const int8_t *p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))));
}
inline V Widen(const cg::half_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline V Widen(const float *p) { return Load(p); }
#elif defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr int kLanes = 8;
constexpr const char *kIsa = "avx2";
using V = __m256;
inline V Zero() { return _mm256_setzero_ps(); }
inline V Load(const float *p) { return _mm256_loadu_ps(p); }
inline void Store(float *p, V v) { _mm256_storeu_ps(p, v); }
inline V Broadcast(const float *p) { return _mm256_broadcast_ss(p); }
inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
inline float Sum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}
inline V Widen(const int8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
}
inline V Widen(const cg::half_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}
inline V Widen(const float *p) { return Load(p); }
#else
constexpr int kLanes = 1;
constexpr const char *kIsa = "scalar";
using V = float;
inline V Zero() { return 0.0f; }
inline V Load(const float *p) { return *p; }
inline void Store(float *p, V v) { *p = v; }
inline V Broadcast(const float *p) { return *p; }
inline V Fma(V a, V b, V c) { return cg::MulAdd(a, b, c); }
inline V Add(V a, V b) { return a + b; }
inline float Sum(V v) { return v; }
inline V Widen(const int8_t *p) { return static_cast<float>(*p); }
inline V Widen(const cg::half_t *p) { return static_cast<float>(*p); }
inline V Widen(const float *p) { return *p; }
#endif

// dst[i] = float(src[i]) for i < n (exact for int8, FP16 and FP32).
template <typename W>
inline void WidenRow(const W *src, float *dst, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(dst + i, Widen(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

}  // namespace w8

#endif  // CODEGEEX_KERNELS_W8A16_SIMD_H_
