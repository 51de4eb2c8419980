// Scale + additive mask + softmax over the last axis, forward and backward, for MindSpore's
// ops.Custom(func_type="aot") on CPU. FP32 math for FP16 or FP32 tensors.
//
// Forward, per row of T scores (same operation order as the composed reference, so that the
// logits are bit-identical to it):
//   x_j = float(s_j) * scale - (1 - float(m_j)) * 10000
//   y_j = exp(x_j - max_k x_k) / sum_k exp(x_k - max_k x_k)
// A fully blocked row is every score minus 10000: its max-shifted exponentials are those of the
// unmasked row, so it stays finite (never NaN), as in the reference formula.
// Rows are visited by blocks of queries, then head, so that each mask row is read once for all
// heads.
// Backward (y = the forward output, dy = the incoming gradient):
//   dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)
//
// Entry points (inputs then outputs):
//   MaskedSoftmaxForward(scores [B,N,S,T], mask [Bm,Nm,S,T], scale [1] float32, out [B,N,S,T])
//     scores/out: float32 or float16 (same dtype); mask: float32, float16, uint8 or bool, with
//     Bm in {1, B} and Nm in {1, N} (broadcast over batch / heads).
//   MaskedSoftmaxBackward(y [..,T], dy [..,T], scale [1] float32, dx [..,T])
//     y/dy/dx: one dtype, float32 or float16.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cg_cpu_common.h"

namespace {

constexpr float kMaskPenalty = 10000.0f;
constexpr int64_t kMinElemsPerThread = 32768;  // ~30 us of work per thread
constexpr int64_t kPenaltyBlockBytes = 256 << 10;  // mask penalties kept per query block (in L2)

struct Geometry {
  int64_t batch, heads, queries, keys;  // B, N, S, T of the scores
  int64_t mask_batch, mask_heads;       // Bm, Nm of the mask
};

// pen_j = (1 - float(m_j)) * 10000 for one mask row (FP16 masks staged through `pen` itself).
template <typename TM>
inline void PenaltyRow(const TM *m, float *pen, int64_t t) {
  const float *mf = cg::AsFloat(m, pen, t);
#pragma omp simd
  for (int64_t j = 0; j < t; ++j) pen[j] = (1.0f - mf[j]) * kMaskPenalty;
}

// x_j = float(s_j) * scale - pen_j, then exp(x_j - max) in place; returns the row sum. While
// the exponentials are computed (no memory traffic of their own), the next row to be read is
// prefetched, so that loading it overlaps this row's arithmetic.
template <typename TS>
inline float ExpRow(const TS *s, const float *pen, float scale, float *x, int64_t t, const TS *next) {
  const float *sf = cg::AsFloat(s, x, t);  // FP16 scores are converted into x first
  float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < t; ++j) {
    const float v = sf[j] * scale - pen[j];
    x[j] = v;
    mx = v > mx ? v : mx;
  }
  constexpr int64_t kChunk = 512;
  constexpr int64_t kLine = 64 / sizeof(TS);  // elements of the next row per cache line
  float sum = 0.0f;
  for (int64_t j0 = 0; j0 < t; j0 += kChunk) {
    const int64_t j1 = j0 + kChunk < t ? j0 + kChunk : t;
    if (next != nullptr) {
      for (int64_t j = j0; j < j1; j += kLine) __builtin_prefetch(next + j, 0, 3);
    }
#pragma omp simd reduction(+ : sum)
    for (int64_t j = j0; j < j1; ++j) {
      const float e = cg::ExpNonPositive(x[j] - mx);
      x[j] = e;
      sum += e;
    }
  }
  return sum;
}

// Rows of the (batch, query-block) units [u0, u1). A unit is `block` consecutive queries of one
// batch row: their mask rows are turned into penalties once (kept in L2) and used for all N
// heads, each head's rows being one contiguous stretch of the scores. So the mask is read from
// memory once, not N times, and the scores and output stream sequentially.
template <typename TS, typename TM>
void ForwardUnits(const TS *scores, const TM *mask, float scale, TS *out, const Geometry &g, int64_t block,
                  int64_t u0, int64_t u1) {
  const int64_t t = g.keys;
  const int64_t blocks_per_batch = (g.queries + block - 1) / block;
  const bool shared_mask = g.mask_heads == 1;
  float *x = cg::Scratch(static_cast<size_t>((shared_mask ? block : 1) * t + t));
  float *pens = x + t;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t b = u / blocks_per_batch, q0 = (u % blocks_per_batch) * block;
    const int64_t q1 = std::min(g.queries, q0 + block);
    const int64_t mb = g.mask_batch == 1 ? 0 : b;
    if (shared_mask) {
      for (int64_t q = q0; q < q1; ++q) PenaltyRow(mask + (mb * g.queries + q) * t, pens + (q - q0) * t, t);
    }
    for (int64_t n = 0; n < g.heads; ++n) {
      for (int64_t q = q0; q < q1; ++q) {
        float *pen = pens;
        if (shared_mask) {
          pen += (q - q0) * t;
        } else {
          PenaltyRow(mask + ((mb * g.mask_heads + n) * g.queries + q) * t, pen, t);
        }
        const int64_t r = (b * g.heads + n) * g.queries + q;
        const TS *next = q + 1 < q1              ? scores + (r + 1) * t
                         : n + 1 < g.heads       ? scores + ((b * g.heads + n + 1) * g.queries + q0) * t
                                                 : nullptr;  // the next unit starts after its penalties
        const float inv = 1.0f / ExpRow(scores + r * t, pen, scale, x, t, next);
        TS *o = out + r * t;
        if constexpr (std::is_same_v<TS, float>) {
#pragma omp simd
          for (int64_t j = 0; j < t; ++j) o[j] = x[j] * inv;
        } else {
#pragma omp simd
          for (int64_t j = 0; j < t; ++j) x[j] *= inv;
          cg::FloatToHalf(x, o, t);
        }
      }
    }
  }
}

template <typename T>
void BackwardRows(const T *y, const T *dy, float scale, T *dx, int64_t t, int64_t r0, int64_t r1) {
  float *ybuf = cg::Scratch(static_cast<size_t>(2 * t));
  float *gbuf = ybuf + t;
  for (int64_t r = r0; r < r1; ++r) {
    const float *yr = cg::AsFloat(y + r * t, ybuf, t);
    const float *gr = cg::AsFloat(dy + r * t, gbuf, t);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < t; ++j) dot += gr[j] * yr[j];
    T *o = dx + r * t;
    if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
      for (int64_t j = 0; j < t; ++j) o[j] = scale * yr[j] * (gr[j] - dot);
    } else {  // gbuf holds the FP32 copy of dy: overwritten element by element after its own use
#pragma omp simd
      for (int64_t j = 0; j < t; ++j) gbuf[j] = scale * yr[j] * (gr[j] - dot);
      cg::FloatToHalf(gbuf, o, t);
    }
  }
}

template <typename TS, typename TM>
void Forward(const TS *scores, const TM *mask, float scale, TS *out, const Geometry &g) {
  const int64_t block = std::max<int64_t>(1, kPenaltyBlockBytes / (g.keys * static_cast<int64_t>(sizeof(float))));
  const int64_t units = g.batch * ((g.queries + block - 1) / block);
  const int64_t unit_elems = std::min(block, g.queries) * g.heads * g.keys;
  const int64_t min_units = std::max<int64_t>(1, kMinElemsPerThread / unit_elems);
  cg::ParallelFor(units, min_units, [&](int64_t u0, int64_t u1) {
    ForwardUnits(scores, mask, scale, out, g, block, u0, u1);
  });
}

template <typename T>
void Backward(const T *y, const T *dy, float scale, T *dx, int64_t rows, int64_t t) {
  const int64_t min_rows = std::max<int64_t>(1, kMinElemsPerThread / t);
  cg::ParallelFor(rows, min_rows, [&](int64_t r0, int64_t r1) { BackwardRows(y, dy, scale, dx, t, r0, r1); });
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
