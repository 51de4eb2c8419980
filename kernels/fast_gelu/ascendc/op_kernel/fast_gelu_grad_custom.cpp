// FastGeluGradCustom kernel: dx = dy * (q / (1 + e) + 1.702 x e / (1 + e)^2) with
// e = exp(-1.702|x|), q = exp(0.851 (x - |x|)); FP32 math, tiles streamed as in the forward.
#include "fast_gelu_common.h"

using namespace AscendC;
using namespace codegeex;

template <typename T>
class FastGeluGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR dy, GM_ADDR dx, uint64_t total, uint64_t per_core, uint32_t tile) {
    range_ = RangeOfThisCore(total, per_core);
    tile_ = tile;
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(x) + range_.begin, range_.length);
    dy_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(dy) + range_.begin, range_.length);
    dx_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(dx) + range_.begin, range_.length);
    pipe_.InitBuffer(in_x_, kBufferNum, tile * sizeof(T));
    pipe_.InitBuffer(in_dy_, kBufferNum, tile * sizeof(T));
    pipe_.InitBuffer(out_, kBufferNum, tile * sizeof(T));
    pipe_.InitBuffer(t1_, tile * sizeof(float));
    pipe_.InitBuffer(t2_, tile * sizeof(float));
    pipe_.InitBuffer(t3_, tile * sizeof(float));
    pipe_.InitBuffer(t4_, tile * sizeof(float));
    pipe_.InitBuffer(xf_, tile * sizeof(float));
    pipe_.InitBuffer(gf_, tile * sizeof(float));
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < range_.length; done += tile_) {
      const uint32_t count = static_cast<uint32_t>(range_.length - done < tile_ ? range_.length - done : tile_);
      LocalTensor<T> xin = in_x_.AllocTensor<T>();
      LocalTensor<T> gin = in_dy_.AllocTensor<T>();
      CopyInTile(xin, x_[done], count);
      CopyInTile(gin, dy_[done], count);
      in_x_.EnQue(xin);
      in_dy_.EnQue(gin);
      Compute(count);
      LocalTensor<T> gout = out_.DeQue<T>();
      CopyOutTile(dx_[done], gout, count);
      out_.FreeTensor(gout);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t count) {
    LocalTensor<T> xin = in_x_.DeQue<T>();
    LocalTensor<T> gin = in_dy_.DeQue<T>();
    LocalTensor<float> x = AsFloat(xin, xf_.Get<float>(), count);
    LocalTensor<float> dy = AsFloat(gin, gf_.Get<float>(), count);
    LocalTensor<float> t1 = t1_.Get<float>();
    LocalTensor<float> t2 = t2_.Get<float>();
    LocalTensor<float> t3 = t3_.Get<float>();
    LocalTensor<float> t4 = t4_.Get<float>();
    Abs(t1, x, count);
    Sub(t3, x, t1, count);
    Muls(t3, t3, kHalfAlpha, count);
    Exp(t3, t3, count);                    // q
    Muls(t1, t1, -kAlpha, count);
    Exp(t1, t1, count);                    // e
    Adds(t2, t1, 1.0f, count);             // 1 + e
    Div(t4, t1, t2, count);                // e / (1 + e)
    Div(t1, x, t2, count);                 // x / (1 + e)
    Div(t3, t3, t2, count);                // sigmoid(1.702 x) = q / (1 + e)
    Mul(t1, t1, t4, count);                // x e / (1 + e)^2
    Muls(t1, t1, kAlpha, count);
    Add(t1, t1, t3, count);                // FastGELU'(x)
    Mul(t1, t1, dy, count);                // dx
    in_x_.FreeTensor(xin);
    in_dy_.FreeTensor(gin);
    LocalTensor<T> gout = out_.AllocTensor<T>();
    StoreFloat(gout, t1, count);
    out_.EnQue(gout);
  }

  TPipe pipe_;
  TQue<QuePosition::VECIN, kBufferNum> in_x_, in_dy_;
  TQue<QuePosition::VECOUT, kBufferNum> out_;
  TBuf<TPosition::VECCALC> t1_, t2_, t3_, t4_, xf_, gf_;
  GlobalTensor<T> x_, dy_, dx_;
  CoreRange range_;
  uint32_t tile_;
};

extern "C" __global__ __aicore__ void fast_gelu_grad_custom(GM_ADDR x, GM_ADDR dy, GM_ADDR dx, GM_ADDR workspace,
                                                            GM_ADDR tiling) {
  GET_TILING_DATA(tiling_data, tiling);
  FastGeluGradKernel<DTYPE_X> op;
  op.Init(x, dy, dx, tiling_data.totalLength, tiling_data.perCoreLength, tiling_data.tileLength);
  op.Process();
}
