// Host side of FastGeluCustom (y = FastGELU(x)) and FastGeluGradCustom (dx = dy * FastGELU'(x)):
// operator definitions (inputs, dtypes FP16/FP32, SoCs), shape/dtype inference and tiling.
// Both operators share one tiling: the element range split evenly across the vector cores,
// tiles sized to the Unified Buffer for the number of FP32 temporaries the kernel keeps.
#include <algorithm>
#include <cstdint>

#include "fast_gelu_custom_tiling.h"
#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace optiling {
namespace {

constexpr uint64_t kAlign = 256;           // elements; keeps every core's start 32-byte aligned
constexpr uint64_t kMinPerCore = 8192;     // below this, fewer cores (launch cost dominates)
constexpr uint32_t kBufferNum = 2;         // double buffering of the in/out queues

// io_tensors: tensors moved through queues (inputs + outputs); fp32_temps: FP32 work buffers.
ge::graphStatus Tiling(gert::TilingContext *context, uint32_t io_tensors, uint32_t fp32_temps) {
  const auto platform = platform_ascendc::PlatformAscendC(context->GetPlatformInfo());
  const uint64_t cores = platform.GetCoreNumAiv();
  uint64_t ub_size = 0;
  platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub_size);
  if (cores == 0 || ub_size == 0) return ge::GRAPH_FAILED;

  const uint64_t total = context->GetInputShape(0)->GetStorageShape().GetShapeSize();
  const uint32_t type_size = ge::GetSizeByDataType(context->GetInputDesc(0)->GetDataType());
  const uint64_t bytes_per_elem = kBufferNum * io_tensors * type_size + fp32_temps * sizeof(float);
  uint64_t tile = (ub_size * 3 / 4) / bytes_per_elem;  // leave a quarter of UB for the runtime
  tile = std::max<uint64_t>(kAlign, tile / kAlign * kAlign);

  uint64_t used_cores = std::max<uint64_t>(1, std::min<uint64_t>(cores, total / kMinPerCore));
  uint64_t per_core = (total + used_cores - 1) / used_cores;
  per_core = (per_core + kAlign - 1) / kAlign * kAlign;
  used_cores = std::max<uint64_t>(1, (total + per_core - 1) / per_core);

  FastGeluTilingData tiling;
  tiling.set_totalLength(total);
  tiling.set_perCoreLength(per_core);
  tiling.set_tileLength(static_cast<uint32_t>(std::min<uint64_t>(tile, per_core)));
  context->SetBlockDim(static_cast<uint32_t>(used_cores));
  tiling.SaveToBuffer(context->GetRawTilingData()->GetData(), context->GetRawTilingData()->GetCapacity());
  context->GetRawTilingData()->SetDataSize(tiling.GetDataSize());
  size_t *workspace = context->GetWorkspaceSizes(1);
  workspace[0] = platform.GetLibApiWorkSpaceSize();
  return ge::GRAPH_SUCCESS;
}

}  // namespace

static ge::graphStatus ForwardTiling(gert::TilingContext *context) { return Tiling(context, 2, 3); }
static ge::graphStatus BackwardTiling(gert::TilingContext *context) { return Tiling(context, 3, 6); }

}  // namespace optiling

namespace ge {

static graphStatus SameShape(gert::InferShapeContext *context) {
  *context->GetOutputShape(0) = *context->GetInputShape(0);
  return GRAPH_SUCCESS;
}

static graphStatus SameDataType(gert::InferDataTypeContext *context) {
  context->SetOutputDataType(0, context->GetInputDataType(0));
  return GRAPH_SUCCESS;
}

}  // namespace ge

namespace ops {

// SoCs: Ascend 910B / 910C (Atlas A2 / A3) only. The kernels move data with DataCopyPad, which
// Ascend 910 (910A, "ascend910") lacks; codegeex_ms/ops/fused.py checks the SoC at run time and
// uses MindSpore's built-in operators elsewhere. Keep this list equal to
// kernel_build.ASCEND_KERNEL_SOCS (tests/test_kernels_soc.py checks it).
class FastGeluCustom : public OpDef {
 public:
  explicit FastGeluCustom(const char *name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
    this->Output("y").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
    this->SetInferShape(ge::SameShape).SetInferDataType(ge::SameDataType);
    this->AICore().SetTiling(optiling::ForwardTiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};
OP_ADD(FastGeluCustom);

class FastGeluGradCustom : public OpDef {
 public:
  explicit FastGeluGradCustom(const char *name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
    this->Input("dy").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
    this->Output("dx").ParamType(REQUIRED).DataType({ge::DT_FLOAT16, ge::DT_FLOAT}).Format({ge::FORMAT_ND, ge::FORMAT_ND});
    this->SetInferShape(ge::SameShape).SetInferDataType(ge::SameDataType);
    this->AICore().SetTiling(optiling::BackwardTiling).AddConfig("ascend910b").AddConfig("ascend910_93");
  }
};
OP_ADD(FastGeluGradCustom);

}  // namespace ops
