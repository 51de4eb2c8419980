// FastGeluCustom kernel: y = x / (1 + exp(-1.702|x|)) * exp(0.851 (x - |x|)), FP32 math.
// Each vector core streams its element range through UB in tiles: copy-in, compute, copy-out,
// double-buffered so that the MTE2/vector/MTE3 pipes overlap.
#include "fast_gelu_common.h"

using namespace AscendC;
using namespace codegeex;

template <typename T>
class FastGeluKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR y, uint64_t total, uint64_t per_core, uint32_t tile) {
    range_ = RangeOfThisCore(total, per_core);
    tile_ = tile;
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(x) + range_.begin, range_.length);
    y_.SetGlobalBuffer(reinterpret_cast<__gm__ T *>(y) + range_.begin, range_.length);
    pipe_.InitBuffer(in_, kBufferNum, tile * sizeof(T));
    pipe_.InitBuffer(out_, kBufferNum, tile * sizeof(T));
    pipe_.InitBuffer(t1_, tile * sizeof(float));
    pipe_.InitBuffer(t2_, tile * sizeof(float));
    pipe_.InitBuffer(t3_, tile * sizeof(float));
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < range_.length; done += tile_) {
      const uint32_t count = static_cast<uint32_t>(range_.length - done < tile_ ? range_.length - done : tile_);
      LocalTensor<T> xin = in_.AllocTensor<T>();
      CopyInTile(xin, x_[done], count);
      in_.EnQue(xin);
      Compute(count);
      LocalTensor<T> yout = out_.DeQue<T>();
      CopyOutTile(y_[done], yout, count);
      out_.FreeTensor(yout);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t count) {
    LocalTensor<T> xin = in_.DeQue<T>();
    LocalTensor<float> abs = t1_.Get<float>();
    LocalTensor<float> ratio = t2_.Get<float>();
    LocalTensor<float> q = t3_.Get<float>();
    // For FP16 the FP32 copy of x lives in `ratio` until x / (1 + e) overwrites it below.
    LocalTensor<float> x = AsFloat(xin, ratio, count);
    Abs(abs, x, count);
    Sub(q, x, abs, count);                 // x - |x|
    Muls(q, q, kHalfAlpha, count);
    Exp(q, q, count);                      // q
    Muls(abs, abs, -kAlpha, count);
    Exp(abs, abs, count);                  // e
    Adds(abs, abs, 1.0f, count);           // 1 + e
    Div(ratio, x, abs, count);             // x / (1 + e)
    Mul(ratio, ratio, q, count);           // y
    in_.FreeTensor(xin);
    LocalTensor<T> yout = out_.AllocTensor<T>();
    StoreFloat(yout, ratio, count);
    out_.EnQue(yout);
  }

  TPipe pipe_;
  TQue<QuePosition::VECIN, kBufferNum> in_;
  TQue<QuePosition::VECOUT, kBufferNum> out_;
  TBuf<TPosition::VECCALC> t1_, t2_, t3_;
  GlobalTensor<T> x_, y_;
  CoreRange range_;
  uint32_t tile_;
};

extern "C" __global__ __aicore__ void fast_gelu_custom(GM_ADDR x, GM_ADDR y, GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(tiling_data, tiling);
  FastGeluKernel<DTYPE_X> op;
  op.Init(x, y, tiling_data.totalLength, tiling_data.perCoreLength, tiling_data.tileLength);
  op.Process();
}
