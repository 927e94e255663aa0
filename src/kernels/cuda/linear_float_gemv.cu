// The one-row GEMV of linear_float (contract: linear_float_gemv.h). A block of 8 warps owns 16
// output features of one layer (each warp two) or, with the SiLU·mul epilogue, 8 features of gate
// and the same 8 of up (each warp one of each), so that every warp reads two weight rows. Lane l
// takes the rows' 16-byte vectors l, l + 32, …, kUnroll of each in flight, and multiplies them
// with the same vectors of x (which all warps read, from L1). The lanes' sums meet
// in a butterfly of shuffles, always in the same order. The block's first weight vectors are
// requested before it waits for the kernel before it (overlapped_launch.cuh).
#include "kernels/cuda/linear_float_gemv.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fused_layers.h"
#include "kernels/cuda/overlapped_launch.cuh"

namespace kbit::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kRowsPerWarp = kRowGemvWarpRows;
constexpr int kUnroll = 4;  // vectors of each weight row in flight

// The layers of one launch. With kStore, layer i owns blocks [end_block[i − 1], end_block[i]),
// row_gemv_block_features each; with kSiluMul both layers (gate, up) own every block.
template <typename T>
struct FloatGemvLayers {
  const T* weight[kMaxFusedLayers];  // [out, in]
  const T* bias[kMaxFusedLayers];    // [out] or nullptr
  T* y[kMaxFusedLayers];             // [out]
  std::int64_t out[kMaxFusedLayers];
  int end_block[kMaxFusedLayers];
  int count;
};

// The values of a 16-byte vector as floats (exact).
template <typename T>
__device__ __forceinline__ void unpack(uint4 raw, float (&values)[kValuesPerVector<T>]) {
  T elements[kValuesPerVector<T>];
  std::memcpy(elements, &raw, sizeof(raw));
#pragma unroll
  for (int k = 0; k < kValuesPerVector<T>; ++k) values[k] = to_float(elements[k]);
}

template <typename T, LinearEpilogue kEpilogue>
__global__ void __launch_bounds__(kWarps* kWarpSize)
    float_gemv_kernel(const T* __restrict__ x, const __grid_constant__ FloatGemvLayers<T> layers,
                      std::int64_t in) {
  constexpr bool kSiluMul = kEpilogue == LinearEpilogue::kSiluMul;
  constexpr int kPerVector = kValuesPerVector<T>;
  const BlockLayer block =
      kSiluMul ? BlockLayer{0, 0} : block_layer(layers.end_block, layers.count);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  // Weight row k of this warp: a feature of layer block.layer, or with kSiluMul of gate (k = 0)
  // and up (k = 1). Features past the last re-read the last one; their sums are never stored.
  const std::int64_t first_feature = row_gemv_first_feature(block, kWarps, warp, kEpilogue);
  std::int64_t features[kRowsPerWarp];
  const uint4* weight_rows[kRowsPerWarp];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    const int layer = kSiluMul ? k : block.layer;
    features[k] = std::min(first_feature + (kSiluMul ? 0 : k), layers.out[layer] - 1);
    weight_rows[k] = reinterpret_cast<const uint4*>(layers.weight[layer] + features[k] * in);
  }
  const std::int64_t vectors = in / kPerVector;
  constexpr int kStride = kWarpSize * kUnroll;

  uint4 w[kRowsPerWarp][kUnroll];
  const auto load_weights = [&](std::int64_t first) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = first + u * kWarpSize;
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        w[k][u] = v < vectors ? __ldcs(weight_rows[k] + v) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  load_weights(lane);
  // Up to here only weights: x and y belong to the kernels around this one.
  wait_for_previous_kernels();

  float sums[kRowsPerWarp] = {};
  for (std::int64_t first = lane; first < vectors; first += kStride) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = first + u * kWarpSize;
      if (v >= vectors) break;
      float inputs[kPerVector];
      unpack<T>(__ldg(reinterpret_cast<const uint4*>(x) + v), inputs);
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        float weights[kPerVector];
        unpack<T>(w[k][u], weights);
#pragma unroll
        for (int j = 0; j < kPerVector; ++j) sums[k] = fmaf(inputs[j], weights[j], sums[k]);
      }
    }
    if (first + kStride < vectors) load_weights(first + kStride);
  }
  allow_next_kernel_start();
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) sums[k] = warp_sum(sums[k]);
  if (lane != 0) return;
  // The output of weight row k: the sum and bias in f32, rounded once to T.
  const auto output = [&](int k) {
    const T* bias = layers.bias[kSiluMul ? k : block.layer];
    return from_float<T>(sums[k] + (bias != nullptr ? to_float(bias[features[k]]) : 0.0f));
  };
  if constexpr (kSiluMul) {
    if (first_feature < layers.out[0]) {
      layers.y[0][first_feature] =
          from_float<T>(silu_mul_value<T>(to_float(output(0)), to_float(output(1))));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
      const std::int64_t o = first_feature + k;
      if (o < layers.out[block.layer]) layers.y[block.layer][o] = output(k);
    }
  }
}

template <typename T>
cudaError_t launch_typed(const void* x, std::span<const FloatLayer> layers, std::int64_t in,
                         LinearEpilogue epilogue, cudaStream_t stream) {
  const bool silu_mul_epilogue = epilogue == LinearEpilogue::kSiluMul;
  FloatGemvLayers<T> fused{};
  const int blocks = fused_layer_blocks(layers, row_gemv_block_features(kWarps, epilogue), epilogue,
                                        fused.end_block);
  if (blocks == 0) return cudaErrorInvalidValue;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    fused.weight[i] = static_cast<const T*>(layers[i].weight);
    fused.bias[i] = static_cast<const T*>(layers[i].bias);
    fused.y[i] = static_cast<T*>(layers[i].y);
    fused.out[i] = layers[i].out;
  }
  fused.count = static_cast<int>(layers.size());
  const auto kernel = silu_mul_epilogue ? float_gemv_kernel<T, LinearEpilogue::kSiluMul>
                                        : float_gemv_kernel<T, LinearEpilogue::kStore>;
  return launch_overlapped(kernel, static_cast<unsigned>(blocks), kWarps * kWarpSize, 0, stream,
                           static_cast<const T*>(x), fused, in);
}

}  // namespace

bool float_gemv_applies(const void* x, std::span<const FloatLayer> layers, std::int64_t rows,
                        std::int64_t in, DType dtype) {
  const auto per_vector = static_cast<std::int64_t>(16 / dtype_size(dtype));
  return rows == 1 && in % per_vector == 0 && is_aligned_16(x) &&
         std::all_of(layers.begin(), layers.end(),
                     [](const FloatLayer& layer) { return is_aligned_16(layer.weight); });
}

cudaError_t launch_float_gemv(const void* x, std::span<const FloatLayer> layers, std::int64_t in,
                              DType dtype, LinearEpilogue epilogue, cudaStream_t stream) {
  return dtype == DType::kF32 ? launch_typed<float>(x, layers, in, epilogue, stream)
                              : launch_typed<__nv_bfloat16>(x, layers, in, epilogue, stream);
}

}  // namespace kbit::kernels::cuda
