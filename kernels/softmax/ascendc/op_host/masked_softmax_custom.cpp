// Host side of MaskedSoftmaxCustom (softmax(scores * scale - 10000 * (1 - mask)), FP32 math) and
// MaskedSoftmaxGradCustom (dx = scale * y * (dy - sum(dy * y))): operator definitions, shape /
// dtype inference and tiling. Inputs follow the CPU/GPU kernels' contract:
//   forward:  scores [B,N,S,T] FP16/FP32, mask [B|1, N|1, S, T] FP16/FP32, scale [1] FP32 → out
//   backward: y [..,T], dy [..,T] (one dtype, FP16/FP32), scale [1] FP32 → dx
// A whole row must fit in UB: T up to ~4096 at FP32 on a 192 KiB UB (CodeGeeX uses T ≤ 2048).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "masked_softmax_custom_tiling.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace optiling {
namespace {

constexpr uint64_t kRowAlign = 64;  // elements: 256 bytes of FP32, 128 of FP16
constexpr uint32_t kBufferNum = 2;

// forward: scores/mask/scale → out; backward: y/dy/scale → dx (no mask, any rank).
ge::graphStatus Tiling(gert::TilingContext *context, bool forward) {
  const auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
  const uint64_t cores = platform.GetCoreNumAiv();
  uint64_t ub_size = 0;
  platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub_size);
  if (cores == 0 || ub_size == 0) return ge::GRAPH_FAILED;

  const gert::Shape &shape = context->GetInputShape(0)->GetStorageShape();
  const size_t rank = shape.GetDimNum();
  if (rank < 1 || (forward && rank != 4)) return ge::GRAPH_FAILED;
  const uint64_t keys = shape.GetDim(rank - 1);
  if (keys == 0) return ge::GRAPH_FAILED;
  const uint64_t rows = shape.GetShapeSize() / keys;
  const uint64_t padded = (keys + kRowAlign - 1) / kRowAlign * kRowAlign;

  const uint32_t in0 = ge::GetSizeByDataType(context->GetInputDesc(0)->GetDataType());
  const uint32_t in1 = ge::GetSizeByDataType(context->GetInputDesc(1)->GetDataType());
  // Queues: input 0, input 1, output (dtype of input 0), double-buffered; row-sized FP32
  // temporaries (forward: logits, mask penalty / reduction scratch; backward: y, dy, dy*y,
  // reduction scratch); plus a 32-byte reduction result.
  const uint64_t temps = forward ? 2 : 4;
  const uint64_t need = padded * (kBufferNum * (2 * in0 + in1) + temps * sizeof(float)) + 32;
  if (need > ub_size * 7 / 8) return ge::GRAPH_FAILED;  // row too long for one UB pass

  MaskedSoftmaxTilingData tiling;
  if (forward) {
    const gert::Shape &mask = context->GetInputShape(1)->GetStorageShape();
    if (mask.GetDimNum() != 4 || mask.GetDim(2) != shape.GetDim(2) || mask.GetDim(3) != shape.GetDim(3)) {
      return ge::GRAPH_FAILED;
    }
    const int64_t mb = mask.GetDim(0), mh = mask.GetDim(1);
    if ((mb != 1 && mb != shape.GetDim(0)) || (mh != 1 && mh != shape.GetDim(1))) return ge::GRAPH_FAILED;
    tiling.set_heads(static_cast<uint32_t>(shape.GetDim(1)));
    tiling.set_queries(static_cast<uint32_t>(shape.GetDim(2)));
    tiling.set_maskBatch(static_cast<uint32_t>(mb));
    tiling.set_maskHeads(static_cast<uint32_t>(mh));
  }
  const uint64_t used_cores = std::max<uint64_t>(1, std::min<uint64_t>(cores, rows));
  const uint64_t per_core = (rows + used_cores - 1) / used_cores;
  tiling.set_rows(rows);
  tiling.set_rowsPerCore(per_core);
  tiling.set_keys(static_cast<uint32_t>(keys));
  tiling.set_keysPadded(static_cast<uint32_t>(padded));
  context->SetBlockDim(static_cast<uint32_t>((rows + per_core - 1) / per_core));
  tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
  context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());
  size_t *workspace = context->GetWorkspaceSizes(1);
  workspace[0] = platform.GetLibApiWorkSpaceSize();
  return ge::GRAPH_SUCCESS;
}

}  // namespace

static ge::graphStatus ForwardTiling(gert::TilingContext *context) { return Tiling(context, true); }
static ge::graphStatus BackwardTiling(gert::TilingContext *context) { return Tiling(context, false); }

}  // namespace optiling

namespace ge {

static graphStatus ShapeOfInput0(gert::InferShapeContext *context) {
  *context->GetOutputShape(0) = *context->GetInputShape(0);
  return GRAPH_SUCCESS;
}

static graphStatus DataTypeOfInput0(gert::InferDataTypeContext *context) {
  context->SetOutputDataType(0, context->GetInputDataType(0));
  return GRAPH_SUCCESS;
}

}  // namespace ge

namespace ops {

// SoCs: Ascend 910B / 910C (Atlas A2 / A3) only. The kernels move data with DataCopyPad, which
// Ascend 910 (910A, "ascend910") lacks; codegeex_ms/ops/fused.py checks the SoC at run time and
// uses MindSpore's built-in operators elsewhere. Keep this list equal to
// kernel_build.ASCEND_KERNEL_SOCS (tests/test_kernels_soc.py checks it).
class MaskedSoftmaxCustom : public OpDef {
 public:
  explicit MaskedSoftmaxCustom(const char *name) : OpDef(name) {
    const std::vector<ge::Format> nd(4, ge::FORMAT_ND);
    this->Input("scores").ParamType(REQUIRED)
        .DataType({ge::DT_FLOAT16, ge::DT_FLOAT16, ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
    this->Input("mask").ParamType(REQUIRED)
        .DataType({ge::DT_FLOAT16, ge::DT_FLOAT, ge::DT_FLOAT16, ge::DT_FLOAT}).Format(nd);
    this->Input("scale").ParamType(REQUIRED)
        .DataType({ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
    this->Output("out").ParamType(REQUIRED)
        .DataType({ge::DT_FLOAT16, ge::DT_FLOAT16, ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
    this->SetInferShape(ge::ShapeOfInput0).SetInferDataType(ge::DataTypeOfInput0);
    this->AICore().SetTiling(optiling::ForwardTiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};
OP_ADD(MaskedSoftmaxCustom);

class MaskedSoftmaxGradCustom : public OpDef {
 public:
  explicit MaskedSoftmaxGradCustom(const char *name) : OpDef(name) {
    const std::vector<ge::Format> nd(2, ge::FORMAT_ND);
    this->Input("y").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format(nd);
    this->Input("dy").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format(nd);
    this->Input("scale").ParamType(REQUIRED).DataType({ge::DT_FLOAT, ge::DT_FLOAT}).Format(nd);
    this->Output("dx").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format(nd);
    this->SetInferShape(ge::ShapeOfInput0).SetInferDataType(ge::DataTypeOfInput0);
    this->AICore().SetTiling(optiling::BackwardTiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};
OP_ADD(MaskedSoftmaxGradCustom);

}  // namespace ops
