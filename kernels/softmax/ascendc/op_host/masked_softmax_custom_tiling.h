// Tiling of MaskedSoftmaxCustom / MaskedSoftmaxGradCustom: rows of T scores split across vector
// cores in contiguous ranges; each row is processed whole in the Unified Buffer (UB).
#ifndef CODEGEEX_MASKED_SOFTMAX_CUSTOM_TILING_H_
#define CODEGEEX_MASKED_SOFTMAX_CUSTOM_TILING_H_

#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(MaskedSoftmaxTilingData)
TILING_DATA_FIELD_DEF(uint64_t, rows);         // B * N * S
TILING_DATA_FIELD_DEF(uint64_t, rowsPerCore);  // contiguous rows per core (the last core gets the rest)
TILING_DATA_FIELD_DEF(uint32_t, keys);         // T, the softmax axis
TILING_DATA_FIELD_DEF(uint32_t, keysPadded);   // T rounded up to 64 elements (UB row stride)
TILING_DATA_FIELD_DEF(uint32_t, heads);        // N (forward only)
TILING_DATA_FIELD_DEF(uint32_t, queries);      // S (forward only)
TILING_DATA_FIELD_DEF(uint32_t, maskBatch);    // Bm in {1, B} (forward only)
TILING_DATA_FIELD_DEF(uint32_t, maskHeads);    // Nm in {1, N} (forward only)
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(MaskedSoftmaxCustom, MaskedSoftmaxTilingData)
REGISTER_TILING_DATA_CLASS(MaskedSoftmaxGradCustom, MaskedSoftmaxTilingData)
}  // namespace optiling

#endif  // CODEGEEX_MASKED_SOFTMAX_CUSTOM_TILING_H_
