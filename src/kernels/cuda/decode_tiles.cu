// The decode-tile layout's permutation on the GPU (kbit/quant/decode_tiles.h): one thread per
// 16-byte chunk of codes, and per absmax element, each read once and written once.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/quant/decode_tiles.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// chunks [out · in / 32]: chunk i is row i / (in / 32), inputs 32 · (i % (in / 32)) and on.
__global__ void __launch_bounds__(kThreads)
    permute_code_chunks_kernel(const uint4* __restrict__ from, uint4* __restrict__ to,
                               std::int64_t chunks, std::int64_t in, bool tile) {
  const std::int64_t row_chunks = in / 32;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t tiled =
        quant::decode_tile_code_offset(in, i / row_chunks, i % row_chunks) / 16;
    if (tile) {
      to[tiled] = from[i];
    } else {
      to[i] = from[tiled];
    }
  }
}

// absmax [out · in / 64] of T (float, or a nested absmax's 8-bit codes).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    permute_absmax_kernel(const T* __restrict__ from, T* __restrict__ to, std::int64_t blocks,
                          std::int64_t in, bool tile) {
  const std::int64_t row_blocks = in / quant::kDecodeTileBlockSize;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < blocks;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int64_t tiled = quant::decode_tile_absmax_index(in, i / row_blocks, i % row_blocks);
    if (tile) {
      to[tiled] = from[i];
    } else {
      to[i] = from[tiled];
    }
  }
}

}  // namespace

cudaError_t permute_4bit_decode_tiles(const std::uint8_t* packed, const void* absmax,
                                      std::size_t absmax_element_bytes, std::int64_t out,
                                      std::int64_t in, std::uint8_t* packed_out, void* absmax_out,
                                      bool tile, cudaStream_t stream) {
  if (!quant::decode_tiles_apply(out, in, quant::kDecodeTileBlockSize) ||
      (absmax_element_bytes != 4 && absmax_element_bytes != 1)) {
    return cudaErrorInvalidValue;
  }
  const std::int64_t chunks = out * in / 32;
  const std::int64_t blocks = out * in / quant::kDecodeTileBlockSize;
  int code_blocks = 0;
  cudaError_t error =
      grid_stride_blocks(permute_code_chunks_kernel, kThreads, chunks, &code_blocks);
  if (error != cudaSuccess) return error;
  permute_code_chunks_kernel<<<code_blocks, kThreads, 0, stream>>>(
      reinterpret_cast<const uint4*>(packed), reinterpret_cast<uint4*>(packed_out), chunks, in,
      tile);
  const auto permute_absmax = [&](auto element) -> cudaError_t {
    using T = decltype(element);
    int absmax_blocks = 0;
    const cudaError_t launch_error =
        grid_stride_blocks(permute_absmax_kernel<T>, kThreads, blocks, &absmax_blocks);
    if (launch_error != cudaSuccess) return launch_error;
    permute_absmax_kernel<T><<<absmax_blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(absmax), static_cast<T*>(absmax_out), blocks, in, tile);
    return cudaSuccess;
  };
  error = absmax_element_bytes == 4 ? permute_absmax(float{}) : permute_absmax(std::uint8_t{});
  if (error != cudaSuccess) return error;
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda
