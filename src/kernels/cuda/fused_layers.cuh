// What the fused GEMVs of several layers of one input share (linear_4bit_layers,
// linear_int8_layers): the check of a group's shape, and how a block finds its layer.
#pragma once

#include <cuda_runtime_api.h>

#include <span>
#include <string>

#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"

namespace kbit::kernels::cuda {

// kInvalidArgument, naming `caller`, unless there are 1 to kMaxFusedLayers layers and, with
// kSiluMul, two (gate, up) of equal out. Layer is FourBitLayer or Int8Layer.
template <typename Layer>
Status check_fused_layer_group(const char* caller, std::span<const Layer> layers,
                               LinearEpilogue epilogue) {
  if (layers.empty() || layers.size() > kMaxFusedLayers) {
    return invalid_argument(std::string(caller) + ": takes 1 to " +
                            std::to_string(kMaxFusedLayers) + " layers, not " +
                            std::to_string(layers.size()));
  }
  if (epilogue == LinearEpilogue::kSiluMul &&
      (layers.size() != 2 || layers[0].out != layers[1].out)) {
    return invalid_argument(std::string(caller) +
                            ": the SiLU·mul epilogue takes two layers (gate, up) of equal outputs");
  }
  return ok_status();
}

// The layer of this block where layer i of `count` owns blocks [end_block[i − 1], end_block[i])
// (end_block[−1] = 0), and the first block it owns.
struct BlockLayer {
  int layer;
  int first_block;
};
__device__ __forceinline__ BlockLayer block_layer(const int* end_block, int count) {
  int layer = 0;
  while (layer + 1 < count && static_cast<int>(blockIdx.x) >= end_block[layer]) ++layer;
  return {layer, layer == 0 ? 0 : end_block[layer - 1]};
}

}  // namespace kbit::kernels::cuda
