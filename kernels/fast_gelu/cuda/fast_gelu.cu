// FastGELU forward and backward for MindSpore's ops.Custom(func_type="aot") on GPU: the same
// formulas and entry points as the CPU kernel (kernels/fast_gelu/cpu/fast_gelu.cc):
//   y  = x * sigmoid(1.702 x),  dx = dy * (sigmoid + 1.702 x sigmoid (1 - sigmoid))
// with e = exp(-1.702 |x|) so that nothing overflows; FP32 math for FP32 and FP16 tensors.
//
//   FastGeluForward(x, y)          FastGeluBackward(x, dy, dx)
// Grid-stride loops, one element per thread per step, launched on MindSpore's stream.
#include "cg_cuda_common.cuh"

namespace {

constexpr float kAlpha = 1.702f;
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

__device__ __forceinline__ float GeluValue(float x) {
  const float e = expf(-kAlpha * fabsf(x));
  const float d = 1.0f / (1.0f + e);
  return x >= 0.0f ? x * d : x * e * d;
}

__device__ __forceinline__ float GeluSlope(float x) {
  const float e = expf(-kAlpha * fabsf(x));
  const float d = 1.0f / (1.0f + e);
  const float sig = x >= 0.0f ? d : e * d;
  return sig + kAlpha * x * (e * d * d);
}

template <typename T>
__global__ void ForwardKernel(const T *__restrict__ x, T *__restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = cg::FromFloat<T>(GeluValue(cg::ToFloat(x[i])));
  }
}

template <typename T>
__global__ void BackwardKernel(const T *__restrict__ x, const T *__restrict__ dy, T *__restrict__ dx, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dx[i] = cg::FromFloat<T>(cg::ToFloat(dy[i]) * GeluSlope(cg::ToFloat(x[i])));
  }
}

int Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

bool SameLayout(int count, int *ndims, int64_t **shapes, const char **dtypes) {
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  for (int i = 1; i < count; ++i) {
    if (cg::NumElements(ndims[i], shapes[i]) != n) return false;
    if (cg::ParseDType(dtypes[i]) != cg::ParseDType(dtypes[0])) return false;
  }
  return true;
}

}  // namespace

extern "C" int FastGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  (void)extra;
  if (nparam != 2) return cg::kBadArity;
  if (!SameLayout(2, ndims, shapes, dtypes)) return cg::kBadShape;
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (n == 0) return cg::kOk;
  auto s = static_cast<cudaStream_t>(stream);
  switch (cg::ParseDType(dtypes[0])) {
    case cg::DType::kF32:
      ForwardKernel<<<Blocks(n), kThreads, 0, s>>>(static_cast<const float *>(params[0]),
                                                    static_cast<float *>(params[1]), n);
      return cg::LaunchStatus();
    case cg::DType::kF16:
      ForwardKernel<<<Blocks(n), kThreads, 0, s>>>(static_cast<const __half *>(params[0]),
                                                    static_cast<__half *>(params[1]), n);
      return cg::LaunchStatus();
    default:
      return cg::kBadDType;
  }
}

extern "C" int FastGeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  (void)extra;
  if (nparam != 3) return cg::kBadArity;
  if (!SameLayout(3, ndims, shapes, dtypes)) return cg::kBadShape;
  const int64_t n = cg::NumElements(ndims[0], shapes[0]);
  if (n == 0) return cg::kOk;
  auto s = static_cast<cudaStream_t>(stream);
  switch (cg::ParseDType(dtypes[0])) {
    case cg::DType::kF32:
      BackwardKernel<<<Blocks(n), kThreads, 0, s>>>(static_cast<const float *>(params[0]),
                                                     static_cast<const float *>(params[1]),
                                                     static_cast<float *>(params[2]), n);
      return cg::LaunchStatus();
    case cg::DType::kF16:
      BackwardKernel<<<Blocks(n), kThreads, 0, s>>>(static_cast<const __half *>(params[0]),
                                                     static_cast<const __half *>(params[1]),
                                                     static_cast<__half *>(params[2]), n);
      return cg::LaunchStatus();
    default:
      return cg::kBadDType;
  }
}
