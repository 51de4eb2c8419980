// Shared helpers of the CUDA aot kernels: dtype parsing, FP16/uint8 <-> FP32 loads and stores,
// block reductions. Built with nvcc -O3 (no --use_fast_math: expf is the accurate libdevice one).
#ifndef CODEGEEX_KERNELS_CG_CUDA_COMMON_CUH_
#define CODEGEEX_KERNELS_CG_CUDA_COMMON_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace cg {

enum class DType { kF32, kF16, kU8, kUnsupported };

inline DType ParseDType(const char *name) {
  if (std::strcmp(name, "float32") == 0 || std::strcmp(name, "float") == 0) return DType::kF32;
  if (std::strcmp(name, "float16") == 0) return DType::kF16;
  if (std::strcmp(name, "uint8") == 0 || std::strcmp(name, "bool") == 0) return DType::kU8;
  return DType::kUnsupported;
}

inline int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// Error codes returned to MindSpore (0 = success); kLaunchFailed carries a CUDA launch error.
constexpr int kOk = 0;
constexpr int kBadArity = 1;
constexpr int kBadDType = 2;
constexpr int kBadShape = 3;
constexpr int kLaunchFailed = 4;

inline int LaunchStatus() { return cudaGetLastError() == cudaSuccess ? kOk : kLaunchFailed; }

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(uint8_t v) { return static_cast<float>(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

// Sum over the block; every thread gets the result. `shared` holds >= 32 floats.
__device__ __forceinline__ float BlockSum(float v, float *shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace cg

// Host-side probe, called by the Python loader before it hands this library to MindSpore: 0 if a
// GPU can be used with the CUDA runtime linked in here, else the cudaError_t (35: no driver, or
// one older than this runtime; 100: no device). Each kernel library is built from one .cu file, so
// this definition appears once per library.
extern "C" int CodegeexCudaProbe() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return static_cast<int>(err);
  return count > 0 ? 0 : static_cast<int>(cudaErrorNoDevice);
}

#endif  // CODEGEEX_KERNELS_CG_CUDA_COMMON_CUH_
