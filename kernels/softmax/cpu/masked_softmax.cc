// Scale + additive mask + softmax over the last axis, forward and backward, for MindSpore's
// ops.Custom(func_type="aot") on CPU. FP32 math for FP16 or FP32 tensors.
//
// Forward, per row of T scores (same operation order as the composed reference, so that the
// logits are bit-identical to it):
//   x_j = float(s_j) * scale - (1 - float(m_j)) * 10000
//   y_j = exp(x_j - max_k x_k) / sum_k exp(x_k - max_k x_k)
// A fully blocked row is every score minus 10000: its max-shifted exponentials are those of the
// unmasked row, so it stays finite (never NaN), as in the reference formula.
// Backward (y = the forward output, dy = the incoming gradient):
//   dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)
//
// Entry points (inputs then outputs):
//   MaskedSoftmaxForward(scores [B,N,S,T], mask [Bm,Nm,S,T], scale [1] float32, out [B,N,S,T])
//     scores/out: float32 or float16 (same dtype); mask: float32, float16, uint8 or bool, with
//     Bm in {1, B} and Nm in {1, N} (broadcast over batch / heads).
//   MaskedSoftmaxBackward(y [..,T], dy [..,T], scale [1] float32, dx [..,T])
//     y/dy/dx: one dtype, float32 or float16.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cg_cpu_common.h"

namespace {

constexpr float kMaskPenalty = 10000.0f;
constexpr int64_t kMinElemsPerThread = 32768;  // ~30 us of work per thread

struct Geometry {
  int64_t batch, heads, queries, keys;  // B, N, S, T of the scores
  int64_t mask_batch, mask_heads;       // Bm, Nm of the mask
};

// Probabilities of one row, in place in `x` (x holds float(s_j) on entry).
inline void SoftmaxRow(float *__restrict x, const float *__restrict m, float scale, int64_t t) {
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < t; ++j) {
    const float v = x[j] * scale - (1.0f - m[j]) * kMaskPenalty;
    x[j] = v;
    mx = v > mx ? v : mx;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < t; ++j) {
    const float e = cg::ExpNonPositive(x[j] - mx);
    x[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < t; ++j) x[j] *= inv;
}

template <typename TS, typename TM>
void ForwardRows(const TS *scores, const TM *mask, float scale, TS *out, const Geometry &g, int64_t r0, int64_t r1,
                 float *buf, float *mbuf) {
  const int64_t t = g.keys;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / (g.heads * g.queries);
    const int64_t n = (r / g.queries) % g.heads;
    const int64_t s = r % g.queries;
    const int64_t mrow = ((g.mask_batch == 1 ? 0 : b) * g.mask_heads + (g.mask_heads == 1 ? 0 : n)) * g.queries + s;
    const float *m = cg::AsFloat(mask + mrow * t, mbuf, t);
    if constexpr (std::is_same_v<TS, float>) {  // computed in place in the output row
      float *x = out + r * t;
      cg::StoreRow(scores + r * t, x, t);
      SoftmaxRow(x, m, scale, t);
    } else {  // staged through the FP32 buffer
      cg::HalfToFloat(scores + r * t, buf, t);
      SoftmaxRow(buf, m, scale, t);
      cg::FloatToHalf(buf, out + r * t, t);
    }
  }
}

template <typename T>
void BackwardRows(const T *y, const T *dy, float scale, T *dx, int64_t t, int64_t r0, int64_t r1, float *ybuf,
                  float *gbuf) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *yr = cg::AsFloat(y + r * t, ybuf, t);
    const float *gr = cg::AsFloat(dy + r * t, gbuf, t);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < t; ++j) dot += gr[j] * yr[j];
    if constexpr (std::is_same_v<T, float>) {
      float *res = dx + r * t;
#pragma omp simd
      for (int64_t j = 0; j < t; ++j) res[j] = scale * yr[j] * (gr[j] - dot);
    } else {  // gbuf holds the FP32 copy of dy: overwrite it element by element, then narrow
#pragma omp simd
      for (int64_t j = 0; j < t; ++j) gbuf[j] = scale * yr[j] * (gr[j] - dot);
      cg::FloatToHalf(gbuf, dx + r * t, t);
    }
  }
}

template <typename TS, typename TM>
void Forward(const TS *scores, const TM *mask, float scale, TS *out, const Geometry &g) {
  const int64_t rows = g.batch * g.heads * g.queries;
  const int64_t min_rows = std::max<int64_t>(1, kMinElemsPerThread / g.keys);
  cg::ParallelFor(rows, min_rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(static_cast<size_t>(2 * g.keys));
    ForwardRows(scores, mask, scale, out, g, r0, r1, scratch.data(), scratch.data() + g.keys);
  });
}

template <typename T>
void Backward(const T *y, const T *dy, float scale, T *dx, int64_t rows, int64_t t) {
  const int64_t min_rows = std::max<int64_t>(1, kMinElemsPerThread / t);
  cg::ParallelFor(rows, min_rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(static_cast<size_t>(2 * t));
    BackwardRows(y, dy, scale, dx, t, r0, r1, scratch.data(), scratch.data() + t);
  });
}

template <typename TS>
int ForwardByMask(void **params, cg::DType mask_type, float scale, const Geometry &g) {
  const auto *scores = static_cast<const TS *>(params[0]);
  auto *out = static_cast<TS *>(params[3]);
  switch (mask_type) {
    case cg::DType::kF32:
      Forward(scores, static_cast<const float *>(params[1]), scale, out, g);
      return cg::kOk;
    case cg::DType::kF16:
      Forward(scores, static_cast<const cg::half_t *>(params[1]), scale, out, g);
      return cg::kOk;
    case cg::DType::kU8:
      Forward(scores, static_cast<const uint8_t *>(params[1]), scale, out, g);
      return cg::kOk;
    default:
      return cg::kBadDType;
  }
}

}  // namespace

extern "C" int MaskedSoftmaxForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  if (ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4) return cg::kBadShape;
  const int64_t *ss = shapes[0];
  const int64_t *ms = shapes[1];
  const Geometry g{ss[0], ss[1], ss[2], ss[3], ms[0], ms[1]};
  const bool mask_ok = (g.mask_batch == 1 || g.mask_batch == g.batch) && (g.mask_heads == 1 || g.mask_heads == g.heads) &&
                       ms[2] == g.queries && ms[3] == g.keys;
  if (!mask_ok || cg::NumElements(4, shapes[3]) != cg::NumElements(4, ss)) return cg::kBadShape;
  if (cg::NumElements(4, ss) == 0) return cg::kOk;
  if (cg::ParseDType(dtypes[2]) != cg::DType::kF32 || cg::NumElements(ndims[2], shapes[2]) != 1) return cg::kBadDType;
  const float scale = *static_cast<const float *>(params[2]);
  const cg::DType score_type = cg::ParseDType(dtypes[0]);
  if (cg::ParseDType(dtypes[3]) != score_type) return cg::kBadDType;
  const cg::DType mask_type = cg::ParseDType(dtypes[1]);
  if (score_type == cg::DType::kF32) return ForwardByMask<float>(params, mask_type, scale, g);
  if (score_type == cg::DType::kF16) return ForwardByMask<cg::half_t>(params, mask_type, scale, g);
  return cg::kBadDType;
}

extern "C" int MaskedSoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  if (ndims[0] < 1) return cg::kBadShape;
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (cg::NumElements(ndims[1], shapes[1]) != n || cg::NumElements(ndims[3], shapes[3]) != n) return cg::kBadShape;
  if (n == 0) return cg::kOk;
  const int64_t t = shapes[0][ndims[0] - 1];
  if (cg::ParseDType(dtypes[2]) != cg::DType::kF32 || cg::NumElements(ndims[2], shapes[2]) != 1) return cg::kBadDType;
  const float scale = *static_cast<const float *>(params[2]);
  const cg::DType type = cg::ParseDType(dtypes[0]);
  if (cg::ParseDType(dtypes[1]) != type || cg::ParseDType(dtypes[3]) != type) return cg::kBadDType;
  if (type == cg::DType::kF32) {
    Backward(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), scale,
             static_cast<float *>(params[3]), n / t, t);
    return cg::kOk;
  }
  if (type == cg::DType::kF16) {
    Backward(static_cast<const cg::half_t *>(params[0]), static_cast<const cg::half_t *>(params[1]), scale,
             static_cast<cg::half_t *>(params[3]), n / t, t);
    return cg::kOk;
  }
  return cg::kBadDType;
}
