// What the fused GEMVs of several layers of one input share (linear_float_layers,
// linear_4bit_layers, linear_int8_layers): the check of a group's shape, the fallback of one call
// per layer, the grid, and, in CUDA code, how a block finds its layer.
#pragma once

#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>
#include <span>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_launchers.h"

namespace kbit::kernels::cuda {

// kInvalidArgument, naming `caller`, unless there are 1 to kMaxFusedLayers layers and, with
// kSiluMul, two (gate, up) of equal out. Layer is FloatLayer, FourBitLayer or Int8Layer.
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

// The group without a fused launch: linear(layer) for each layer (the single-layer launcher,
// returning its Status), then with kSiluMul silu_mul (llama_launchers.h) of gate's and up's
// outputs [rows, out] of `dtype` into gate's, on `stream`. `caller` names the failing silu_mul.
template <typename Layer, typename Linear>
Status linear_layers_one_by_one(std::span<const Layer> layers, std::int64_t rows, DType dtype,
                                LinearEpilogue epilogue, cudaStream_t stream, const char* caller,
                                Linear linear) {
  for (const Layer& layer : layers) KBIT_RETURN_IF_ERROR(linear(layer));
  if (epilogue == LinearEpilogue::kStore) return ok_status();
  const cudaError_t error = silu_mul(layers[0].y, layers[1].y, rows * layers[0].out, dtype, stream);
  if (error == cudaSuccess) return ok_status();
  return detail::status_from_cuda_error(static_cast<int>(error),
                                        (std::string(caller) + ": silu_mul").c_str());
}

// The grid of a fused launch for `layers` (FloatLayer, FourBitCall, Int8OutputArgs: anything
// with `out`), whose blocks take `features_per_block` features of one layer each (kStore: layer i
// owns blocks [end_block[i − 1], end_block[i]), end_block[−1] = 0) or the same features of both
// (kSiluMul: every block). Fills end_block[0, layers.size()) and returns the number of blocks, or
// 0 where it exceeds a grid's INT_MAX.
template <typename Layer>
int fused_layer_blocks(std::span<const Layer> layers, std::int64_t features_per_block,
                       LinearEpilogue epilogue, int (&end_block)[kMaxFusedLayers]) {
  std::int64_t blocks = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::int64_t layer_blocks = (layers[i].out + features_per_block - 1) / features_per_block;
    blocks = epilogue == LinearEpilogue::kSiluMul ? layer_blocks : blocks + layer_blocks;
    if (blocks > INT_MAX) return 0;
    end_block[i] = static_cast<int>(blocks);
  }
  return static_cast<int>(blocks);
}

// The row GEMVs (linear_float_gemv.cu, linear_int8.cu's one-row GEMV) give each warp of a
// block kRowGemvWarpRows weight rows: features f and f + 1 of the block's layer (kStore), or
// feature f of gate and of up (kSiluMul). The features each block takes, for fused_layer_blocks:
constexpr int kRowGemvWarpRows = 2;
constexpr std::int64_t row_gemv_block_features(int warps, LinearEpilogue epilogue) {
  return epilogue == LinearEpilogue::kSiluMul ? warps : std::int64_t{kRowGemvWarpRows} * warps;
}

#if defined(__CUDACC__)
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

// Feature f of warp `warp` of a row GEMV block of `warps` warps (see row_gemv_block_features); it
// may lie past the layer's last feature.
__device__ __forceinline__ std::int64_t row_gemv_first_feature(BlockLayer block, int warps,
                                                               int warp, LinearEpilogue epilogue) {
  const bool silu_mul = epilogue == LinearEpilogue::kSiluMul;
  return static_cast<std::int64_t>(blockIdx.x - block.first_block) *
             row_gemv_block_features(warps, epilogue) +
         (silu_mul ? warp : kRowGemvWarpRows * warp);
}
#endif

}  // namespace kbit::kernels::cuda
