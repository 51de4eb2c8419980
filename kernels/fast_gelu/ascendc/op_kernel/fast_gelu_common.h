// Shared part of the FastGELU Ascend C kernels: per-core element range, queues and the FP32
// staging of FP16 inputs. FastGELU itself is evaluated with the overflow-free form of the
// CodeGeeX reference (section 1):
//   e = exp(-1.702 |x|),  q = exp(0.851 (x - |x|))   (q = 1 for x >= 0, e for x < 0)
//   y = x / (1 + e) * q,  FastGELU'(x) = q / (1 + e) + 1.702 x e / (1 + e)^2
#ifndef CODEGEEX_FAST_GELU_COMMON_H_
#define CODEGEEX_FAST_GELU_COMMON_H_

#include <type_traits>

#include "kernel_operator.h"

namespace codegeex {

using namespace AscendC;

constexpr int32_t kBufferNum = 2;
constexpr float kAlpha = 1.702f;
constexpr float kHalfAlpha = 0.851f;

// The [begin, begin + length) range of this core, from the tiling's per-core length.
struct CoreRange {
  uint64_t begin;
  uint64_t length;
};

__aicore__ inline CoreRange RangeOfThisCore(uint64_t total, uint64_t per_core) {
  const uint64_t begin = per_core * GetBlockIdx();
  const uint64_t length = begin >= total ? 0 : (total - begin < per_core ? total - begin : per_core);
  return {begin, length};
}

template <typename T>
__aicore__ inline void CopyInTile(const LocalTensor<T> &dst, const GlobalTensor<T> &src, uint32_t count) {
  DataCopyExtParams copy{1, static_cast<uint32_t>(count * sizeof(T)), 0, 0, 0};
  DataCopyPadExtParams<T> pad{false, 0, 0, 0};
  DataCopyPad(dst, src, copy, pad);
}

template <typename T>
__aicore__ inline void CopyOutTile(const GlobalTensor<T> &dst, const LocalTensor<T> &src, uint32_t count) {
  DataCopyExtParams copy{1, static_cast<uint32_t>(count * sizeof(T)), 0, 0, 0};
  DataCopyPad(dst, src, copy);
}

// FP32 view of an input tile: the tile itself for float, else its cast into `staging`.
template <typename T>
__aicore__ inline LocalTensor<float> AsFloat(const LocalTensor<T> &tile, const LocalTensor<float> &staging,
                                             uint32_t count) {
  if constexpr (std::is_same<T, float>::value) {
    return tile;
  } else {
    Cast(staging, tile, RoundMode::CAST_NONE, count);
    return staging;
  }
}

// Write an FP32 result into an output tile (a copy for float, round-to-nearest-even for half).
template <typename T>
__aicore__ inline void StoreFloat(const LocalTensor<T> &tile, const LocalTensor<float> &value, uint32_t count) {
  if constexpr (std::is_same<T, float>::value) {
    Muls(tile, value, 1.0f, count);  // an exact copy (keeps -0)
  } else {
    Cast(tile, value, RoundMode::CAST_RINT, count);
  }
}

}  // namespace codegeex

#endif  // CODEGEEX_FAST_GELU_COMMON_H_
