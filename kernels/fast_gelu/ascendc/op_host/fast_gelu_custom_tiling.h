// Tiling of FastGeluCustom / FastGeluGradCustom: a 1-D element range split across vector cores,
// each core's range cut in tiles that fit the Unified Buffer (UB).
#ifndef CODEGEEX_FAST_GELU_CUSTOM_TILING_H_
#define CODEGEEX_FAST_GELU_CUSTOM_TILING_H_

#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(FastGeluTilingData)
TILING_DATA_FIELD_DEF(uint64_t, totalLength);    // elements in the tensor
TILING_DATA_FIELD_DEF(uint64_t, perCoreLength);  // elements per core (a multiple of 256; the last core gets the rest)
TILING_DATA_FIELD_DEF(uint32_t, tileLength);     // elements per UB tile (a multiple of 256)
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(FastGeluCustom, FastGeluTilingData)
REGISTER_TILING_DATA_CLASS(FastGeluGradCustom, FastGeluTilingData)
}  // namespace optiling

#endif  // CODEGEEX_FAST_GELU_CUSTOM_TILING_H_
