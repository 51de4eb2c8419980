// Scale + additive mask + softmax over the last axis, forward and backward, for MindSpore's
// ops.Custom(func_type="aot") on GPU: the same contract and entry points as the CPU kernel
// (kernels/softmax/cpu/masked_softmax.cc), FP32 math for FP16 or FP32 tensors.
//
//   forward:  x_j = float(s_j) * scale - (1 - float(m_j)) * 10000   (rounded like the reference:
//             __fmul_rn/__fsub_rn keep nvcc from contracting it into an FMA)
//             y_j = exp(x_j - max x) / sum_k exp(x_k - max x)
//   backward: dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)
//
//   MaskedSoftmaxForward(scores [B,N,S,T], mask [Bm,Nm,S,T], scale [1] float32, out [B,N,S,T])
//   MaskedSoftmaxBackward(y [..,T], dy [..,T], scale [1] float32, dx [..,T])
//
// One thread block per row. The forward makes one pass keeping a running (max, sum) per thread
// (the sum rescaled whenever the max grows), merges the pairs across the block, then a second
// pass writes exp(x - max) / sum: two reads of the row, one write. A fully masked row has finite
// logits (scores - 10000), so it is never NaN.
#include <cfloat>

#include "cg_cuda_common.cuh"

namespace {

constexpr float kMaskPenalty = 10000.0f;
constexpr int64_t kMaxBlocks = 1 << 20;

struct Geometry {
  int64_t batch, heads, queries, keys;
  int64_t mask_batch, mask_heads;
};

template <typename TS, typename TM>
__device__ __forceinline__ float Logit(const TS *s, const TM *m, int64_t j, float scale) {
  const float scaled = __fmul_rn(cg::ToFloat(s[j]), scale);
  const float penalty = __fmul_rn(__fsub_rn(1.0f, cg::ToFloat(m[j])), kMaskPenalty);
  return __fsub_rn(scaled, penalty);
}

// Merge (m2, s2) into (m, s), both "sum of exp(x - m)" pairs; (-inf, 0) is the empty pair.
__device__ __forceinline__ void Merge(float &m, float &s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// (max, sum) over the block; every thread gets the result. `shared` holds >= 64 floats.
__device__ __forceinline__ void BlockMaxSum(float &m, float &s, float *shared) {
  for (int off = 16; off > 0; off >>= 1) {
    Merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) {
    shared[warp] = m;
    shared[32 + warp] = s;
  }
  __syncthreads();
  m = lane < warps ? shared[lane] : -INFINITY;
  s = lane < warps ? shared[32 + lane] : 0.0f;
  for (int off = 16; off > 0; off >>= 1) {
    Merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
  }
}

template <typename TS, typename TM>
__global__ void ForwardKernel(const TS *__restrict__ scores, const TM *__restrict__ mask,
                              const float *__restrict__ scale_ptr, TS *__restrict__ out, Geometry g) {
  __shared__ float shared[64];
  const float scale = *scale_ptr;
  const int64_t rows = g.batch * g.heads * g.queries, t = g.keys;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t b = r / (g.heads * g.queries), n = (r / g.queries) % g.heads, q = r % g.queries;
    const int64_t mrow = ((g.mask_batch == 1 ? 0 : b) * g.mask_heads + (g.mask_heads == 1 ? 0 : n)) * g.queries + q;
    const TS *s = scores + r * t;
    const TM *m = mask + mrow * t;
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t j = threadIdx.x; j < t; j += blockDim.x) {
      const float x = Logit(s, m, j, scale);
      if (x > mx) {
        sum = sum * expf(mx - x) + 1.0f;
        mx = x;
      } else {
        sum += expf(x - mx);
      }
    }
    BlockMaxSum(mx, sum, shared);
    const float inv = 1.0f / sum;
    TS *o = out + r * t;
    for (int64_t j = threadIdx.x; j < t; j += blockDim.x) {
      o[j] = cg::FromFloat<TS>(expf(Logit(s, m, j, scale) - mx) * inv);
    }
  }
}

template <typename T>
__global__ void BackwardKernel(const T *__restrict__ y, const T *__restrict__ dy, const float *__restrict__ scale_ptr,
                               T *__restrict__ dx, int64_t rows, int64_t t) {
  __shared__ float shared[32];
  const float scale = *scale_ptr;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *yr = y + r * t;
    const T *gr = dy + r * t;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < t; j += blockDim.x) dot += cg::ToFloat(gr[j]) * cg::ToFloat(yr[j]);
    dot = cg::BlockSum(dot, shared);
    T *o = dx + r * t;
    for (int64_t j = threadIdx.x; j < t; j += blockDim.x) {
      o[j] = cg::FromFloat<T>(scale * cg::ToFloat(yr[j]) * (cg::ToFloat(gr[j]) - dot));
    }
  }
}

// Threads per row: a multiple of 32, ~8 elements per thread, at most 256.
int ThreadsFor(int64_t t) {
  int64_t threads = (t + 7) / 8;
  threads = ((threads + 31) / 32) * 32;
  return static_cast<int>(threads < 32 ? 32 : (threads > 256 ? 256 : threads));
}

int BlocksFor(int64_t rows) { return static_cast<int>(rows < kMaxBlocks ? rows : kMaxBlocks); }

template <typename TS>
int LaunchForward(void **params, cg::DType mask_type, const Geometry &g, cudaStream_t stream) {
  const auto *scores = static_cast<const TS *>(params[0]);
  const auto *scale = static_cast<const float *>(params[2]);
  auto *out = static_cast<TS *>(params[3]);
  const int blocks = BlocksFor(g.batch * g.heads * g.queries), threads = ThreadsFor(g.keys);
  switch (mask_type) {
    case cg::DType::kF32:
      ForwardKernel<<<blocks, threads, 0, stream>>>(scores, static_cast<const float *>(params[1]), scale, out, g);
      return cg::LaunchStatus();
    case cg::DType::kF16:
      ForwardKernel<<<blocks, threads, 0, stream>>>(scores, static_cast<const __half *>(params[1]), scale, out, g);
      return cg::LaunchStatus();
    case cg::DType::kU8:
      ForwardKernel<<<blocks, threads, 0, stream>>>(scores, static_cast<const uint8_t *>(params[1]), scale, out, g);
      return cg::LaunchStatus();
    default:
      return cg::kBadDType;
  }
}

}  // namespace

extern "C" int MaskedSoftmaxForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
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
  const cg::DType score_type = cg::ParseDType(dtypes[0]);
  if (cg::ParseDType(dtypes[3]) != score_type) return cg::kBadDType;
  auto s = static_cast<cudaStream_t>(stream);
  const cg::DType mask_type = cg::ParseDType(dtypes[1]);
  if (score_type == cg::DType::kF32) return LaunchForward<float>(params, mask_type, g, s);
  if (score_type == cg::DType::kF16) return LaunchForward<__half>(params, mask_type, g, s);
  return cg::kBadDType;
}

extern "C" int MaskedSoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  (void)extra;
  if (nparam != 4) return cg::kBadArity;
  if (ndims[0] < 1) return cg::kBadShape;
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (cg::NumElements(ndims[1], shapes[1]) != n || cg::NumElements(ndims[3], shapes[3]) != n) return cg::kBadShape;
  if (n == 0) return cg::kOk;
  const int64_t t = shapes[0][ndims[0] - 1];
  if (cg::ParseDType(dtypes[2]) != cg::DType::kF32 || cg::NumElements(ndims[2], shapes[2]) != 1) return cg::kBadDType;
  const cg::DType type = cg::ParseDType(dtypes[0]);
  if (cg::ParseDType(dtypes[1]) != type || cg::ParseDType(dtypes[3]) != type) return cg::kBadDType;
  auto s = static_cast<cudaStream_t>(stream);
  const auto *scale = static_cast<const float *>(params[2]);
  const int blocks = BlocksFor(n / t), threads = ThreadsFor(t);
  if (type == cg::DType::kF32) {
    BackwardKernel<<<blocks, threads, 0, s>>>(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                                              scale, static_cast<float *>(params[3]), n / t, t);
    return cg::LaunchStatus();
  }
  if (type == cg::DType::kF16) {
    BackwardKernel<<<blocks, threads, 0, s>>>(static_cast<const __half *>(params[0]),
                                              static_cast<const __half *>(params[1]), scale,
                                              static_cast<__half *>(params[3]), n / t, t);
    return cg::LaunchStatus();
  }
  return cg::kBadDType;
}
