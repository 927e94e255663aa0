// What the tensor-core attention kernels share (the backward's in attention_backward.cu, the
// prefill forward's in attention_forward_mma.cu): bf16 tiles of kMmaTile positions in shared
// memory, loaded with cp.async (async_copy.cuh), and warp-wide tile products on mma.sync m16n8k16
// (bf16 inputs, f32 accumulators). sm_80 and later (cp.async, ldmatrix, bf16 mma.sync).
//
// A block is kMmaWarps warps; warp w owns rows [16 · w, + 16) of the block's own tile. Tiles sit
// in shared memory as bf16 with row stride head_dim + 8: the 8 row addresses of one ldmatrix
// then lie 16 bytes apart modulo 128 bytes, in distinct banks. An accumulator fragment of m16n8
// is, pair by pair, the A fragment of the next m16k16 product (to_operands), so that weights
// computed from one product (probabilities, dS) feed the next without leaving registers; they
// are rounded to bf16 only there, as FlashAttention-2 does.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/device_queries.h"
#include "kernels/cuda/launch_with_shared.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace kbit::kernels::cuda {

inline constexpr int kMmaTile = 64;
inline constexpr int kMmaRows = 16;  // the M of m16n8k16: rows of a warp
inline constexpr int kMmaWarps = kMmaTile / kMmaRows;
inline constexpr int kMmaThreads = kMmaWarps * kWarpSize;

using bf16 = __nv_bfloat16;  // in these kernels, the device type (not kbit::bf16)

template <int kHeadDim>
inline constexpr int kSharedStride = kHeadDim + 8;

template <int kHeadDim>
inline constexpr int kSharedTileElements = kMmaTile* kSharedStride<kHeadDim>;

// One step of a double-buffered loop over tiles: queues the next tile's copies (load_next) where
// there is one and waits for the current tile's, then a barrier, after which every thread may
// read the current tile. The loop's previous step must end with a barrier, so that the buffer the
// next tile fills is no longer read.
template <typename LoadNext>
__device__ __forceinline__ void next_pipeline_step(bool has_next, LoadNext&& load_next) {
  if (has_next) {
    load_next();
    commit_copies();
    wait_copies<1>();
  } else {
    wait_copies<0>();
  }
  __syncthreads();
}

__device__ __forceinline__ void load_matrices(std::uint32_t (&r)[4], const bf16* address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(address))
               : "memory");
}

__device__ __forceinline__ void load_matrices_transposed(std::uint32_t (&r)[4],
                                                         const bf16* address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(address))
               : "memory");
}

// Two values rounded to bf16, `low` in the low half: the order of a fragment's pairs.
__device__ __forceinline__ std::uint32_t pack_bf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  std::uint32_t bits;
  std::memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

// Rows [0, rows) of a kMmaTile-row tile from source (row r at source + r · source_stride) into
// the shared tile (stride kSharedStride), asynchronously; the other rows are zeroed, so that
// positions beyond the sequence multiply nothing non-finite.
template <int kHeadDim>
__device__ void load_tile_async(const bf16* source, std::int64_t source_stride, int rows,
                                bf16* tile) {
  constexpr int kChunksPerRow = kHeadDim / kChunk;
  for (int index = static_cast<int>(threadIdx.x); index < kMmaTile * kChunksPerRow;
       index += kMmaThreads) {
    const int row = index / kChunksPerRow;
    const int column = index % kChunksPerRow * kChunk;
    bf16* target = tile + row * kSharedStride<kHeadDim> + column;
    if (row < rows) {
      copy_async_16(target, source + row * source_stride + column);
    } else {
      *reinterpret_cast<uint4*>(target) = make_uint4(0, 0, 0, 0);
    }
  }
}

// The warp's accumulator lane layout (m16n8): element e of n-tile j sits at row
// lane / 4 + 8 · (e / 2) and column 8 · j + 2 · (lane % 4) + e % 2.
__device__ __forceinline__ int fragment_row(int e) {
  return static_cast<int>(threadIdx.x) % kWarpSize / 4 + e / 2 * 8;
}
__device__ __forceinline__ int fragment_column(int j, int e) {
  return j * 8 + static_cast<int>(threadIdx.x) % 4 * 2 + e % 2;
}

// acc (16 × kColumns) += rows[row0, + 16) · columns[first_column, + kColumns)ᵀ, both shared tiles
// [position, head_dim]: scores and dP.
template <int kHeadDim, int kColumns>
__device__ __forceinline__ void multiply_by_transposed(float (&acc)[kColumns / 8][4],
                                                       const bf16* rows, int row0,
                                                       const bf16* columns, int first_column) {
  constexpr int kStride = kSharedStride<kHeadDim>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
#pragma unroll
  for (int k0 = 0; k0 < kHeadDim; k0 += 16) {
    std::uint32_t a[4];
    load_matrices(a, rows + (row0 + lane % 16) * kStride + k0 + lane / 16 * 8);
#pragma unroll
    for (int n0 = 0; n0 < kColumns; n0 += 16) {
      std::uint32_t b[4];
      load_matrices(b, columns + (first_column + n0 + lane % 8 + lane / 16 * 8) * kStride + k0 +
                           lane / 8 % 2 * 8);
      mma_16x8x16<bf16>(acc[n0 / 8], a, b[0], b[1]);
      mma_16x8x16<bf16>(acc[n0 / 8 + 1], a, b[2], b[3]);
    }
  }
}

// The accumulators of a 16 × kColumns product as the bf16 A fragments of its 16-column chunks.
template <int kColumns>
__device__ __forceinline__ void to_operands(const float (&acc)[kColumns / 8][4],
                                            std::uint32_t (&a)[kColumns / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kColumns / 16; ++kk) {
    a[kk][0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]);
    a[kk][1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
    a[kk][2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
    a[kk][3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
  }
}

// acc (16 × head_dim) += weights (16 × kColumns, A fragments) · tile[first_row, + kColumns), a
// shared tile [position, head_dim]: the gradient products.
template <int kHeadDim, int kColumns>
__device__ __forceinline__ void accumulate_product(float (&acc)[kHeadDim / 8][4],
                                                   const std::uint32_t (&weights)[kColumns / 16][4],
                                                   const bf16* tile, int first_row) {
  constexpr int kStride = kSharedStride<kHeadDim>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
#pragma unroll
  for (int kk = 0; kk < kColumns / 16; ++kk) {
#pragma unroll
    for (int n0 = 0; n0 < kHeadDim; n0 += 16) {
      std::uint32_t b[4];
      load_matrices_transposed(
          b, tile + (first_row + kk * 16 + lane % 8 + lane / 8 % 2 * 8) * kStride + n0 +
                 lane / 16 * 8);
      mma_16x8x16<bf16>(acc[n0 / 8], weights[kk], b[0], b[1]);
      mma_16x8x16<bf16>(acc[n0 / 8 + 1], weights[kk], b[2], b[3]);
    }
  }
}

// Stores the warp's rows of acc (rows row0 + fragment_row of the tile starting at target, rows
// of row_stride elements), those below `rows`.
template <int kHeadDim>
__device__ void store_fragments(const float (&acc)[kHeadDim / 8][4], bf16* target,
                                std::int64_t row_stride, int row0, int rows) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + fragment_row(2 * half);
    if (row >= rows) continue;
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      const std::uint32_t pair = pack_bf16(acc[j][2 * half], acc[j][2 * half + 1]);
      std::memcpy(target + row * row_stride + fragment_column(j, 0), &pair, sizeof(pair));
    }
  }
}

// ---- Host side.

// Dynamic shared memory of `tiles` tiles and `statistics_floats` f32 values after them.
template <int kHeadDim>
constexpr std::size_t mma_shared_bytes(int tiles, int statistics_floats) {
  return static_cast<std::size_t>(tiles) * kSharedTileElements<kHeadDim> * sizeof(bf16) +
         static_cast<std::size_t>(statistics_floats) * sizeof(float);
}

// Whether a block of the current device can have `bytes` of dynamic shared memory (after opting
// in): 227 KiB on sm_90, 99 KiB on sm_86 and sm_89. False where the device cannot be queried.
inline bool fits_shared_memory(std::size_t bytes) {
  return bytes <= current_device_shared_memory_optin();
}

}  // namespace kbit::kernels::cuda
