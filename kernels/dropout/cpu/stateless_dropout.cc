// Stateless (resume-exact) inverted dropout for MindSpore's ops.Custom(func_type="aot") on CPU:
// the one-pass form of codegeex_ms.train.dropout.StatelessDropout, bit for bit.
//
// Element i (flat index) of a tensor is kept iff Mix(i ^ site_key) >= threshold, with
//   Mix(h) = xorshift16, *0x7FEB352D mod 2^32, xorshift15, *0x2C1B3C6D mod 2^32, xorshift16
// (the hash of dropout.py's _mix on values in [0, 2^32)). Kept elements are scaled by `scale`.
// The arithmetic reproduces the composed MindSpore graph exactly:
//   forward   y  = (x * keep) * scale
//   backward  dx = (dy * scale) * keep          (keep = 1.0f or 0.0f)
// so dropped elements give x * 0 (a signed zero, or NaN for Inf/NaN inputs) as there.
// The mask is regenerated in the backward instead of being stored.
//
// Entry points (inputs then outputs; x/dy/y/dx contiguous float32 of one element count,
// site_key int64 [] or [1] in [0, 2^32), threshold int64 [1] in [0, 2^32], scale float32 [1]):
//   StatelessDropoutForward(x, site_key, threshold, scale, y)
//   StatelessDropoutBackward(dy, site_key, threshold, scale, dx)
#include <cstdint>

#include "cg_cpu_common.h"

namespace {

constexpr int64_t kMinPerThread = 65536;

// Flat indices below 2^32: the hash in 32-bit lanes (vectorises). The composed graph computes in
// int64, but with every operand below 2^32 its low 32 bits (all that survives the masks) agree.
inline uint32_t Mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  return h ^ (h >> 16);
}

// Any flat index: the first shift sees all 64 bits, as in the int64 graph.
inline uint64_t Mix64(uint64_t h) {
  h ^= h >> 16;
  h = (h * 0x7FEB352Dull) & 0xFFFFFFFFull;
  h ^= h >> 15;
  h = (h * 0x2C1B3C6Dull) & 0xFFFFFFFFull;
  return h ^ (h >> 16);
}

inline float Keep(int64_t i, uint64_t site_key, uint64_t threshold) {
  if (i < (int64_t{1} << 32)) {
    return static_cast<uint64_t>(Mix32(static_cast<uint32_t>(i) ^ static_cast<uint32_t>(site_key))) >= threshold
               ? 1.0f : 0.0f;
  }
  return Mix64(static_cast<uint64_t>(i) ^ site_key) >= threshold ? 1.0f : 0.0f;
}

void ForwardRange(const float *x, float *y, int64_t b, int64_t e, uint64_t key, uint64_t thr, float scale) {
#pragma omp simd
  for (int64_t i = b; i < e; ++i) y[i] = (x[i] * Keep(i, key, thr)) * scale;
}

void BackwardRange(const float *dy, float *dx, int64_t b, int64_t e, uint64_t key, uint64_t thr, float scale) {
#pragma omp simd
  for (int64_t i = b; i < e; ++i) dx[i] = (dy[i] * scale) * Keep(i, key, thr);
}

bool CheckLayout(int *ndims, int64_t **shapes) {
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (cg::NumElements(ndims[4], shapes[4]) != n) return false;
  if (cg::NumElements(ndims[1], shapes[1]) != 1 || cg::NumElements(ndims[2], shapes[2]) != 1 ||
      cg::NumElements(ndims[3], shapes[3]) != 1) {
    return false;
  }
  return true;
}

bool CheckTypes(const char **dtypes) {
  return cg::ParseDType(dtypes[0]) == cg::DType::kF32 && cg::ParseDType(dtypes[4]) == cg::DType::kF32 &&
         std::strcmp(dtypes[1], "int64") == 0 && std::strcmp(dtypes[2], "int64") == 0 &&
         cg::ParseDType(dtypes[3]) == cg::DType::kF32;
}

template <typename Range>
int Run(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, Range range) {
  if (nparam != 5) return cg::kBadArity;
  if (!CheckTypes(dtypes)) return cg::kBadDType;
  if (!CheckLayout(ndims, shapes)) return cg::kBadShape;
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  const auto *in = static_cast<const float *>(params[0]);
  const auto key = static_cast<uint64_t>(*static_cast<const int64_t *>(params[1]));
  const auto thr = static_cast<uint64_t>(*static_cast<const int64_t *>(params[2]));
  const float scale = *static_cast<const float *>(params[3]);
  auto *out = static_cast<float *>(params[4]);
  cg::ParallelFor(n, kMinPerThread, [&](int64_t b, int64_t e) { range(in, out, b, e, key, thr, scale); });
  return cg::kOk;
}

}  // namespace

extern "C" int StatelessDropoutForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                       const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return Run(nparam, params, ndims, shapes, dtypes, ForwardRange);
}

extern "C" int StatelessDropoutBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                        const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  return Run(nparam, params, ndims, shapes, dtypes, BackwardRange);
}
