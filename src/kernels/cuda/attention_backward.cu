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
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/activation_parts.cuh"
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

// The block's own tile: blockIdx.x = rank · sequences + sequence, ranks from the tile with the
// most work, so that the long blocks start in the first wave and short ones fill the tail.
struct Tile {
  std::int64_t sequence_row;  // token row of the sequence's position 0
  int length;                 // positions of a sequence
  int count;                  // tiles of a sequence
  int index;                  // of this tile in its sequence
  int first;                  // position of its first row: index · kTile
  int rows;                   // of its kTile rows, those within the sequence
};

// Query tiles see more keys the later they sit, key tiles more queries the earlier:
// `last_first` for query tiles.
__device__ Tile block_tile(const AttentionBackwardJob& job, bool last_first) {
  Tile tile;
  tile.length = static_cast<int>(job.tokens / job.sequences);
  tile.count = (tile.length + kTile - 1) / kTile;
  const auto rank = static_cast<int>(blockIdx.x / job.sequences);
  tile.sequence_row = blockIdx.x % job.sequences * tile.length;
  tile.index = last_first ? tile.count - 1 - rank : rank;
  tile.first = tile.index * kTile;
  tile.rows = min(kTile, tile.length - tile.first);
  return tile;
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

// ---- Host side.

std::size_t statistics_shared_bytes(std::int64_t head_dim) {
  return static_cast<std::size_t>(kTile * head_dim + kTile * (head_dim + 1)) * sizeof(float);
}

std::size_t gradients_shared_bytes(std::int64_t head_dim) {
  return 2 * statistics_shared_bytes(head_dim);
}

template <typename... Parameters>
cudaError_t launch_with_shared(void (*kernel)(Parameters...), dim3 grid, std::size_t shared_bytes,
                               cudaStream_t stream, const AttentionBackwardJob& job, bool aligned) {
  // Beyond 48 KiB a kernel must opt in to more dynamic shared memory.
  const cudaError_t error = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
  if (error != cudaSuccess) return error;
  kernel<<<grid, kThreads, shared_bytes, stream>>>(job, aligned);
  return cudaGetLastError();
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
      launch_with_shared(attention_row_statistics_kernel<T>, query_grid,
                         statistics_shared_bytes(job.head_dim), stream, job, aligned);
  if (error != cudaSuccess) return error;
  const std::size_t bytes = gradients_shared_bytes(job.head_dim);
  error = launch_with_shared(attention_key_gradients_kernel<T, kDimsPerLane>, key_grid, bytes,
                             stream, job, aligned);
  if (error != cudaSuccess) return error;
  return launch_with_shared(attention_query_gradients_kernel<T, kDimsPerLane>, query_grid, bytes,
                            stream, job, aligned);
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
  return launch_attention_backward<__nv_bfloat16>(job, stream);
}

}  // namespace kbit::kernels::cuda
