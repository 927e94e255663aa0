// The CUDA backward of causal grouped-query self-attention (contract: attention_backward in
// llama_backward_launchers.h; definition: attention_backward_reference in
// kernels/cpu/llama_backward.h), computed as FlashAttention-2 does: no probability is stored,
// each kernel recomputes those it needs from q, k and one log-sum-exp per query.
//
// For query t of head h and key s <= t of its kv head (positions within their sequence):
//   P = exp(scale · q·k − L), L = logsumexp over the keys of scale · q·k  (the forward's softmax)
//   dP = d_out · v, delta = rowsum(d_out ∘ out)  (= Σ_s P · dP, the reference's sum)
//   dS = P · (dP − delta) · scale
//   dv_s = Σ P · d_out,  dk_s = Σ dS · q,  dq_t = Σ dS · k
// Three kernels, in stream order:
//   1. row statistics: block (query tile, head) runs the forward's online softmax over the key
//      tiles its queries see, without V, and writes L and delta to the workspace.
//   2. key gradients: block (key tile, kv head) keeps dk and dv of its keys in registers while
//      it loops over the group's query heads and, for each, over the query tiles that see its
//      keys.
//   3. query gradients: block (query tile, head) keeps dq in registers while it loops over the
//      key tiles its queries see.
// Each gradient element belongs to one thread, which sums its terms in a fixed order: no atomics,
// and the same inputs give the same bits.
//
// Tiles are kTile positions of one sequence, aligned to the sequence's start, so that query
// tile i sees key tiles 0..i and only tile i itself needs the causal mask. A block is kWarps
// warps. The block's own tile ("rows") sits in shared memory with stride head_dim, and warp w
// owns its rows [w · kRowsPerWarp, + kRowsPerWarp), which the warp's lanes read together as
// float4 broadcasts. The tile the block loops over ("columns") has stride head_dim + 1, odd, so
// that lane c reading column c hits a bank of its own. Lane c computes its rows' products with
// column c (row_dots); the gradients of a row sum over the columns through shuffles, lane c
// owning dimensions c, c + 32, ... (accumulate_columns).
//
// Arithmetic is f32 on CUDA cores; tiles are widened to f32 as they are loaded, and stores round
// to the activation dtype. Kernels 2 and 3 hold four tiles, 128 · head_dim + 64 floats of shared
// memory: 64 KiB at head_dim 128, 128 KiB at 256 (GPUs with 99 KiB per block, sm_86 and sm_89,
// take head_dim up to 192).
//
// bf16 at head_dim 64 and 128, the training shapes, takes a tensor-core path instead (see
// "Tensor-core path" below): the same three steps on mma.sync, with P and dS rounded to bf16
// as the products' inputs, and kernels 2 and 3 in one launch. f32, the other head_dims and
// unaligned arrays keep the CUDA-core kernels.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/llama_backward_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kTile = kWarpSize;  // positions per tile: lane c takes column c
constexpr int kRowsPerWarp = 4;
constexpr int kWarps = kTile / kRowsPerWarp;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMaxHeadDim = 256;
constexpr unsigned kFullWarp = 0xffffffffu;

// ---- Loads.

// Row c of tile (at tile + c · tile_stride) = row c of source (at source + c · source_stride),
// head_dim values as f32, for c < rows; zero for the other rows of the kTile, so that positions
// beyond the sequence multiply nothing non-finite.
template <typename T>
__device__ void load_tile(const T* source, std::int64_t source_stride, int rows, int head_dim,
                          bool aligned, float* tile, int tile_stride) {
  const int chunks_per_row = head_dim / kChunk;
  for (int index = threadIdx.x; index < kTile * chunks_per_row; index += blockDim.x) {
    const int c = index / chunks_per_row;
    const int i = index % chunks_per_row * kChunk;
    float values[kChunk] = {};
    if (c < rows) load_chunk(source + c * source_stride + i, aligned, values);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) tile[c * tile_stride + i + k] = values[k];
  }
}

// ---- Tile products.

// dots[r] += Σ_i rows[r · head_dim + i] · column[i] over the warp's rows: every lane reads the
// same row values (float4 broadcasts: rows is 16-byte aligned and head_dim a multiple of 8) and
// its own column.
__device__ __forceinline__ void row_dots(const float* rows, const float* column, int head_dim,
                                         float (&dots)[kRowsPerWarp]) {
  for (int i = 0; i < head_dim; i += 4) {
    const float c0 = column[i];
    const float c1 = column[i + 1];
    const float c2 = column[i + 2];
    const float c3 = column[i + 3];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float4 a = *reinterpret_cast<const float4*>(rows + r * head_dim + i);
      dots[r] += a.x * c0;
      dots[r] += a.y * c1;
      dots[r] += a.z * c2;
      dots[r] += a.w * c3;
    }
  }
}

// acc[r][d] += Σ_c weight(r, c) · columns[c · (head_dim + 1) + lane + 32 · d] over the kTile
// columns in order, where lane c holds weights[r] = weight(r, c).
template <int kDimsPerLane>
__device__ __forceinline__ void accumulate_columns(const float (&weights)[kRowsPerWarp],
                                                   const float* columns, int head_dim,
                                                   float (&acc)[kRowsPerWarp][kDimsPerLane]) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  for (int c = 0; c < kTile; ++c) {
    float weight[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) weight[r] = __shfl_sync(kFullWarp, weights[r], c);
    const float* column = columns + c * (head_dim + 1);
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) {
      const int i = lane + d * kWarpSize;
      const float value = i < head_dim ? column[i] : 0.0f;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) acc[r][d] += weight[r] * value;
    }
  }
}

// Stores the warp's rows of acc, those below `rows`, to target (the tile's first row; rows of
// row_stride elements).
template <typename T, int kDimsPerLane>
__device__ void store_rows(const float (&acc)[kRowsPerWarp][kDimsPerLane], T* target,
                           std::int64_t row_stride, int rows, int head_dim) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    if (row >= rows) continue;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) {
      const int i = lane + d * kWarpSize;
      if (i < head_dim) target[row * row_stride + i] = from_float<T>(acc[r][d]);
    }
  }
}

// ---- Where a block works.

// A block's own tile: its tile block = rank · sequences + sequence, ranks from the tile with the
// most work, so that the long blocks start in the first wave and short ones fill the tail.
struct Tile {
  std::int64_t sequence_row;  // token row of the sequence's position 0
  int length;                 // positions of a sequence
  int count;                  // tiles of a sequence
  int index;                  // of this tile in its sequence
  int first;                  // position of its first row: index · size
  int rows;                   // of its size rows, those within the sequence
};

// Query tiles see more keys the later they sit, key tiles more queries the earlier:
// `last_first` for query tiles. `size` positions a tile.
__device__ Tile tile_of(const AttentionBackwardJob& job, bool last_first, int size,
                        unsigned tile_block) {
  Tile tile;
  tile.length = static_cast<int>(job.tokens / job.sequences);
  tile.count = (tile.length + size - 1) / size;
  const auto rank = static_cast<int>(tile_block / job.sequences);
  tile.sequence_row = tile_block % job.sequences * tile.length;
  tile.index = last_first ? tile.count - 1 - rank : rank;
  tile.first = tile.index * size;
  tile.rows = min(size, tile.length - tile.first);
  return tile;
}

// The CUDA-core kernels' tile: tile block blockIdx.x, heads along blockIdx.y.
__device__ Tile block_tile(const AttentionBackwardJob& job, bool last_first) {
  return tile_of(job, last_first, kTile, blockIdx.x);
}

// Whether the query at position `query` sees the key at `key` (positions of one sequence).
__device__ __forceinline__ bool sees(int query, int key, int length) {
  return key <= query && query < length;
}

// The workspace (see attention_backward_workspace_floats): lse [heads, tokens], then delta.
__device__ __forceinline__ float* lse_of(const AttentionBackwardJob& job, std::int64_t head) {
  return job.workspace + head * job.tokens;
}
__device__ __forceinline__ float* delta_of(const AttentionBackwardJob& job, std::int64_t head) {
  return job.workspace + (job.heads + head) * job.tokens;
}

// ---- Kernels.

// Kernel 1, block (query tile, head blockIdx.y): the lse and delta of its queries. Dynamic
// shared memory: statistics_shared_bytes(head_dim).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_row_statistics_kernel(const AttentionBackwardJob job, bool aligned) {
  extern __shared__ __align__(16) float shared[];
  const int head_dim = static_cast<int>(job.head_dim);
  float* query_rows = shared;                      // [kTile, head_dim]
  float* key_columns = shared + kTile * head_dim;  // [kTile, head_dim + 1]
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const Tile queries = block_tile(job, true);
  const std::int64_t head = blockIdx.y;
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const std::int64_t first_row = queries.sequence_row + queries.first;
  load_tile(static_cast<const T*>(job.q) + (first_row * job.heads + head) * head_dim,
            job.heads * head_dim, queries.rows, head_dim, aligned, query_rows, head_dim);

  // delta straight from global memory: each value is read once.
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int position = queries.first + warp * kRowsPerWarp + r;
    if (position >= queries.length) break;  // the whole warp: the sum's shuffles stay whole
    const std::int64_t row = queries.sequence_row + position;
    const std::int64_t offset = (row * job.heads + head) * head_dim;
    const T* d_out = static_cast<const T*>(job.d_out) + offset;
    const T* out = static_cast<const T*>(job.out) + offset;
    float partial = 0.0f;
    for (int i = lane; i < head_dim; i += kWarpSize) {
      partial += to_float(d_out[i]) * to_float(out[i]);
    }
    const float delta = warp_reduce(partial, Sum{});
    if (lane == 0) delta_of(job, head)[row] = delta;
  }

  // The online softmax of the forward (attention_prefill_kernel) without V. A row beyond the
  // sequence sees no key and keeps max -inf: exp is then taken relative to 0, not to -inf,
  // which would give NaN.
  float max_score[kRowsPerWarp];
  float sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    max_score[r] = -INFINITY;
    sum[r] = 0.0f;
  }
  const float* rows = query_rows + warp * kRowsPerWarp * head_dim;
  const float* column = key_columns + lane * (head_dim + 1);
  for (int key_tile = 0; key_tile <= queries.index; ++key_tile) {
    const int first_key = key_tile * kTile;
    __syncthreads();  // the query rows are written; the previous key tile is read
    load_tile(static_cast<const T*>(job.k) +
                  ((queries.sequence_row + first_key) * job.kv_heads + kv_head) * head_dim,
              job.kv_heads * head_dim, min(kTile, queries.length - first_key), head_dim, aligned,
              key_columns, head_dim + 1);
    __syncthreads();
    float scores[kRowsPerWarp] = {};
    row_dots(rows, column, head_dim, scores);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int query = queries.first + warp * kRowsPerWarp + r;
      const float score =
          sees(query, first_key + lane, queries.length) ? scores[r] * job.scale : -INFINITY;
      const float new_max = fmaxf(max_score[r], warp_reduce(score, Max{}));
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      sum[r] =
          sum[r] * expf(max_score[r] - reference) + warp_reduce(expf(score - reference), Sum{});
      max_score[r] = new_max;
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int position = queries.first + warp * kRowsPerWarp + r;
    if (lane == 0 && position < queries.length) {
      lse_of(job, head)[queries.sequence_row + position] = max_score[r] + logf(sum[r]);
    }
  }
}

// Kernel 2, block (key tile, kv head blockIdx.y): dk and dv of its keys. Dynamic shared memory:
// gradients_shared_bytes(head_dim).
template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    attention_key_gradients_kernel(const AttentionBackwardJob job, bool aligned) {
  extern __shared__ __align__(16) float shared[];
  const int head_dim = static_cast<int>(job.head_dim);
  const int column_stride = head_dim + 1;
  float* key_rows = shared;                                     // [kTile, head_dim]
  float* value_rows = key_rows + kTile * head_dim;              // [kTile, head_dim]
  float* query_columns = value_rows + kTile * head_dim;         // [kTile, head_dim + 1]
  float* grad_columns = query_columns + kTile * column_stride;  // [kTile, head_dim + 1], d_out
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const Tile keys = block_tile(job, false);
  const std::int64_t kv_head = blockIdx.y;
  const std::int64_t group = job.heads / job.kv_heads;
  const std::int64_t key_offset =
      ((keys.sequence_row + keys.first) * job.kv_heads + kv_head) * head_dim;
  const std::int64_t key_stride = job.kv_heads * head_dim;
  load_tile(static_cast<const T*>(job.k) + key_offset, key_stride, keys.rows, head_dim, aligned,
            key_rows, head_dim);
  load_tile(static_cast<const T*>(job.v) + key_offset, key_stride, keys.rows, head_dim, aligned,
            value_rows, head_dim);

  float dk[kRowsPerWarp][kDimsPerLane] = {};
  float dv[kRowsPerWarp][kDimsPerLane] = {};
  const float* my_keys = key_rows + warp * kRowsPerWarp * head_dim;
  const float* my_values = value_rows + warp * kRowsPerWarp * head_dim;
  for (std::int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    for (int query_tile = keys.index; query_tile < keys.count; ++query_tile) {
      const int first_query = query_tile * kTile;
      const int query = first_query + lane;
      const std::int64_t first_row = keys.sequence_row + first_query;
      const bool valid = query < keys.length;
      const float lse = valid ? lse_of(job, head)[first_row + lane] : 0.0f;
      const float delta = valid ? delta_of(job, head)[first_row + lane] : 0.0f;
      const std::int64_t query_offset = (first_row * job.heads + head) * head_dim;
      const int queries_in_tile = min(kTile, keys.length - first_query);
      __syncthreads();  // the key and value rows are written; the previous query tile is read
      load_tile(static_cast<const T*>(job.q) + query_offset, job.heads * head_dim, queries_in_tile,
                head_dim, aligned, query_columns, column_stride);
      load_tile(static_cast<const T*>(job.d_out) + query_offset, job.heads * head_dim,
                queries_in_tile, head_dim, aligned, grad_columns, column_stride);
      __syncthreads();
      float scores[kRowsPerWarp] = {};
      float grads[kRowsPerWarp] = {};  // dP
      row_dots(my_keys, query_columns + lane * column_stride, head_dim, scores);
      row_dots(my_values, grad_columns + lane * column_stride, head_dim, grads);
      float p[kRowsPerWarp];
      float ds[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int key = keys.first + warp * kRowsPerWarp + r;
        p[r] = sees(query, key, keys.length) ? expf(scores[r] * job.scale - lse) : 0.0f;
        ds[r] = p[r] * (grads[r] - delta) * job.scale;
      }
      accumulate_columns(p, grad_columns, head_dim, dv);
      accumulate_columns(ds, query_columns, head_dim, dk);
    }
  }

  store_rows(dk, static_cast<T*>(job.dk) + key_offset, key_stride, keys.rows, head_dim);
  store_rows(dv, static_cast<T*>(job.dv) + key_offset, key_stride, keys.rows, head_dim);
}

// Kernel 3, block (query tile, head blockIdx.y): dq of its queries. Dynamic shared memory:
// gradients_shared_bytes(head_dim).
template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    attention_query_gradients_kernel(const AttentionBackwardJob job, bool aligned) {
  extern __shared__ __align__(16) float shared[];
  const int head_dim = static_cast<int>(job.head_dim);
  const int column_stride = head_dim + 1;
  float* query_rows = shared;                                  // [kTile, head_dim]
  float* grad_rows = query_rows + kTile * head_dim;            // [kTile, head_dim], d_out
  float* key_columns = grad_rows + kTile * head_dim;           // [kTile, head_dim + 1]
  float* value_columns = key_columns + kTile * column_stride;  // [kTile, head_dim + 1]
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const Tile queries = block_tile(job, true);
  const std::int64_t head = blockIdx.y;
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const std::int64_t first_row = queries.sequence_row + queries.first;
  const std::int64_t query_offset = (first_row * job.heads + head) * head_dim;
  const std::int64_t query_stride = job.heads * head_dim;
  load_tile(static_cast<const T*>(job.q) + query_offset, query_stride, queries.rows, head_dim,
            aligned, query_rows, head_dim);
  load_tile(static_cast<const T*>(job.d_out) + query_offset, query_stride, queries.rows, head_dim,
            aligned, grad_rows, head_dim);

  float lse[kRowsPerWarp];
  float delta[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    const bool valid = row < queries.rows;
    lse[r] = valid ? lse_of(job, head)[first_row + row] : 0.0f;
    delta[r] = valid ? delta_of(job, head)[first_row + row] : 0.0f;
  }

  float dq[kRowsPerWarp][kDimsPerLane] = {};
  const float* my_queries = query_rows + warp * kRowsPerWarp * head_dim;
  const float* my_grads = grad_rows + warp * kRowsPerWarp * head_dim;
  for (int key_tile = 0; key_tile <= queries.index; ++key_tile) {
    const int first_key = key_tile * kTile;
    const std::int64_t key_offset =
        ((queries.sequence_row + first_key) * job.kv_heads + kv_head) * head_dim;
    const int keys_in_tile = min(kTile, queries.length - first_key);
    __syncthreads();  // the query and d_out rows are written; the previous key tile is read
    load_tile(static_cast<const T*>(job.k) + key_offset, job.kv_heads * head_dim, keys_in_tile,
              head_dim, aligned, key_columns, column_stride);
    load_tile(static_cast<const T*>(job.v) + key_offset, job.kv_heads * head_dim, keys_in_tile,
              head_dim, aligned, value_columns, column_stride);
    __syncthreads();
    float scores[kRowsPerWarp] = {};
    float grads[kRowsPerWarp] = {};  // dP
    row_dots(my_queries, key_columns + lane * column_stride, head_dim, scores);
    row_dots(my_grads, value_columns + lane * column_stride, head_dim, grads);
    float ds[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int query = queries.first + warp * kRowsPerWarp + r;
      const float p = sees(query, first_key + lane, queries.length)
                          ? expf(scores[r] * job.scale - lse[r])
                          : 0.0f;
      ds[r] = p * (grads[r] - delta[r]) * job.scale;
    }
    accumulate_columns(ds, key_columns, head_dim, dq);
  }

  store_rows(dq, static_cast<T*>(job.dq) + query_offset, query_stride, queries.rows, head_dim);
}

// ---- Tensor-core path: bf16 activations, head_dim 64 or 128.
//
// The same three kernels with the tile products on mma.sync m16n8k16, from the pieces of
// attention_mma.cuh, which the prefill forward (attention_forward_mma.cu) shares. Tiles are
// kMmaTile positions; warp w owns rows [16 · w, + 16) of the block's own tile, so that every
// gradient element still has one owner (its accumulator lane) that sums its terms in a fixed
// order. The tiles the block loops over are double-buffered and loaded with cp.async while the
// previous one is multiplied.
//
// P and dS are computed in f32 from the f32 accumulators and rounded to bf16 only as the inputs
// of the products dv += Pᵀ·d_out, dk += dSᵀ·q and dq += dS·k; they never leave registers.

// Kernel 2 takes its query tile in passes of this many queries, so that the f32 scores and dP of
// a pass fit in registers beside dk and dv.
constexpr int kKeyPassQueries = 32;

__device__ __forceinline__ void copy_async_4(void* shared, const void* global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(shared)),
               "l"(global)
               : "memory");
}

// Kernel 1 on tensor cores, block (query tile, head) = (blockIdx.x / heads, blockIdx.x % heads),
// ranked as attention_gradients_mma_kernel's: the lse and delta of its queries. Each lane keeps its
// own running max and sum over the columns it holds; the four lanes of a row combine theirs at the
// end. Dynamic shared memory: 3 tiles (q, k double-buffered).
template <int kHeadDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_row_statistics_mma_kernel(const AttentionBackwardJob job) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  constexpr int kTileElements = kSharedTileElements<kHeadDim>;
  bf16* query_rows = reinterpret_cast<bf16*>(shared_bytes);  // [kMmaTile, kSharedStride]
  bf16* key_tiles = query_rows + kTileElements;              // [2][kMmaTile, kSharedStride]
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int row0 = warp * kMmaRows;
  const Tile queries = tile_of(job, true, kMmaTile, blockIdx.x / job.heads);
  const std::int64_t head = blockIdx.x % job.heads;
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const std::int64_t first_row = queries.sequence_row + queries.first;
  const auto* k = static_cast<const bf16*>(job.k);
  const auto load_keys = [&](int key_tile) {
    const int first_key = key_tile * kMmaTile;
    load_tile_async<kHeadDim>(
        k + ((queries.sequence_row + first_key) * job.kv_heads + kv_head) * kHeadDim,
        job.kv_heads * kHeadDim, min(kMmaTile, queries.length - first_key),
        key_tiles + key_tile % 2 * kTileElements);
  };
  load_tile_async<kHeadDim>(
      static_cast<const bf16*>(job.q) + (first_row * job.heads + head) * kHeadDim,
      job.heads * kHeadDim, queries.rows, query_rows);
  load_keys(0);
  commit_copies();

  // delta straight from global memory, kLanesPerRow lanes a row: each value is read once.
  constexpr int kLanesPerRow = kHeadDim / kChunk;
  constexpr int kRowsPerPass = kWarpSize / kLanesPerRow;
  for (int r = lane / kLanesPerRow; r < kMmaRows; r += kRowsPerPass) {
    const int position = queries.first + row0 + r;
    const std::int64_t offset = ((queries.sequence_row + position) * job.heads + head) * kHeadDim +
                                lane % kLanesPerRow * kChunk;
    float partial = 0.0f;
    if (position < queries.length) {
      float d_out[kChunk];
      float out[kChunk];
      load_chunk(static_cast<const bf16*>(job.d_out) + offset, true, d_out);
      load_chunk(static_cast<const bf16*>(job.out) + offset, true, out);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) partial += d_out[i] * out[i];
    }
#pragma unroll
    for (int width = kLanesPerRow / 2; width > 0; width /= 2) {
      partial += __shfl_xor_sync(kFullWarp, partial, width);
    }
    if (lane % kLanesPerRow == 0 && position < queries.length) {
      delta_of(job, head)[queries.sequence_row + position] = partial;
    }
  }

  float max_score[2] = {-INFINITY, -INFINITY};  // rows fragment_row(0) and fragment_row(2)
  float sum[2] = {0.0f, 0.0f};
  for (int key_tile = 0; key_tile <= queries.index; ++key_tile) {
    next_pipeline_step(key_tile < queries.index, [&] { load_keys(key_tile + 1); });
    float scores[kMmaTile / 8][4] = {};
    multiply_by_transposed<kHeadDim, kMmaTile>(scores, query_rows, row0,
                                               key_tiles + key_tile % 2 * kTileElements, 0);
    const int first_key = key_tile * kMmaTile;
    // Only the diagonal tile holds keys after a query (or beyond the sequence); the lse of a query
    // beyond the sequence is not stored.
    const bool masked = key_tile == queries.index;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int query = queries.first + row0 + fragment_row(2 * half);
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kMmaTile / 8; ++j) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          const bool seen =
              !masked || sees(query, first_key + fragment_column(j, e), queries.length);
          scores[j][e] = seen ? scores[j][e] * job.scale : -INFINITY;
          tile_max = fmaxf(tile_max, scores[j][e]);
        }
      }
      const float new_max = fmaxf(max_score[half], tile_max);
      // A lane that has seen no key yet keeps max -inf: exp is then taken relative to 0.
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      float tile_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kMmaTile / 8; ++j) {
        tile_sum += expf(scores[j][2 * half] - reference);
        tile_sum += expf(scores[j][2 * half + 1] - reference);
      }
      sum[half] = sum[half] * expf(max_score[half] - reference) + tile_sum;
      max_score[half] = new_max;
    }
    __syncthreads();  // the key tile is read before the next iteration loads over it
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float row_max = max_score[half];
    row_max = fmaxf(row_max, __shfl_xor_sync(kFullWarp, row_max, 1));
    row_max = fmaxf(row_max, __shfl_xor_sync(kFullWarp, row_max, 2));
    const float reference = row_max == -INFINITY ? 0.0f : row_max;
    float row_sum = sum[half] * expf(max_score[half] - reference);
    row_sum += __shfl_xor_sync(kFullWarp, row_sum, 1);
    row_sum += __shfl_xor_sync(kFullWarp, row_sum, 2);
    const int position = queries.first + row0 + fragment_row(2 * half);
    if (lane % 4 == 0 && position < queries.length) {
      lse_of(job, head)[queries.sequence_row + position] = row_max + logf(row_sum);
    }
  }
}

// Kernel 2 on tensor cores, block (key tile of tile_block, kv_head): dk and dv of its keys, warp w
// those of keys [16 · w, + 16) in f32 accumulators. It steps through (head of the group, query
// tile that sees its keys) in order; P and dS are computed transposed (key rows, query columns)
// so that they are the A operands of dv and dk. Dynamic shared memory: 6 tiles (k, v; q and
// d_out double-buffered) and the lse and delta of the query tiles, double-buffered.
template <int kHeadDim>
__device__ void key_gradients_mma(const AttentionBackwardJob& job, unsigned tile_block,
                                  std::int64_t kv_head, unsigned char* shared_bytes) {
  static_assert(kMmaThreads == 2 * kMmaTile, "one thread loads each query's lse or delta");
  constexpr int kTileElements = kSharedTileElements<kHeadDim>;
  bf16* key_rows = reinterpret_cast<bf16*>(shared_bytes);  // [kMmaTile, kSharedStride]
  bf16* value_rows = key_rows + kTileElements;             // [kMmaTile, kSharedStride]
  bf16* query_tiles = value_rows + kTileElements;          // [2][kMmaTile, kSharedStride]
  bf16* grad_tiles = query_tiles + 2 * kTileElements;      // [2][kMmaTile, kSharedStride], d_out
  // [2][lse, delta][kMmaTile]
  float* statistics = reinterpret_cast<float*>(grad_tiles + 2 * kTileElements);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int row0 = warp * kMmaRows;
  const Tile keys = tile_of(job, false, kMmaTile, tile_block);
  const std::int64_t group = job.heads / job.kv_heads;
  const std::int64_t key_offset =
      ((keys.sequence_row + keys.first) * job.kv_heads + kv_head) * kHeadDim;
  const std::int64_t key_stride = job.kv_heads * kHeadDim;
  const std::int64_t query_stride = job.heads * kHeadDim;
  const int query_tiles_per_head = keys.count - keys.index;
  const int steps = static_cast<int>(group) * query_tiles_per_head;
  const auto first_query_of = [&](int step) {
    return (keys.index + step % query_tiles_per_head) * kMmaTile;
  };
  const auto load_step = [&](int step) {
    const int buffer = step % 2;
    const std::int64_t head = kv_head * group + step / query_tiles_per_head;
    const int first_query = first_query_of(step);
    const int queries = min(kMmaTile, keys.length - first_query);
    const std::int64_t first_row = keys.sequence_row + first_query;
    const std::int64_t offset = (first_row * job.heads + head) * kHeadDim;
    load_tile_async<kHeadDim>(static_cast<const bf16*>(job.q) + offset, query_stride, queries,
                              query_tiles + buffer * kTileElements);
    load_tile_async<kHeadDim>(static_cast<const bf16*>(job.d_out) + offset, query_stride, queries,
                              grad_tiles + buffer * kTileElements);
    const int query = static_cast<int>(threadIdx.x) % kMmaTile;
    const float* source = threadIdx.x < kMmaTile ? lse_of(job, head) : delta_of(job, head);
    float* target = statistics + buffer * 2 * kMmaTile + threadIdx.x;
    if (query < queries) {
      copy_async_4(target, source + first_row + query);
    } else {
      *target = 0.0f;
    }
  };
  load_tile_async<kHeadDim>(static_cast<const bf16*>(job.k) + key_offset, key_stride, keys.rows,
                            key_rows);
  load_tile_async<kHeadDim>(static_cast<const bf16*>(job.v) + key_offset, key_stride, keys.rows,
                            value_rows);
  load_step(0);
  commit_copies();

  float dk[kHeadDim / 8][4] = {};
  float dv[kHeadDim / 8][4] = {};
  for (int step = 0; step < steps; ++step) {
    next_pipeline_step(step + 1 < steps, [&] { load_step(step + 1); });
    const int buffer = step % 2;
    const bf16* query_tile = query_tiles + buffer * kTileElements;
    const bf16* grad_tile = grad_tiles + buffer * kTileElements;
    const float* lse = statistics + buffer * 2 * kMmaTile;
    const float* delta = lse + kMmaTile;
    const int first_query = first_query_of(step);
    // Off the diagonal tile every key precedes every query, and a query beyond the sequence has
    // zero q and d_out: only these tiles need the mask.
    const bool masked = first_query == keys.first;
#pragma unroll
    for (int pass = 0; pass < kMmaTile; pass += kKeyPassQueries) {
      float p[kKeyPassQueries / 8][4] = {};  // scores until exp
      multiply_by_transposed<kHeadDim, kKeyPassQueries>(p, key_rows, row0, query_tile, pass);
#pragma unroll
      for (int j = 0; j < kKeyPassQueries / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int column = pass + fragment_column(j, e);
          const int key = keys.first + row0 + fragment_row(e);
          const bool seen = !masked || sees(first_query + column, key, keys.length);
          p[j][e] = seen ? expf(p[j][e] * job.scale - lse[column]) : 0.0f;
        }
      }
      std::uint32_t operands[kKeyPassQueries / 16][4];
      to_operands<kKeyPassQueries>(p, operands);
      accumulate_product<kHeadDim, kKeyPassQueries>(dv, operands, grad_tile, pass);
      float ds[kKeyPassQueries / 8][4] = {};  // dP until dS
      multiply_by_transposed<kHeadDim, kKeyPassQueries>(ds, value_rows, row0, grad_tile, pass);
#pragma unroll
      for (int j = 0; j < kKeyPassQueries / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          ds[j][e] = p[j][e] * (ds[j][e] - delta[pass + fragment_column(j, e)]) * job.scale;
        }
      }
      to_operands<kKeyPassQueries>(ds, operands);
      accumulate_product<kHeadDim, kKeyPassQueries>(dk, operands, query_tile, pass);
    }
    __syncthreads();  // the buffers are read before the next iteration loads over them
  }

  store_fragments<kHeadDim>(dk, static_cast<bf16*>(job.dk) + key_offset, key_stride, row0,
                            keys.rows);
  store_fragments<kHeadDim>(dv, static_cast<bf16*>(job.dv) + key_offset, key_stride, row0,
                            keys.rows);
}

// Kernel 3 on tensor cores, block (query tile of tile_block, head): dq of its queries, warp w those
// of queries [16 · w, + 16). Dynamic shared memory: 6 tiles (q, d_out; k and v
// double-buffered).
template <int kHeadDim>
__device__ void query_gradients_mma(const AttentionBackwardJob& job, unsigned tile_block,
                                    std::int64_t head, unsigned char* shared_bytes) {
  constexpr int kTileElements = kSharedTileElements<kHeadDim>;
  bf16* query_rows = reinterpret_cast<bf16*>(shared_bytes);  // [kMmaTile, kSharedStride]
  bf16* grad_rows = query_rows + kTileElements;              // [kMmaTile, kSharedStride], d_out
  bf16* key_tiles = grad_rows + kTileElements;               // [2][kMmaTile, kSharedStride]
  bf16* value_tiles = key_tiles + 2 * kTileElements;         // [2][kMmaTile, kSharedStride]
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int row0 = warp * kMmaRows;
  const Tile queries = tile_of(job, true, kMmaTile, tile_block);
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const std::int64_t first_row = queries.sequence_row + queries.first;
  const std::int64_t query_offset = (first_row * job.heads + head) * kHeadDim;
  const std::int64_t query_stride = job.heads * kHeadDim;
  const auto load_keys = [&](int key_tile) {
    const int first_key = key_tile * kMmaTile;
    const std::int64_t offset =
        ((queries.sequence_row + first_key) * job.kv_heads + kv_head) * kHeadDim;
    const int keys = min(kMmaTile, queries.length - first_key);
    load_tile_async<kHeadDim>(static_cast<const bf16*>(job.k) + offset, job.kv_heads * kHeadDim,
                              keys, key_tiles + key_tile % 2 * kTileElements);
    load_tile_async<kHeadDim>(static_cast<const bf16*>(job.v) + offset, job.kv_heads * kHeadDim,
                              keys, value_tiles + key_tile % 2 * kTileElements);
  };
  load_tile_async<kHeadDim>(static_cast<const bf16*>(job.q) + query_offset, query_stride,
                            queries.rows, query_rows);
  load_tile_async<kHeadDim>(static_cast<const bf16*>(job.d_out) + query_offset, query_stride,
                            queries.rows, grad_rows);
  load_keys(0);
  commit_copies();

  float lse[2];  // rows fragment_row(0) and fragment_row(2)
  float delta[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + fragment_row(2 * half);
    const bool valid = row < queries.rows;
    lse[half] = valid ? lse_of(job, head)[first_row + row] : 0.0f;
    delta[half] = valid ? delta_of(job, head)[first_row + row] : 0.0f;
  }

  float dq[kHeadDim / 8][4] = {};
  for (int key_tile = 0; key_tile <= queries.index; ++key_tile) {
    next_pipeline_step(key_tile < queries.index, [&] { load_keys(key_tile + 1); });
    const bf16* key_tile_rows = key_tiles + key_tile % 2 * kTileElements;
    float p[kMmaTile / 8][4] = {};   // scores until exp
    float ds[kMmaTile / 8][4] = {};  // dP until dS
    multiply_by_transposed<kHeadDim, kMmaTile>(p, query_rows, row0, key_tile_rows, 0);
    multiply_by_transposed<kHeadDim, kMmaTile>(ds, grad_rows, row0,
                                               value_tiles + key_tile % 2 * kTileElements, 0);
    const int first_key = key_tile * kMmaTile;
    // Only the diagonal tile holds keys after a query; a query beyond the sequence has zero q
    // and d_out, lse and delta 0, and is not stored.
    const bool masked = key_tile == queries.index;
#pragma unroll
    for (int j = 0; j < kMmaTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int query = queries.first + row0 + fragment_row(e);
        const bool seen = !masked || sees(query, first_key + fragment_column(j, e), queries.length);
        const float probability = seen ? expf(p[j][e] * job.scale - lse[e / 2]) : 0.0f;
        ds[j][e] = probability * (ds[j][e] - delta[e / 2]) * job.scale;
      }
    }
    std::uint32_t operands[kMmaTile / 16][4];
    to_operands<kMmaTile>(ds, operands);
    accumulate_product<kHeadDim, kMmaTile>(dq, operands, key_tile_rows, 0);
    __syncthreads();  // the buffers are read before the next iteration loads over them
  }

  store_fragments<kHeadDim>(dq, static_cast<bf16*>(job.dq) + query_offset, query_stride, row0,
                            queries.rows);
}

// Kernels 2 and 3 on tensor cores in one launch, so that the SMs which kernel 2's short blocks
// leave take kernel 3's blocks rather than idle until its long ones end. Blocks [0, key_blocks)
// are kernel 2's, (key tile, kv head) = (block / kv_heads, block % kv_heads), the others
// kernel 3's, (query tile, head) likewise; each part ranked from the most work. Dynamic shared
// memory: kKeyGradientsMmaBytes, kernel 2's, the larger.
template <int kHeadDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_gradients_mma_kernel(const AttentionBackwardJob job, unsigned key_blocks) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  if (blockIdx.x < key_blocks) {
    key_gradients_mma<kHeadDim>(job, blockIdx.x / job.kv_heads, blockIdx.x % job.kv_heads,
                                shared_bytes);
  } else {
    const unsigned block = blockIdx.x - key_blocks;
    query_gradients_mma<kHeadDim>(job, block / job.heads, block % job.heads, shared_bytes);
  }
}

// ---- Host side.

std::size_t statistics_shared_bytes(std::int64_t head_dim) {
  return static_cast<std::size_t>(kTile * head_dim + kTile * (head_dim + 1)) * sizeof(float);
}

std::size_t gradients_shared_bytes(std::int64_t head_dim) {
  return 2 * statistics_shared_bytes(head_dim);
}

template <int kHeadDim>
constexpr std::size_t kKeyGradientsMmaBytes = mma_shared_bytes<kHeadDim>(6, 4 * kMmaTile);

// Tiles of kMmaTile positions over the sequences.
std::int64_t mma_tile_blocks(const AttentionBackwardJob& job) {
  const std::int64_t length = job.tokens / job.sequences;
  return (length + kMmaTile - 1) / kMmaTile * job.sequences;
}

template <int kHeadDim>
cudaError_t launch_attention_backward_mma(const AttentionBackwardJob& job, cudaStream_t stream) {
  const std::int64_t tile_blocks = mma_tile_blocks(job);
  const auto key_blocks = static_cast<unsigned>(tile_blocks * job.kv_heads);
  const auto query_blocks = static_cast<unsigned>(tile_blocks * job.heads);
  const cudaError_t error =
      launch_with_shared(attention_row_statistics_mma_kernel<kHeadDim>, dim3(query_blocks),
                         kMmaThreads, mma_shared_bytes<kHeadDim>(3, 0), stream, job);
  if (error != cudaSuccess) return error;
  return launch_with_shared(attention_gradients_mma_kernel<kHeadDim>,
                            dim3(key_blocks + query_blocks), kMmaThreads,
                            kKeyGradientsMmaBytes<kHeadDim>, stream, job, key_blocks);
}

// Whether the tensor-core path takes the job: bf16, head_dim 64 or 128, 16-byte aligned arrays
// (cp.async and vector loads), its blocks within grid.x (INT32_MAX) and kernel 2's shared memory
// within the GPU's (103 KiB at head_dim 128: not on sm_86 and sm_89, which keep the CUDA-core
// path).
bool takes_mma_path(const AttentionBackwardJob& job) {
  if (job.dtype != DType::kBF16 || (job.head_dim != 64 && job.head_dim != 128)) return false;
  if (mma_tile_blocks(job) * (job.heads + job.kv_heads) > INT32_MAX) return false;
  for (const void* array :
       {job.q, job.k, job.v, job.out, job.d_out, static_cast<const void*>(job.dq),
        static_cast<const void*>(job.dk), static_cast<const void*>(job.dv)}) {
    if (!is_aligned_16(array)) return false;
  }
  return fits_shared_memory(job.head_dim == 64 ? kKeyGradientsMmaBytes<64>
                                               : kKeyGradientsMmaBytes<128>);
}

template <typename T, int kDimsPerLane>
cudaError_t launch_attention_backward(const AttentionBackwardJob& job, cudaStream_t stream) {
  const bool aligned = is_aligned_16(job.q) && is_aligned_16(job.k) && is_aligned_16(job.v) &&
                       is_aligned_16(job.d_out);
  const std::int64_t length = job.tokens / job.sequences;
  const auto tile_blocks = static_cast<unsigned>((length + kTile - 1) / kTile * job.sequences);
  const dim3 query_grid(tile_blocks, static_cast<unsigned>(job.heads));
  const dim3 key_grid(tile_blocks, static_cast<unsigned>(job.kv_heads));
  cudaError_t error =
      launch_with_shared(attention_row_statistics_kernel<T>, query_grid, kThreads,
                         statistics_shared_bytes(job.head_dim), stream, job, aligned);
  if (error != cudaSuccess) return error;
  const std::size_t bytes = gradients_shared_bytes(job.head_dim);
  error = launch_with_shared(attention_key_gradients_kernel<T, kDimsPerLane>, key_grid, kThreads,
                             bytes, stream, job, aligned);
  if (error != cudaSuccess) return error;
  return launch_with_shared(attention_query_gradients_kernel<T, kDimsPerLane>, query_grid, kThreads,
                            bytes, stream, job, aligned);
}

template <typename T>
cudaError_t launch_attention_backward(const AttentionBackwardJob& job, cudaStream_t stream) {
  if (job.head_dim <= 2 * kWarpSize) return launch_attention_backward<T, 2>(job, stream);
  if (job.head_dim <= 4 * kWarpSize) return launch_attention_backward<T, 4>(job, stream);
  return launch_attention_backward<T, 8>(job, stream);
}

// Besides the contract's shapes: grid.y takes the heads (at most 65535) and grid.x the tiles
// (fewer than the tokens, at most INT32_MAX).
bool valid_attention_backward_job(const AttentionBackwardJob& job) {
  const bool pointers = job.q != nullptr && job.k != nullptr && job.v != nullptr &&
                        job.out != nullptr && job.d_out != nullptr && job.dq != nullptr &&
                        job.dk != nullptr && job.dv != nullptr && job.workspace != nullptr;
  return pointers && job.tokens > 0 && job.tokens <= INT32_MAX && job.heads > 0 &&
         job.heads <= 65535 && job.kv_heads > 0 && job.heads % job.kv_heads == 0 &&
         job.head_dim > 0 && job.head_dim <= kMaxHeadDim && job.head_dim % kChunk == 0 &&
         job.sequences > 0 && job.tokens % job.sequences == 0 &&
         (job.dtype == DType::kF32 || job.dtype == DType::kBF16);
}

}  // namespace

std::size_t attention_backward_workspace_floats(std::int64_t tokens, std::int64_t heads,
                                                std::int64_t /*head_dim*/) {
  if (tokens <= 0 || heads <= 0) return 0;
  return static_cast<std::size_t>(2 * tokens * heads);
}

cudaError_t attention_backward(const AttentionBackwardJob& job, cudaStream_t stream) {
  if (!valid_attention_backward_job(job)) return cudaErrorInvalidValue;
  if (job.dtype == DType::kF32) return launch_attention_backward<float>(job, stream);
  if (takes_mma_path(job)) {
    return job.head_dim == 64 ? launch_attention_backward_mma<64>(job, stream)
                              : launch_attention_backward_mma<128>(job, stream);
  }
  return launch_attention_backward<__nv_bfloat16>(job, stream);
}

}  // namespace kbit::kernels::cuda
