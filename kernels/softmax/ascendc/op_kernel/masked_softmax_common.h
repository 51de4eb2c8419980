// Shared part of the masked-softmax Ascend C kernels: row copies between GM and UB (DataCopyPad,
// so any T works), FP32 staging and a vector → scalar read of a reduction result.
#ifndef CODEGEEX_MASKED_SOFTMAX_COMMON_H_
#define CODEGEEX_MASKED_SOFTMAX_COMMON_H_

#include <type_traits>

#include "kernel_operator.h"

namespace codegeex {

using namespace AscendC;

constexpr int32_t kBufferNum = 2;
constexpr float kMaskPenalty = 10000.0f;

// The tiling fields the kernels use (copied out of the generated tiling struct).
struct RowTiling {
  uint64_t rows, rows_per_core;
  uint32_t keys, keys_padded, heads, queries, mask_batch, mask_heads;
};

#define CODEGEEX_ROW_TILING(t)                                                                          \
  codegeex::RowTiling {                                                                                  \
    (t).rows, (t).rowsPerCore, (t).keys, (t).keysPadded, (t).heads, (t).queries, (t).maskBatch, (t).maskHeads \
  }

template <typename T>
__aicore__ inline void CopyInRow(const LocalTensor<T> &dst, const GlobalTensor<T> &src, uint32_t count) {
  DataCopyExtParams copy{1, static_cast<uint32_t>(count * sizeof(T)), 0, 0, 0};
  DataCopyPadExtParams<T> pad{false, 0, 0, 0};
  DataCopyPad(dst, src, copy, pad);
}

template <typename T>
__aicore__ inline void CopyOutRow(const GlobalTensor<T> &dst, const LocalTensor<T> &src, uint32_t count) {
  DataCopyExtParams copy{1, static_cast<uint32_t>(count * sizeof(T)), 0, 0, 0};
  DataCopyPad(dst, src, copy);
}

// dst = float(src) (a cast for FP16, an exact copy for FP32).
template <typename T>
__aicore__ inline void ToFloat(const LocalTensor<float> &dst, const LocalTensor<T> &src, uint32_t count) {
  if constexpr (std::is_same<T, float>::value) {
    Muls(dst, src, 1.0f, count);
  } else {
    Cast(dst, src, RoundMode::CAST_NONE, count);
  }
}

// dst = T(src) (round-to-nearest-even for FP16, a copy for FP32).
template <typename T>
__aicore__ inline void FromFloat(const LocalTensor<T> &dst, const LocalTensor<float> &src, uint32_t count) {
  if constexpr (std::is_same<T, float>::value) {
    Muls(dst, src, 1.0f, count);
  } else {
    Cast(dst, src, RoundMode::CAST_RINT, count);
  }
}

// Element 0 of a tensor the vector unit just wrote, read by the scalar unit.
__aicore__ inline float ReadScalar(const LocalTensor<float> &t) {
  event_t v_to_s = static_cast<event_t>(GetTPipePtr()->FetchEventID(HardEvent::V_S));
  SetFlag<HardEvent::V_S>(v_to_s);
  WaitFlag<HardEvent::V_S>(v_to_s);
  return t.GetValue(0);
}

}  // namespace codegeex

#endif  // CODEGEEX_MASKED_SOFTMAX_COMMON_H_
