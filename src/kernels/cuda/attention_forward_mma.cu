// The prefill forward of causal grouped-query attention on tensor cores (contract:
// attention_forward_mma.h), as FlashAttention-2 computes it, from the pieces of
// attention_mma.cuh.
//
// Block (query tile of kMmaTile tokens, head); warp w owns queries [16 · w, + 16) of the tile.
// The block loads its q tile once, then walks the key tiles of kMmaTile cache rows from row 0 to
// the last row its last query sees, K and V double-buffered and loaded with cp.async while the
// previous tile is multiplied. Per key tile a warp computes its 16 × 64 scores S = q·kᵀ in f32
// accumulators, runs the online softmax on them in registers (each row's max over its four lanes
// by shuffles), and adds P·V to its 16 × head_dim output accumulators, P rounded to bf16 as the
// product's input while the running sum l adds it unrounded (attention_reference's numerics).
// The output is divided by l at the end and rounded to bf16.
//
// Query t sits at position *first_position + t (read on the device, so that the grid does not
// depend on it) and sees cache rows [0, min(position, capacity − 1)]; its scores of later rows
// are -inf before the exponential. Rows past the block's last visible key are zero-filled
// instead of loaded, so that whatever the cache holds there (NaN) never meets a zero probability
// in the P·V product.
//
// The exponential is exp2f of scores scaled by scale · log2(e) (one multiply-add and one ex2
// per probability); against expf of scale · score it differs by the f32 rounding of that factor,
// a relative 2^-24 of the exponent.
#include "kernels/cuda/attention_forward_mma.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/common.cuh"

namespace kbit::kernels::cuda {
namespace {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr float kLog2E = 1.4426950408889634f;
constexpr int kTiles = 5;  // q, and K and V double-buffered

template <int kHeadDim>
constexpr std::size_t kForwardBytes = mma_shared_bytes<kHeadDim>(kTiles, 0);

__host__ __device__ std::int64_t query_tiles(const AttentionJob& job) {
  return (job.tokens + kMmaTile - 1) / kMmaTile;
}

// Block (query tile, head) = (tiles − 1 − blockIdx.x / heads, blockIdx.x % heads): the tiles
// with the most keys start first, and the heads of one kv head run side by side, sharing its
// tiles in L2. Dynamic shared memory: kForwardBytes.
template <int kHeadDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const AttentionJob job, float scale_log2) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  constexpr int kTileElements = kSharedTileElements<kHeadDim>;
  bf16* query_rows = reinterpret_cast<bf16*>(shared_bytes);  // [kMmaTile, kSharedStride]
  bf16* key_tiles = query_rows + kTileElements;              // [2][kMmaTile, kSharedStride]
  bf16* value_tiles = key_tiles + 2 * kTileElements;         // [2][kMmaTile, kSharedStride]
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int row0 = warp * kMmaRows;
  const std::int64_t first_token = (query_tiles(job) - 1 - blockIdx.x / job.heads) * kMmaTile;
  const std::int64_t head = blockIdx.x % job.heads;
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const int rows = static_cast<int>(min(std::int64_t{kMmaTile}, job.tokens - first_token));
  const std::int64_t first_position = *job.first_position;
  // The last cache row query t sees.
  const auto last_key = [&](std::int64_t t) { return min(first_position + t, job.capacity - 1); };
  const std::int64_t block_last_key = last_key(first_token + rows - 1);
  const int key_tile_count = static_cast<int>(block_last_key / kMmaTile) + 1;

  const std::int64_t key_stride = job.kv_heads * kHeadDim;
  const bf16* k = static_cast<const bf16*>(job.k_cache) + kv_head * kHeadDim;
  const bf16* v = static_cast<const bf16*>(job.v_cache) + kv_head * kHeadDim;
  const auto load_keys = [&](int key_tile) {
    const std::int64_t first_key = std::int64_t{key_tile} * kMmaTile;
    const int keys = static_cast<int>(min(std::int64_t{kMmaTile}, block_last_key + 1 - first_key));
    load_tile_async<kHeadDim>(k + first_key * key_stride, key_stride, keys,
                              key_tiles + key_tile % 2 * kTileElements);
    load_tile_async<kHeadDim>(v + first_key * key_stride, key_stride, keys,
                              value_tiles + key_tile % 2 * kTileElements);
  };
  const std::int64_t query_offset = (first_token * job.heads + head) * kHeadDim;
  const std::int64_t query_stride = job.heads * kHeadDim;
  load_tile_async<kHeadDim>(static_cast<const bf16*>(job.q) + query_offset, query_stride, rows,
                            query_rows);
  load_keys(0);
  commit_copies();

  // Per lane, of rows fragment_row(0) and fragment_row(2): the running max m of the scaled
  // scores s, and the lane's part of the sum of exp2(s − m), completed by shuffles at the end.
  float max_score[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.0f, 0.0f};
  std::int64_t query_last_key[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    query_last_key[half] = last_key(first_token + row0 + fragment_row(2 * half));
  }
  float acc[kHeadDim / 8][4] = {};
  for (int key_tile = 0; key_tile < key_tile_count; ++key_tile) {
    next_pipeline_step(key_tile + 1 < key_tile_count, [&] { load_keys(key_tile + 1); });
    const int buffer = key_tile % 2 * kTileElements;
    float scores[kMmaTile / 8][4] = {};  // then the probabilities
    multiply_by_transposed<kHeadDim, kMmaTile>(scores, query_rows, row0, key_tiles + buffer, 0);
    const std::int64_t first_key = std::int64_t{key_tile} * kMmaTile;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // The row sees the tile's columns [0, visible): all of them but near its position.
      const auto visible = static_cast<int>(
          max(std::int64_t{0}, min(std::int64_t{kMmaTile}, query_last_key[half] + 1 - first_key)));
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kMmaTile / 8; ++j) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          scores[j][e] = fragment_column(j, e) < visible ? scores[j][e] * scale_log2 : -INFINITY;
          tile_max = fmaxf(tile_max, scores[j][e]);
        }
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 2));
      const float new_max = fmaxf(max_score[half], tile_max);
      // A row that has seen no key yet keeps max -inf: exp is then taken relative to 0, not to
      // -inf, which would give NaN.
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = exp2f(max_score[half] - reference);
      max_score[half] = new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kMmaTile / 8; ++j) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          scores[j][e] = exp2f(scores[j][e] - reference);
          tile_sum += scores[j][e];
        }
      }
      sum[half] = sum[half] * rescale + tile_sum;
#pragma unroll
      for (int j = 0; j < kHeadDim / 8; ++j) {
        acc[j][2 * half] *= rescale;
        acc[j][2 * half + 1] *= rescale;
      }
    }
    std::uint32_t probabilities[kMmaTile / 16][4];
    to_operands<kMmaTile>(scores, probabilities);
    accumulate_product<kHeadDim, kMmaTile>(acc, probabilities, value_tiles + buffer, 0);
    __syncthreads();  // the buffers are read before the next iteration loads over them
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float total = sum[half];
    total += __shfl_xor_sync(kFullWarp, total, 1);
    total += __shfl_xor_sync(kFullWarp, total, 2);
    const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      acc[j][2 * half] *= inverse;
      acc[j][2 * half + 1] *= inverse;
    }
  }
  store_fragments<kHeadDim>(acc, static_cast<bf16*>(job.out) + query_offset, query_stride, row0,
                            rows);
}

template <int kHeadDim>
cudaError_t launch(const AttentionJob& job, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(query_tiles(job) * job.heads);
  return launch_with_shared(attention_forward_mma_kernel<kHeadDim>, dim3(blocks), kMmaThreads,
                            kForwardBytes<kHeadDim>, stream, job, job.scale * kLog2E);
}

}  // namespace

bool attention_forward_mma_takes(const AttentionJob& job) {
  if (job.dtype != DType::kBF16 || (job.head_dim != 64 && job.head_dim != 128)) return false;
  if (job.window != 0 || job.tokens <= 1 || job.sequences != 1) return false;
  if (query_tiles(job) * job.heads > INT32_MAX) return false;  // grid.x
  for (const void* array : {job.q, job.k_cache, job.v_cache, static_cast<const void*>(job.out)}) {
    if (!is_aligned_16(array)) return false;
  }
  return fits_shared_memory(job.head_dim == 64 ? kForwardBytes<64> : kForwardBytes<128>);
}

cudaError_t attention_forward_mma(const AttentionJob& job, cudaStream_t stream) {
  return job.head_dim == 64 ? launch<64>(job, stream) : launch<128>(job, stream);
}

}  // namespace kbit::kernels::cuda
