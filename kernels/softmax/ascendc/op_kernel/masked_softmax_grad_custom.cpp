// MaskedSoftmaxGradCustom kernel: per row, dx = scale * y * (dy - sum(dy * y)), FP32 math.
// Rows split across vector cores and streamed through UB as in the forward kernel.
#include "masked_softmax_common.h"

using namespace AscendC;
using namespace codegeex;

template <typename T>
class MaskedSoftmaxGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR y, GM_ADDR dy, GM_ADDR scale, GM_ADDR dx, const RowTiling &tiling) {
    keys_ = tiling.keys;
    row_begin_ = tiling.rows_per_core * GetBlockIdx();
    row_end_ = row_begin_ + tiling.rows_per_core < tiling.rows ? row_begin_ + tiling.rows_per_core : tiling.rows;
    y_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(y), tiling.rows * keys_);
    dy_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(dy), tiling.rows * keys_);
    dx_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(dx), tiling.rows * keys_);
    GlobalTensor<float> scale_gm;
    scale_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(scale), 1);
    scale_ = scale_gm.GetValue(0);
    const uint32_t padded = tiling.keys_padded;
    pipe_.InitBuffer(in_y_, kBufferNum, padded * sizeof(T));
    pipe_.InitBuffer(in_dy_, kBufferNum, padded * sizeof(T));
    pipe_.InitBuffer(out_, kBufferNum, padded * sizeof(T));
    pipe_.InitBuffer(yf_buf_, padded * sizeof(float));
    pipe_.InitBuffer(gf_buf_, padded * sizeof(float));
    pipe_.InitBuffer(prod_buf_, padded * sizeof(float));
    pipe_.InitBuffer(work_buf_, padded * sizeof(float));
    pipe_.InitBuffer(red_buf_, 32);
  }

  __aicore__ inline void Process() {
    for (uint64_t row = row_begin_; row < row_end_; ++row) {
      LocalTensor<T> y = in_y_.AllocTensor<T>();
      LocalTensor<T> g = in_dy_.AllocTensor<T>();
      CopyInRow(y, y_[row * keys_], keys_);
      CopyInRow(g, dy_[row * keys_], keys_);
      in_y_.EnQue(y);
      in_dy_.EnQue(g);
      Compute();
      LocalTensor<T> o = out_.DeQue<T>();
      CopyOutRow(dx_[row * keys_], o, keys_);
      out_.FreeTensor(o);
    }
  }

 private:
  __aicore__ inline void Compute() {
    LocalTensor<T> y = in_y_.DeQue<T>();
    LocalTensor<T> g = in_dy_.DeQue<T>();
    LocalTensor<float> yf = yf_buf_.Get<float>();
    LocalTensor<float> gf = gf_buf_.Get<float>();
    LocalTensor<float> prod = prod_buf_.Get<float>();
    LocalTensor<float> work = work_buf_.Get<float>();
    LocalTensor<float> red = red_buf_.Get<float>();
    ToFloat(yf, y, keys_);
    ToFloat(gf, g, keys_);
    in_y_.FreeTensor(y);
    in_dy_.FreeTensor(g);
    Mul(prod, gf, yf, keys_);
    ReduceSum(red, prod, work, keys_);         // sum(dy * y)
    const float dot = ReadScalar(red);
    Adds(gf, gf, -dot, keys_);                 // dy - dot
    Mul(gf, gf, yf, keys_);
    Muls(gf, gf, scale_, keys_);
    LocalTensor<T> o = out_.AllocTensor<T>();
    FromFloat(o, gf, keys_);
    out_.EnQue(o);
  }

  TPipe pipe_;
  TQue<QuePosition::VECIN, kBufferNum> in_y_, in_dy_;
  TQue<QuePosition::VECOUT, kBufferNum> out_;
  TBuf<TPosition::VECCALC> yf_buf_, gf_buf_, prod_buf_, work_buf_, red_buf_;
  GlobalTensor<T> y_, dy_, dx_;
  float scale_;
  uint32_t keys_;
  uint64_t row_begin_, row_end_;
};

extern "C" __global__ __aicore__ void masked_softmax_grad_custom(GM_ADDR y, GM_ADDR dy, GM_ADDR scale, GM_ADDR dx,
                                                                 GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(tiling_data, tiling);
  MaskedSoftmaxGradKernel<DTYPE_Y> op;
  op.Init(y, dy, scale, dx, CODEGEEX_ROW_TILING(tiling_data));
  op.Process();
}
