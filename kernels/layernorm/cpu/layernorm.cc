// LayerNorm over the last axis, forward and backward, for MindSpore's ops.Custom(func_type="aot")
// on CPU (FP32).
//
//   mean = Σx / H,  var = Σ(x - mean)² / H,  rstd = 1 / sqrt(var + eps),  x̂ = (x - mean) · rstd
//   y = x̂ · γ + β
//   g = dy · γ;  dx = rstd · (g - mean(g) - x̂ · mean(g · x̂));  dγ = Σ_rows dy · x̂;  dβ = Σ_rows dy
//
// Row sums are accumulated in double (the statistics are as accurate as FP32 can hold). The
// backward recomputes mean and rstd from x instead of storing them. Rows are processed in fixed
// blocks of kBlockRows; dγ and dβ are summed per block and the block sums added in block order,
// so results do not depend on the thread count or on which thread ran which block.
//
// Entry points (inputs then outputs; x/dy/y/dx contiguous float32 [..., H], γ/β/dγ/dβ float32 [H],
// eps float32 [1]):
//   LayerNormForward(x, gamma, beta, eps, y)
//   LayerNormBackward(x, gamma, dy, eps, dx, dgamma, dbeta)
#include <cmath>
#include <cstdint>
#include <vector>

#include "cg_cpu_common.h"

namespace {

constexpr int64_t kBlockRows = 32;

struct Stats {
  float mean;
  float rstd;
};

inline Stats RowStats(const float *x, int64_t h, float eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < h; ++j) sum += x[j];
  const double mean = sum / static_cast<double>(h);
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < h; ++j) {
    const double d = x[j] - mean;
    sq += d * d;
  }
  const double var = sq / static_cast<double>(h);
  return {static_cast<float>(mean), static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)))};
}

void ForwardRows(const float *x, const float *gamma, const float *beta, float *y, int64_t r0, int64_t r1,
                 int64_t h, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * h;
    float *yr = y + r * h;
    const Stats s = RowStats(xr, h, eps);
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) yr[j] = (xr[j] - s.mean) * s.rstd * gamma[j] + beta[j];
  }
}

// Rows [r0, r1): dx, and this block's dγ/dβ sums into dg/db (zeroed here).
void BackwardRows(const float *x, const float *gamma, const float *dy, float *dx, double *dg, double *db,
                  int64_t r0, int64_t r1, int64_t h, float eps) {
  for (int64_t j = 0; j < h; ++j) dg[j] = db[j] = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * h;
    const float *gr = dy + r * h;
    float *dxr = dx + r * h;
    const Stats s = RowStats(xr, h, eps);
    double sum_g = 0.0, sum_gx = 0.0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = 0; j < h; ++j) {
      const float xhat = (xr[j] - s.mean) * s.rstd;
      const float g = gr[j] * gamma[j];
      sum_g += g;
      sum_gx += static_cast<double>(g) * xhat;
      dg[j] += static_cast<double>(gr[j]) * xhat;
      db[j] += gr[j];
    }
    const float mg = static_cast<float>(sum_g / static_cast<double>(h));
    const float mgx = static_cast<float>(sum_gx / static_cast<double>(h));
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      const float xhat = (xr[j] - s.mean) * s.rstd;
      dxr[j] = s.rstd * (gr[j] * gamma[j] - mg - xhat * mgx);
    }
  }
}

bool IsF32(const char *dtype) { return cg::ParseDType(dtype) == cg::DType::kF32; }

}  // namespace

extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 5) return cg::kBadArity;
  for (int i = 0; i < 5; ++i) {
    if (!IsF32(dtypes[i])) return cg::kBadDType;
  }
  if (ndims[0] < 1) return cg::kBadShape;
  const int64_t h = shapes[0][ndims[0] - 1];
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (h <= 0 || cg::NumElements(ndims[1], shapes[1]) != h || cg::NumElements(ndims[2], shapes[2]) != h ||
      cg::NumElements(ndims[4], shapes[4]) != n) {
    return cg::kBadShape;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *gamma = static_cast<const float *>(params[1]);
  const auto *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  auto *y = static_cast<float *>(params[4]);
  const int64_t rows = n / h;
  const int64_t min_rows = std::max<int64_t>(1, 16384 / h);
  cg::ParallelFor(rows, min_rows, [&](int64_t b, int64_t e) { ForwardRows(x, gamma, beta, y, b, e, h, eps); });
  return cg::kOk;
}

extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 7) return cg::kBadArity;
  for (int i = 0; i < 7; ++i) {
    if (!IsF32(dtypes[i])) return cg::kBadDType;
  }
  if (ndims[0] < 1) return cg::kBadShape;
  const int64_t h = shapes[0][ndims[0] - 1];
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (h <= 0 || cg::NumElements(ndims[1], shapes[1]) != h || cg::NumElements(ndims[2], shapes[2]) != n ||
      cg::NumElements(ndims[4], shapes[4]) != n || cg::NumElements(ndims[5], shapes[5]) != h ||
      cg::NumElements(ndims[6], shapes[6]) != h) {
    return cg::kBadShape;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *gamma = static_cast<const float *>(params[1]);
  const auto *dy = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  auto *dx = static_cast<float *>(params[4]);
  auto *dgamma = static_cast<float *>(params[5]);
  auto *dbeta = static_cast<float *>(params[6]);
  const int64_t rows = n / h;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(static_cast<size_t>(2 * blocks * h));
  cg::ParallelFor(blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      BackwardRows(x, gamma, dy, dx, partial.data() + 2 * k * h, partial.data() + (2 * k + 1) * h, k * kBlockRows,
                   std::min(rows, (k + 1) * kBlockRows), h, eps);
    }
  });
  for (int64_t j = 0; j < h; ++j) {
    double g = 0.0, bsum = 0.0;
    for (int64_t k = 0; k < blocks; ++k) {
      g += partial[static_cast<size_t>(2 * k * h + j)];
      bsum += partial[static_cast<size_t>((2 * k + 1) * h + j)];
    }
    dgamma[j] = static_cast<float>(g);
    dbeta[j] = static_cast<float>(bsum);
  }
  return cg::kOk;
}
