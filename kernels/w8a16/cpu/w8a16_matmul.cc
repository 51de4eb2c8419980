// W8A16 matmul for MindSpore's ops.Custom(func_type="aot") on CPU, inference only (no backward).
//
//   y[m, n] = scale[n] * sum_k x[m, k] * w[n, k]
//
// x [M, K] float32 or float16 activations, w [N, K] int8 weights (torch layout [out, in]),
// scale [N] float32 per-output-row scales, y [M, N] in x's dtype. The int8 weights are read once
// per output tile and widened to FP32 in registers (sign-extend + convert) right before the
// FMAs; no dequantized copy of w is ever written. Accumulation is FP32, the scale is applied to
// the FP32 sum, then y is rounded to its dtype once (so FP16 outputs cannot overflow on the way).
//
// Blocking: threads split the N rows (cg::ParallelFor: std::threads, see cg_cpu_common.h for why
// not an OpenMP runtime); each thread walks K in blocks of kKBlock so that the MR rows of x it
// reuses stay in L2, and inside a block computes MR x NR tiles (x rows x weight rows) with
// MR * NR * KU independent 8-lane accumulators:
//   M >= 4: 4 x 2 tiles (8 FMAs per 2 weight vectors widened: prefill is FMA-bound);
//   M <  4: M x 4 tiles, two k-steps in flight (decode: memory-bound on w, enough
//           independent FMAs to hide their latency).
// FP16 x is converted to an FP32 copy first (M x K, small next to w).
//
// Entry point (inputs then output): W8A16MatMul(x, w, scale, y). Returns 0, or 1 (arity),
// 2 (dtypes), 3 (shapes).
#include <cstdint>
#include <cstring>
#include <vector>

#include "cg_cpu_common.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CG_W8A16_AVX2 1
#endif

namespace {

constexpr int64_t kKBlock = 2048;        // K elements per block: 4 rows of FP32 x = 32 KiB
constexpr int64_t kMinMacsPerTask = 1 << 21;  // ~1 ms of work per thread: on a busy machine a
                                              // started thread may wait a time slice to run

#ifdef CG_W8A16_AVX2
inline __m256 Widen8(const int8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}
#endif

// acc[m * ldy + n] += sum_{k < kn} x[m * ldx + k] * w[n * ldw + k] for m < MR, n < NR.
template <int MR, int NR, int KU>
void Tile(const float *x, int64_t ldx, const int8_t *w, int64_t ldw, int64_t kn, float *acc, int64_t ldy) {
  int64_t k = 0;
#ifdef CG_W8A16_AVX2
  __m256 s[KU][MR][NR];
  for (int u = 0; u < KU; ++u)
    for (int m = 0; m < MR; ++m)
      for (int n = 0; n < NR; ++n) s[u][m][n] = _mm256_setzero_ps();
  for (; k + 8 * KU <= kn; k += 8 * KU) {
    for (int u = 0; u < KU; ++u) {
      __m256 wv[NR];
      for (int n = 0; n < NR; ++n) wv[n] = Widen8(w + n * ldw + k + 8 * u);
      for (int m = 0; m < MR; ++m) {
        const __m256 xv = _mm256_loadu_ps(x + m * ldx + k + 8 * u);
        for (int n = 0; n < NR; ++n) s[u][m][n] = _mm256_fmadd_ps(xv, wv[n], s[u][m][n]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      __m256 t = s[0][m][n];
      for (int u = 1; u < KU; ++u) t = _mm256_add_ps(t, s[u][m][n]);
      acc[m * ldy + n] += HorizontalSum(t);
    }
  }
#endif
  if (k < kn) {  // the K tail (or everything without AVX2)
    for (int m = 0; m < MR; ++m) {
      for (int n = 0; n < NR; ++n) {
        const float *xr = x + m * ldx;
        const int8_t *wr = w + n * ldw;
        float t = 0.0f;
#pragma omp simd reduction(+ : t)
        for (int64_t j = k; j < kn; ++j) t += xr[j] * static_cast<float>(wr[j]);
        acc[m * ldy + n] += t;
      }
    }
  }
}

// Rows [m0, m0 + mr) of x against weight rows [n0, n0 + nr), one K block; dispatches the tile shape.
template <int NR, int KU>
void Rows(int64_t mr, const float *x, int64_t ldx, const int8_t *w, int64_t ldw, int64_t kn, float *acc,
          int64_t ldy) {
  switch (mr) {
    case 1: Tile<1, NR, KU>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 2: Tile<2, NR, KU>(x, ldx, w, ldw, kn, acc, ldy); break;
    case 3: Tile<3, NR, KU>(x, ldx, w, ldw, kn, acc, ldy); break;
    default: Tile<4, NR, KU>(x, ldx, w, ldw, kn, acc, ldy); break;
  }
}

// acc [M, N] (row stride ldy) for output rows [nb, ne): acc = (x · w[nb:ne]ᵀ) * scale.
void Compute(const float *x, const int8_t *w, const float *scale, int64_t M, int64_t K, int64_t nb, int64_t ne,
             float *acc, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m) std::memset(acc + m * ldy + nb, 0, sizeof(float) * (ne - nb));
  const bool decode = M < 4;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kn = K - k0 < kKBlock ? K - k0 : kKBlock;
    for (int64_t m = 0; m < M; m += 4) {
      const int64_t mr = M - m < 4 ? M - m : 4;
      const float *xb = x + m * K + k0;
      float *ab = acc + m * ldy;
      int64_t n = nb;
      if (decode) {
        for (; n + 4 <= ne; n += 4) Rows<4, 2>(mr, xb, K, w + n * K + k0, K, kn, ab + n, ldy);
      } else {
        for (; n + 2 <= ne; n += 2) Rows<2, 1>(mr, xb, K, w + n * K + k0, K, kn, ab + n, ldy);
      }
      for (; n < ne; ++n) Rows<1, 1>(mr, xb, K, w + n * K + k0, K, kn, ab + n, ldy);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    float *row = acc + m * ldy;
#pragma omp simd
    for (int64_t n = nb; n < ne; ++n) row[n] *= scale[n];
  }
}

bool IsInt8(const char *name) { return std::strcmp(name, "int8") == 0; }

}  // namespace

extern "C" int W8A16MatMul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  const cg::DType xt = cg::ParseDType(dtypes[0]);
  if ((xt != cg::DType::kF32 && xt != cg::DType::kF16) || !IsInt8(dtypes[1]) ||
      cg::ParseDType(dtypes[2]) != cg::DType::kF32 || cg::ParseDType(dtypes[3]) != xt) {
    return cg::kBadDType;
  }
  if (ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1 || ndims[3] != 2) return cg::kBadShape;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (shapes[1][1] != K || shapes[2][0] != N || shapes[3][0] != M || shapes[3][1] != N) return cg::kBadShape;
  if (M == 0 || N == 0) return cg::kOk;
  const auto *w = static_cast<const int8_t *>(params[1]);
  const auto *scale = static_cast<const float *>(params[2]);

  std::vector<float> x32;
  const float *x = static_cast<const float *>(params[0]);
  if (xt == cg::DType::kF16) {
    x32.resize(static_cast<size_t>(M * K));
    cg::HalfToFloat(static_cast<const cg::half_t *>(params[0]), x32.data(), M * K);
    x = x32.data();
  }
  std::vector<float> y32;
  float *acc = static_cast<float *>(params[3]);
  if (xt == cg::DType::kF16) {
    y32.resize(static_cast<size_t>(M * N));
    acc = y32.data();
  }
  const int64_t macs_per_row = M * (K > 0 ? K : 1);
  const int64_t min_rows = (kMinMacsPerTask + macs_per_row - 1) / macs_per_row;
  const int64_t group = M < 4 ? 4 : 2;  // rows per tile: tasks start on tile boundaries
  const int64_t groups = (N + group - 1) / group;
  cg::ParallelFor(groups, (min_rows + group - 1) / group, [&](int64_t b, int64_t e) {
    Compute(x, w, scale, M, K, b * group, e * group < N ? e * group : N, acc, N);
  });
  if (xt == cg::DType::kF16) cg::FloatToHalf(acc, static_cast<cg::half_t *>(params[3]), M * N);
  return cg::kOk;
}
