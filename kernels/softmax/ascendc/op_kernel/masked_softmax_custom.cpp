// MaskedSoftmaxCustom kernel: per row of T scores (FP32 math, same operation order as the
// reference so that the logits are bit-identical to it):
//   x = float(s) * scale - (1 - float(m)) * 10000;  y = exp(x - max x) / sum exp(x - max x)
// Each vector core takes a contiguous range of rows; rows stream through UB double-buffered
// (copy-in of scores and mask row, compute, copy-out), one whole row per step.
#include "masked_softmax_common.h"

using namespace AscendC;
using namespace codegeex;

template <typename TS, typename TM>
class MaskedSoftmaxKernel {
 public:
  __aicore__ inline void Init(GM_ADDR scores, GM_ADDR mask, GM_ADDR scale, GM_ADDR out,
                              const RowTiling &tiling) {
    keys_ = tiling.keys;
    heads_ = tiling.heads;
    queries_ = tiling.queries;
    mask_batch_ = tiling.mask_batch;
    mask_heads_ = tiling.mask_heads;
    row_begin_ = tiling.rows_per_core * GetBlockIdx();
    row_end_ = row_begin_ + tiling.rows_per_core < tiling.rows ? row_begin_ + tiling.rows_per_core : tiling.rows;
    scores_.SetGlobalBuffer(reinterpret_cast<__gm__ TS *>(scores), tiling.rows * keys_);
    mask_.SetGlobalBuffer(reinterpret_cast<__gm__ TM *>(mask));
    out_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ TS *>(out), tiling.rows * keys_);
    GlobalTensor<float> scale_gm;
    scale_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(scale), 1);
    scale_ = scale_gm.GetValue(0);
    const uint32_t padded = tiling.keys_padded;
    pipe_.InitBuffer(in_scores_, kBufferNum, padded * sizeof(TS));
    pipe_.InitBuffer(in_mask_, kBufferNum, padded * sizeof(TM));
    pipe_.InitBuffer(out_, kBufferNum, padded * sizeof(TS));
    pipe_.InitBuffer(x_buf_, padded * sizeof(float));
    pipe_.InitBuffer(m_buf_, padded * sizeof(float));
    pipe_.InitBuffer(red_buf_, 32);
  }

  __aicore__ inline void Process() {
    for (uint64_t row = row_begin_; row < row_end_; ++row) {
      CopyIn(row);
      Compute();
      CopyOut(row);
    }
  }

 private:
  // Row of the mask that applies to scores row `row` = ((b * N) + n) * S + q.
  __aicore__ inline uint64_t MaskRow(uint64_t row) const {
    const uint64_t q = row % queries_;
    const uint64_t n = (row / queries_) % heads_;
    const uint64_t b = row / (static_cast<uint64_t>(queries_) * heads_);
    return ((mask_batch_ == 1 ? 0 : b) * mask_heads_ + (mask_heads_ == 1 ? 0 : n)) * queries_ + q;
  }

  __aicore__ inline void CopyIn(uint64_t row) {
    LocalTensor<TS> s = in_scores_.AllocTensor<TS>();
    LocalTensor<TM> m = in_mask_.AllocTensor<TM>();
    CopyInRow(s, scores_[row * keys_], keys_);
    CopyInRow(m, mask_[MaskRow(row) * keys_], keys_);
    in_scores_.EnQue(s);
    in_mask_.EnQue(m);
  }

  __aicore__ inline void Compute() {
    LocalTensor<TS> s = in_scores_.DeQue<TS>();
    LocalTensor<TM> m = in_mask_.DeQue<TM>();
    LocalTensor<float> x = x_buf_.Get<float>();
    LocalTensor<float> pen = m_buf_.Get<float>();  // the mask penalty, then reduction scratch
    LocalTensor<float> red = red_buf_.Get<float>();
    ToFloat(x, s, keys_);
    Muls(x, x, scale_, keys_);                 // float(s) * scale
    ToFloat(pen, m, keys_);
    Muls(pen, pen, -1.0f, keys_);
    Adds(pen, pen, 1.0f, keys_);               // 1 - m (exactly as 1 - m rounds)
    Muls(pen, pen, kMaskPenalty, keys_);       // (1 - m) * 10000
    Sub(x, x, pen, keys_);                     // the FP32 logits
    in_scores_.FreeTensor(s);
    in_mask_.FreeTensor(m);
    ReduceMax(red, x, pen, keys_, false);
    const float max_logit = ReadScalar(red);
    Adds(x, x, -max_logit, keys_);
    Exp(x, x, keys_);
    ReduceSum(red, x, pen, keys_);
    const float inv_sum = 1.0f / ReadScalar(red);
    Muls(x, x, inv_sum, keys_);
    LocalTensor<TS> o = out_.AllocTensor<TS>();
    FromFloat(o, x, keys_);
    out_.EnQue(o);
  }

  __aicore__ inline void CopyOut(uint64_t row) {
    LocalTensor<TS> o = out_.DeQue<TS>();
    CopyOutRow(out_gm_[row * keys_], o, keys_);
    out_.FreeTensor(o);
  }

  TPipe pipe_;
  TQue<QuePosition::VECIN, kBufferNum> in_scores_, in_mask_;
  TQue<QuePosition::VECOUT, kBufferNum> out_;
  TBuf<TPosition::VECCALC> x_buf_, m_buf_, red_buf_;
  GlobalTensor<TS> scores_, out_gm_;
  GlobalTensor<TM> mask_;
  float scale_;
  uint32_t keys_, heads_, queries_, mask_batch_, mask_heads_;
  uint64_t row_begin_, row_end_;
};

extern "C" __global__ __aicore__ void masked_softmax_custom(GM_ADDR scores, GM_ADDR mask, GM_ADDR scale, GM_ADDR out,
                                                            GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(tiling_data, tiling);
  MaskedSoftmaxKernel<DTYPE_SCORES, DTYPE_MASK> op;
  op.Init(scores, mask, scale, out, CODEGEEX_ROW_TILING(tiling_data));
  op.Process();
}
