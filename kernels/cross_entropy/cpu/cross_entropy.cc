// Per-token softmax cross-entropy over the last axis for MindSpore's ops.Custom(func_type="aot")
// on CPU (FP32 logits, int32 labels):
//
//   forward   loss[r]      = log Σ_j exp(x[r,j] - m[r]) + m[r] - x[r, label[r]],  m[r] = max_j x[r,j]
//   backward  dx[r,j]      = (exp(x[r,j] - lse[r]) - [j == label[r]]) · dloss[r]
//
// Two passes over a row forward (max, then the sum of exponentials in SIMD-lane partial sums) and
// two backward (the log-sum-exp recomputed, then the gradient), instead of the ~10 passes of the
// composed operators and their gradients. exp is cg::ExpNonPositive (arguments are <= 0 after
// subtracting the max; < 1.2 ulp). Labels outside [0, V) pick nothing (loss = lse), as a one-hot
// pick would. Rows are independent: results do not depend on the thread count.
//
// Entry points (inputs then outputs; logits float32 [..., V] contiguous, labels int32 [...],
// loss/dloss float32 [...], dx float32 like logits):
//   CrossEntropyForward(logits, labels, loss)
//   CrossEntropyBackward(logits, labels, dloss, dx)
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cg_cpu_common.h"

namespace {

inline float RowMax(const float *x, int64_t v) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < v; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// log Σ exp(x - m) + m
inline float RowLogSumExp(const float *x, int64_t v) {
  const float m = RowMax(x, v);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < v; ++j) sum += cg::ExpNonPositive(x[j] - m);
  return std::log(sum) + m;
}

bool Shapes(int *ndims, int64_t **shapes, int64_t *rows, int64_t *v) {
  if (ndims[0] < 1) return false;
  *v = shapes[0][ndims[0] - 1];
  if (*v <= 0) return false;
  *rows = cg::NumElements(ndims[0], shapes[0]) / *v;
  return cg::NumElements(ndims[1], shapes[1]) == *rows;
}

}  // namespace

extern "C" int CrossEntropyForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return cg::kBadArity;
  if (cg::ParseDType(dtypes[0]) != cg::DType::kF32 || std::strcmp(dtypes[1], "int32") != 0 ||
      cg::ParseDType(dtypes[2]) != cg::DType::kF32) {
    return cg::kBadDType;
  }
  int64_t rows = 0, v = 0;
  if (!Shapes(ndims, shapes, &rows, &v) || cg::NumElements(ndims[2], shapes[2]) != rows) return cg::kBadShape;
  const auto *x = static_cast<const float *>(params[0]);
  const auto *labels = static_cast<const int32_t *>(params[1]);
  auto *loss = static_cast<float *>(params[2]);
  cg::ParallelFor(rows, std::max<int64_t>(1, 65536 / v), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float *xr = x + r * v;
      const int32_t label = labels[r];
      const float picked = (label >= 0 && label < v) ? xr[label] : 0.0f;
      loss[r] = RowLogSumExp(xr, v) - picked;
    }
  });
  return cg::kOk;
}

extern "C" int CrossEntropyBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  if (cg::ParseDType(dtypes[0]) != cg::DType::kF32 || std::strcmp(dtypes[1], "int32") != 0 ||
      cg::ParseDType(dtypes[2]) != cg::DType::kF32 || cg::ParseDType(dtypes[3]) != cg::DType::kF32) {
    return cg::kBadDType;
  }
  int64_t rows = 0, v = 0;
  if (!Shapes(ndims, shapes, &rows, &v) || cg::NumElements(ndims[2], shapes[2]) != rows ||
      cg::NumElements(ndims[3], shapes[3]) != rows * v) {
    return cg::kBadShape;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *labels = static_cast<const int32_t *>(params[1]);
  const auto *dloss = static_cast<const float *>(params[2]);
  auto *dx = static_cast<float *>(params[3]);
  cg::ParallelFor(rows, std::max<int64_t>(1, 65536 / v), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float *xr = x + r * v;
      float *dr = dx + r * v;
      const float d = dloss[r];
      const float lse = RowLogSumExp(xr, v);
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) {
        const float t = xr[j] - lse;
        dr[j] = cg::ExpNonPositive(t < 0.0f ? t : 0.0f) * d;
      }
      const int32_t label = labels[r];
      if (label >= 0 && label < v) dr[label] -= d;
    }
  });
  return cg::kOk;
}
