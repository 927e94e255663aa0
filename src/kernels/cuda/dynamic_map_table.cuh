// An 8-bit dynamic map of kbit/quant/codebooks.h on its way into a kernel: passed by value as a
// kernel parameter (1 KiB), then copied into shared memory, where the code search's
// data-dependent reads are fast. Used by the 8-bit blockwise quantizers and the 8-bit optimizers.
#pragma once

#include "kbit/quant/codebooks.h"

namespace kbit::kernels::cuda {

struct DynamicMapTable {
  float values[256];
};

inline DynamicMapTable make_map_table(quant::DynamicMap map) {
  const auto& values =
      map == quant::DynamicMap::kSigned ? quant::kDynamicSignedMap : quant::kDynamicUnsignedMap;
  DynamicMapTable table{};
  for (int k = 0; k < 256; ++k) table.values[k] = values[k];
  return table;
}

// Copies the map into shared_map [256]; every thread of the block must call it.
__device__ __forceinline__ void load_map(const DynamicMapTable& table, float* shared_map) {
  for (int k = static_cast<int>(threadIdx.x); k < 256; k += static_cast<int>(blockDim.x)) {
    shared_map[k] = table.values[k];
  }
  __syncthreads();
}

}  // namespace kbit::kernels::cuda
