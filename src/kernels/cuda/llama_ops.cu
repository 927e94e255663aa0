// The CUDA kernels of the Llama forward (contract: llama_launchers.h; numerics: the CPU reference
// kernels of kernels/cpu/llama_ops.h).
//
// Activations are float (kF32) or __nv_bfloat16 (kBF16): T below. Arithmetic is f32; where the
// CPU rounds an intermediate to bf16, round_as<T> does the same (a no-op for float), and a store
// to T rounds the result. Products and sums that the CPU computes as separate roundings use
// __fmul_rn / __fadd_rn, which nvcc never contracts into an FMA, so that these elementwise ops
// give the CPU's bits whenever their inputs agree (the CPU kernels are built with
// -ffp-contract=off).
//
// Shapes of work:
//   - Elementwise ops (add_residual, silu_mul, convert_floats): a grid-stride loop over chunks of
//     8 values (16-byte vectors) when every pointer is 16-byte aligned, else of single values;
//     the last count % 8 values one per thread.
//   - Row ops (embedding_lookup, add_rms_norm): one block per row, the row in chunks of 8 when
//     the row length is a multiple of 8 and the pointers aligned, else single values. The norm
//     reads the row twice (sum of squares, then the scaling), each thread the same elements both
//     times, so the residual it wrote back needs no barrier.
//   - rope_append_kv: a block per (token, group of kRopeHeadsPerBlock heads of q and k), so that
//     one decode token fills many SMs; cos and sin of the token's angles in shared memory, then
//     one thread per (head, pair).
//   - attention, decode (one query): flash-decoding. The keys [0, capacity) fall into chunks
//     (decode_chunk_keys: 32 keys, more beyond 8 192 rows); block (chunk, kv head) computes, for
//     each query head of the kv head, the partial softmax of the chunk's keys in the valid range
//     (max m, sum l of exp(s − m), acc = Σ exp(s − m)·v) into the workspace, reading each key
//     once for all its query heads, and a second kernel combines a head's partials, each
//     rescaled by exp(m − M). The grid depends only on capacity; blocks whose chunk misses the
//     valid range return at once, and the combine reads only the chunks in the range (both
//     derive it from the same device position). rope_append_and_attend gives the same blocks
//     rope_append_kv's work as well, which saves a launch per layer and decode step, and lets
//     each block copy its first tile of cache rows into shared memory before it waits for the
//     q/k/v projection.
//   - attention, prefill in bf16 at head_dim 64 or 128 without a window (training's shapes and
//     the inference prefill's): FlashAttention-2 on tensor cores, attention_forward_mma.cu.
//   - attention, other prefills: block (query tile of kQueryTile tokens, head); key tiles of
//     kKeyTile keys, K and then V staged in shared memory as f32, from the first key the tile's
//     first query sees to the last key its last query sees. Each warp owns kRowsPerWarp queries:
//     lane c computes the scores of key c against them, the warp runs the online softmax with
//     shuffles, then each lane accumulates kDimsPerLane output dimensions of each query in
//     registers.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/async_copy.cuh"
#include "kernels/cuda/attention_forward_mma.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/int8_rowwise_parts.cuh"
#include "kernels/cuda/launch_with_shared.cuh"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/overlapped_launch.cuh"

namespace kbit::kernels::cuda {
namespace {

constexpr int kElementwiseThreads = 256;
constexpr std::int64_t kElementwiseMaxBlocks = 4096;  // grid-stride beyond this
constexpr int kEmbeddingThreads = 256;
constexpr int kNormMaxThreads = 1024;
static_assert(kMaxInt8QuantizedNormCols == kNormMaxThreads * kChunk,
              "add_rms_norm quantizes a row it holds whole, one chunk per thread");
constexpr int kRopeThreads = 128;
constexpr int kRopeHeadsPerBlock = 4;  // a token's heads spread over blocks: decode has one token
constexpr int kMaxHeadDim = 256;

constexpr int kDecodeTile = kWarpSize;  // keys per step of a decode block: lane c scores key c
constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * kWarpSize;
// The bytes of a cache row that a decode block's staged first tile holds: head_dim 128 in bf16
// or f16, 64 in f32. Longer rows are read from global memory.
constexpr int kDecodeStagedRowBytes = 256;
// Whether decode blocks of kQueries query heads a pass stage their first tile. Without GQA (one
// query head a kv head) the tile's 16 KiB of shared memory a block cost more than it saved:
// Llama-2-7B decoded 1% slower at batch 8 and no faster at batch 1 (BENCHMARKS.md, twenty-third
// session).
constexpr bool decode_stages_tiles(int queries) {
  return queries >= 2;
}
constexpr std::int64_t kMaxDecodeChunks = 256;
constexpr int kCombineWarps = 8;
constexpr int kCombineThreads = kCombineWarps * kWarpSize;

constexpr int kKeyTile = kWarpSize;  // lane c owns key c of a tile
constexpr int kRowsPerWarp = 4;
constexpr int kPrefillWarps = 8;
constexpr int kPrefillThreads = kPrefillWarps * kWarpSize;
constexpr int kQueryTile = kPrefillWarps * kRowsPerWarp;

// ---- Elementwise kernels.

// a[i] = op(a[i], b[i]) for i in [0, count).
template <int kWidth, typename T, typename Op>
__global__ void __launch_bounds__(kElementwiseThreads)
    update_kernel(T* __restrict__ a, const T* __restrict__ b, std::int64_t count, Op op) {
  const std::int64_t thread = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t chunks = count / kWidth;
  for (std::int64_t chunk = thread; chunk < chunks; chunk += stride) {
    float x[kWidth];
    float y[kWidth];
    load_values<kWidth>(a + chunk * kWidth, x);
    load_values<kWidth>(b + chunk * kWidth, y);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) x[k] = op(x[k], y[k]);
    store_values<kWidth>(a + chunk * kWidth, x);
  }
  const std::int64_t tail = chunks * kWidth + thread;
  if (tail < count) a[tail] = from_float<T>(op(to_float(a[tail]), to_float(b[tail])));
}

struct AddOp {
  __device__ float operator()(float hidden, float delta) const { return __fadd_rn(hidden, delta); }
};

// silu_mul_reference (silu_mul_value; the store rounds the product).
template <typename T>
struct SiluMulOp {
  __device__ float operator()(float gate, float up) const { return silu_mul_value<T>(gate, up); }
};

// out[i] = In → Out (in[i]) for i in [0, count).
template <int kWidth, typename In, typename Out>
__global__ void __launch_bounds__(kElementwiseThreads)
    convert_kernel(const In* __restrict__ in, Out* __restrict__ out, std::int64_t count) {
  const std::int64_t thread = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t chunks = count / kWidth;
  for (std::int64_t chunk = thread; chunk < chunks; chunk += stride) {
    float values[kWidth];
    load_values<kWidth>(in + chunk * kWidth, values);
    store_values<kWidth>(out + chunk * kWidth, values);
  }
  const std::int64_t tail = chunks * kWidth + thread;
  if (tail < count) out[tail] = from_float<Out>(to_float(in[tail]));
}

// Blocks of kElementwiseThreads for `count` values in chunks of `width`: at least one, for the
// tail.
unsigned elementwise_blocks(std::int64_t count, int width) {
  const std::int64_t chunks = count / width;
  const std::int64_t needed = (chunks + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(
      needed < 1 ? 1 : (needed < kElementwiseMaxBlocks ? needed : kElementwiseMaxBlocks));
}

// ---- Row kernels.

// out [count, hidden] row t = table [vocab, hidden] row tokens[t]; block t.
template <int kWidth, typename Table, typename T>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_kernel(const std::int32_t* __restrict__ tokens, const Table* __restrict__ table,
                     std::int64_t hidden, T* __restrict__ out) {
  const Table* source = table + static_cast<std::int64_t>(tokens[blockIdx.x]) * hidden;
  T* target = out + static_cast<std::int64_t>(blockIdx.x) * hidden;
  for (std::int64_t first = threadIdx.x * kWidth; first < hidden;
       first += static_cast<std::int64_t>(blockDim.x) * kWidth) {
    float values[kWidth];
    load_values<kWidth>(source + first, values);
    store_values<kWidth>(target + first, values);
  }
}

// LLM.int8's quantization of a row of y that the block holds, each thread one chunk `normed` of
// kChunk values [first, first + kChunk) (as stored: rounded to T) where has_chunk, with the
// quantizer's arithmetic (int8_rowwise_parts.cuh): the absmax without the outliers, the outlier
// bits (chunk i's are byte i of them, as the 16-bit words of little-endian bytes hold them), and
// the codes, 0 in outlier columns. Every thread of the block must call it.
__device__ void quantize_held_row_int8(const float (&normed)[kChunk], bool has_chunk,
                                       std::int64_t first, float threshold,
                                       const Int8QuantizedRow& quantized, float* warp_partials) {
  float values[kChunk];
  unsigned outliers = 0;
  Int8RowScan scan;
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    values[k] = int8_input_value(normed[k]);
    if (has_chunk && scan.add(values[k], threshold)) outliers |= 1u << k;
  }
  const bool all_finite = __syncthreads_and(scan.all_finite);
  const bool any_outlier = __syncthreads_or(outliers != 0);
  const float absmax = block_reduce(scan.absmax, MaxFtz{}, warp_partials);
  if (threadIdx.x == 0) {
    *quantized.absmax = int8_row_absmax(absmax, all_finite);
    *quantized.has_outliers = any_outlier ? 1 : 0;
  }
  if (!has_chunk) return;
  const float scale = int8_row_scale(absmax);
  std::uint8_t codes[kChunk];
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    codes[k] = (outliers >> k & 1u) != 0 ? std::uint8_t{0}
                                         : static_cast<std::uint8_t>(int8_code(values[k], scale));
  }
  uint2 packed;
  std::memcpy(&packed, codes, sizeof(packed));
  *reinterpret_cast<uint2*>(quantized.codes + first) = packed;
  reinterpret_cast<std::uint8_t*>(quantized.outlier_bits)[first / kChunk] =
      static_cast<std::uint8_t>(outliers);
}

// hidden, delta, y [rows, cols], weight [cols]; block r takes row r (see add_rms_norm). Each
// thread keeps its first chunk of kWidth values in registers from one pass to the next (the whole
// row where it has at most blockDim.x · kWidth values, as every decode row of a Llama), and its
// weights are requested before the wait: they are constants. With kQuantizeInt8 (one row,
// kWidth == kChunk, cols a multiple of 16 and at most blockDim.x · kChunk) the block also
// quantizes y.
template <int kWidth, typename T, bool kQuantizeInt8 = false>
__global__ void __launch_bounds__(kNormMaxThreads)
    add_rms_norm_kernel(T* __restrict__ hidden, const T* __restrict__ delta,
                        const float* __restrict__ weight, std::int64_t cols, float eps,
                        T* __restrict__ y, const Int8QuantizedRow quantized, float threshold) {
  __shared__ float warp_partials[kNormMaxThreads / kWarpSize];
  allow_next_kernel_start();
  const std::int64_t own = threadIdx.x * kWidth;  // the first chunk, held in registers
  const bool has_chunk = own < cols;
  float held[kWidth] = {};
  float held_weights[kWidth] = {};
  if (has_chunk) load_values<kWidth>(weight + own, held_weights);
  wait_for_previous_kernels();
  const std::int64_t row_offset = static_cast<std::int64_t>(blockIdx.x) * cols;
  T* x = hidden + row_offset;
  const std::int64_t step = static_cast<std::int64_t>(blockDim.x) * kWidth;

  float sum_of_squares = 0.0f;
  for (std::int64_t first = own; first < cols; first += step) {
    float values[kWidth];
    load_values<kWidth>(x + first, values);
    if (delta != nullptr) {
      float deltas[kWidth];
      load_values<kWidth>(delta + row_offset + first, deltas);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) values[k] = round_as<T>(__fadd_rn(values[k], deltas[k]));
      store_values<kWidth>(x + first, values);
    }
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      sum_of_squares += values[k] * values[k];
      if (first == own) held[k] = values[k];
    }
  }
  const float total = block_reduce(sum_of_squares, Sum{}, warp_partials);
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(cols) + eps);

  for (std::int64_t first = own; first < cols; first += step) {
    float values[kWidth];
    float weights[kWidth];
    if (first == own) {
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        values[k] = held[k];
        weights[k] = held_weights[k];
      }
    } else {
      load_values<kWidth>(x + first, values);
      load_values<kWidth>(weight + first, weights);
    }
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      values[k] = __fmul_rn(weights[k], round_as<T>(__fmul_rn(values[k], inv_rms)));
      if (first == own) held[k] = round_as<T>(values[k]);
    }
    store_values<kWidth>(y + row_offset + first, values);
  }
  if constexpr (kQuantizeInt8) {
    static_assert(kWidth == kChunk, "the int8 quantization takes the row in chunks");
    quantize_held_row_int8(held, has_chunk, own, threshold, quantized, warp_partials);
  }
}

// Threads for a row of `units` loads (chunks or single values): one per load, in whole warps,
// within [32, max_threads]; longer rows loop.
int row_threads(std::int64_t units, int max_threads) {
  const std::int64_t rounded = (units + kWarpSize - 1) / kWarpSize * kWarpSize;
  return static_cast<int>(rounded < kWarpSize ? kWarpSize
                                              : (rounded < max_threads ? rounded : max_threads));
}

// ---- RoPE and the cache append.

// cos and sin of pair i's angle at `position`, as rope_reference: angle = f32(position) ·
// inv_freq[i], cos and sin in f32 (cosf and sinf, as std::cos(float) and std::sin(float)),
// rounded to bf16 in a bf16 model.
template <typename T>
__device__ __forceinline__ void rope_cos_sin(std::int64_t position, const float* inv_freq, int i,
                                             float& cos_value, float& sin_value) {
  const float angle = __fmul_rn(static_cast<float>(position), inv_freq[i]);
  cos_value = round_as<T>(cosf(angle));
  sin_value = round_as<T>(sinf(angle));
}

// The pair (a, b) of values i and i + head_dim / 2 of a head, rotated as rope_reference: a·cos
// − b·sin and b·cos + a·sin, each product rounded as T; the caller rounds the results.
template <typename T>
__device__ __forceinline__ float2 rotated_pair(float a, float b, float cos_value, float sin_value) {
  return {__fsub_rn(round_as<T>(__fmul_rn(a, cos_value)), round_as<T>(__fmul_rn(b, sin_value))),
          __fadd_rn(round_as<T>(__fmul_rn(b, cos_value)), round_as<T>(__fmul_rn(a, sin_value)))};
}

// Block (t, g) takes token t's heads [g · kRopeHeadsPerBlock, + kRopeHeadsPerBlock) of the
// heads + kv_heads rows of q and k (see rope_append_kv); the block that rotates k head h also
// copies v head h into the cache.
template <typename T>
__global__ void __launch_bounds__(kRopeThreads) rope_append_kv_kernel(const RopeAppendJob job) {
  __shared__ float cos_of[kMaxHeadDim / 2];
  __shared__ float sin_of[kMaxHeadDim / 2];
  allow_next_kernel_start();
  wait_for_previous_kernels();
  const std::int64_t t = blockIdx.x;
  const std::int64_t per_sequence = job.tokens / job.sequences;
  const std::int64_t position = static_cast<std::int64_t>(*job.first_position) + t % per_sequence;
  if (position < 0 || position >= job.capacity) return;  // the whole block: no barrier is skipped
  const std::int64_t cache_row = t / per_sequence * job.capacity + position;
  const int head_dim = static_cast<int>(job.head_dim);
  const int half = head_dim / 2;
  const int heads = static_cast<int>(job.heads);
  const int kv_heads = static_cast<int>(job.kv_heads);
  const int first_head = static_cast<int>(blockIdx.y) * kRopeHeadsPerBlock;
  const int block_heads = min(kRopeHeadsPerBlock, heads + kv_heads - first_head);

  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    rope_cos_sin<T>(position, job.inv_freq, i, cos_of[i], sin_of[i]);
  }
  __syncthreads();

  T* q = static_cast<T*>(job.q) + t * heads * head_dim;
  const T* k = static_cast<const T*>(job.k) + t * kv_heads * head_dim;
  T* k_row = static_cast<T*>(job.k_cache) + cache_row * kv_heads * head_dim;
  for (int pair = threadIdx.x; pair < block_heads * half; pair += blockDim.x) {
    const int head = first_head + pair / half;
    const int i = pair % half;
    const bool is_query = head < heads;
    const T* source = is_query ? q + head * head_dim : k + (head - heads) * head_dim;
    T* target = is_query ? q + head * head_dim : k_row + (head - heads) * head_dim;
    const float2 rotated =
        rotated_pair<T>(to_float(source[i]), to_float(source[i + half]), cos_of[i], sin_of[i]);
    target[i] = from_float<T>(rotated.x);
    target[i + half] = from_float<T>(rotated.y);
  }

  const int first_kv_head = max(first_head - heads, 0);
  const int last_kv_head = first_head + block_heads - heads;  // exclusive
  if (last_kv_head <= first_kv_head) return;
  const T* v = static_cast<const T*>(job.v) + t * kv_heads * head_dim;
  T* v_row = static_cast<T*>(job.v_cache) + cache_row * kv_heads * head_dim;
  for (int i = first_kv_head * head_dim + static_cast<int>(threadIdx.x);
       i < last_kv_head * head_dim; i += blockDim.x) {
    v_row[i] = v[i];
  }
}

// ---- Attention.

// The keys a query at `position` sees, [first, last] (empty when last < first), clamped to the
// cache: a position outside it, which the contract excludes, reads no memory outside it.
struct KeyRange {
  std::int64_t first;
  std::int64_t last;
};

__device__ __forceinline__ KeyRange key_range(std::int64_t position, std::int64_t window,
                                              std::int64_t capacity) {
  const std::int64_t first = window > 0 ? max(std::int64_t{0}, position - window + 1) : 0;
  return {first, min(position, capacity - 1)};
}

// The decode's own RoPE and cache append (rope_append_and_attend): the token's k and v rows
// [sequences, kv_heads, head_dim], the frequencies and the caches to append to (the job's);
// inv_freq is nullptr where q is rotated and the cache appended already (attention).
struct DecodeRope {
  const void* k;
  const void* v;
  const float* inv_freq;
  void* k_cache;
  void* v_cache;
};

// Requests into L2 the rows [first, last] of one kv head of both caches, a 128-byte line per
// thread (see the decode kernel's comment for why this may come before the wait).
template <typename T>
__device__ __forceinline__ void prefetch_cache_rows(const T* k_rows, const T* v_rows,
                                                    std::int64_t key_stride, std::int64_t first,
                                                    std::int64_t last, int head_dim) {
  constexpr int kLineBytes = 128;
  const int row_lines = (head_dim * static_cast<int>(sizeof(T)) + kLineBytes - 1) / kLineBytes;
  const std::int64_t lines = (last - first + 1) * row_lines;
  for (std::int64_t i = threadIdx.x; i < 2 * lines; i += blockDim.x) {
    const std::int64_t line = i % lines;
    const T* row = (i < lines ? k_rows : v_rows) + (first + line / row_lines) * key_stride;
    const char* address = reinterpret_cast<const char*>(row) + line % row_lines * kLineBytes;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
  }
}

// Copies into k_tile and v_tile [rows, head_dim] (shared memory) the cache rows [first, first +
// rows) of one kv head, all but the row at `skipped`, with cp.async in one committed group; rows
// 16-byte aligned, head_dim · sizeof(T) a multiple of 16.
template <typename T>
__device__ __forceinline__ void stage_cache_rows(const T* k_rows, const T* v_rows,
                                                 std::int64_t key_stride, std::int64_t first,
                                                 int rows, std::int64_t skipped, int head_dim,
                                                 T* k_tile, T* v_tile) {
  const int row_vectors = head_dim * static_cast<int>(sizeof(T)) / 16;
  for (int i = threadIdx.x; i < rows * row_vectors; i += blockDim.x) {
    const int r = i / row_vectors;
    if (first + r == skipped) continue;
    const int vector = i % row_vectors;
    const std::int64_t row = (first + r) * key_stride;
    copy_async_16(reinterpret_cast<uint4*>(k_tile + r * head_dim) + vector,
                  reinterpret_cast<const uint4*>(k_rows + row) + vector);
    copy_async_16(reinterpret_cast<uint4*>(v_tile + r * head_dim) + vector,
                  reinterpret_cast<const uint4*>(v_rows + row) + vector);
  }
  commit_copies();
}

// The token's k row of one kv head rotated, and its v row, into the cache rows k_row and v_row,
// and where k_staged is set into the staged tile's rows k_staged and v_staged as well; cos_of and
// sin_of hold the position's angles.
template <typename T>
__device__ __forceinline__ void append_token_kv(const T* k, const T* v, T* k_row, T* v_row,
                                                int head_dim, const float* cos_of,
                                                const float* sin_of, T* k_staged, T* v_staged) {
  const int half = head_dim / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float2 rotated =
        rotated_pair<T>(to_float(k[i]), to_float(k[i + half]), cos_of[i], sin_of[i]);
    const T low = from_float<T>(rotated.x);
    const T high = from_float<T>(rotated.y);
    k_row[i] = low;
    k_row[i + half] = high;
    if (k_staged != nullptr) {
      k_staged[i] = low;
      k_staged[i + half] = high;
    }
  }
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    const T value = v[i];
    v_row[i] = value;
    if (v_staged != nullptr) v_staged[i] = value;
  }
}

// The decode partials of chunk blockIdx.x (chunk_keys keys) for the query heads of kv head
// blockIdx.y of sequence blockIdx.z, kQueries query heads per pass: workspace [sequences, heads,
// chunks, 2 + head_dim] holds m, l, acc[head_dim] per query head. The chunk's keys go a tile of
// kDecodeTile at a time. Scores: lane c of every warp takes key c, warp w the 8-value pieces w,
// w + kDecodeWarps, … of it, for every query of the pass. Softmax: warp w keeps the running max m
// and sum l of exp(s − m) of queries w, w + kDecodeWarps, …. Values: thread (piece, key group)
// accumulates exp(s − m)·v over its piece of every key-groups-th key, rescaled by exp(m_old −
// m_new) as the max grows; the key groups are summed at the end of the pass. With bf16,
// exp(s − m) is rounded before it multiplies V (the running max stands in for the global max of
// attention_reference).
//
// With rope.inv_freq set, the block first does its share of rope_append_kv: it rotates the
// queries it reads (in shared memory; q stays as it was), and the block whose chunk holds the
// position rotates the token's k row and appends it and the v row to the cache, before its own
// barriers and reads of that row. Before the wait, the block reads its chunk's cache rows: the
// position is written before the step's first kernel, never by a kernel of the stream, and of
// those rows only the one at the position changes (the append). Where `stageable` (rope.inv_freq
// set, rows of at most kDecodeStagedRowBytes, 16-byte aligned) and decode_stages_tiles, it copies
// the first tile's rows but the position's into shared memory (stage_cache_rows), where the append
// writes that row too, so that the tile's scores and values wait on no global load after the wait
// (in the Llama-3.1-8B decode step this kernel took 4.7 µs a layer instead of 6.6 reading them from
// L2; BENCHMARKS.md, twenty-third session); the later tiles' rows it requests into L2, which, the
// point of coherence, keeps the appended row current.
template <typename T, int kQueries>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode_chunk_kernel(const AttentionJob job, const DecodeRope rope,
                                  std::int64_t chunk_keys, bool aligned, bool stageable) {
  constexpr int kQueriesPerWarp = (kQueries + kDecodeWarps - 1) / kDecodeWarps;
  constexpr bool kStages = decode_stages_tiles(kQueries);
  constexpr int kStagedTileValues = kStages ? kDecodeTile * kDecodeStagedRowBytes / sizeof(T) : 1;
  __shared__ __align__(16) T k_tile[kStagedTileValues];
  __shared__ __align__(16) T v_tile[kStagedTileValues];
  __shared__ float q_tile[kQueries][kMaxHeadDim];
  __shared__ float dot_parts[kDecodeWarps][kQueries][kDecodeTile];
  __shared__ float probabilities[kQueries][kDecodeTile];
  __shared__ float rescales[kQueries];
  __shared__ float group_sums[kDecodeThreads * kChunk];
  __shared__ float cos_of[kMaxHeadDim / 2];
  __shared__ float sin_of[kMaxHeadDim / 2];
  allow_next_kernel_start();
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t kv_head = blockIdx.y;
  const std::int64_t sequence = blockIdx.z;
  const std::int64_t position = *job.first_position;
  const KeyRange range = key_range(position, job.window, job.capacity);
  const std::int64_t first = max(range.first, chunk * chunk_keys);
  const std::int64_t last = min(range.last, chunk * chunk_keys + chunk_keys - 1);
  const int head_dim = static_cast<int>(job.head_dim);
  const int half = head_dim / 2;
  const std::int64_t key_stride = job.kv_heads * head_dim;
  const std::int64_t cache_offset = sequence * job.capacity * key_stride + kv_head * head_dim;
  const T* k_cache = static_cast<const T*>(job.k_cache) + cache_offset;
  const T* v_cache = static_cast<const T*>(job.v_cache) + cache_offset;
  if (first > last) {  // the same for every thread of the block
    wait_for_previous_kernels();
    return;
  }
  const bool staged = kStages && stageable;
  const int staged_rows =
      staged ? static_cast<int>(min(std::int64_t{kDecodeTile}, last - first + 1)) : 0;
  if (staged) {
    stage_cache_rows(k_cache, v_cache, key_stride, first, staged_rows, position, head_dim, k_tile,
                     v_tile);
  }
  if (first + staged_rows <= last) {
    prefetch_cache_rows(k_cache, v_cache, key_stride, first + staged_rows, last, head_dim);
  }
  wait_for_previous_kernels();

  const bool rotate = rope.inv_freq != nullptr && position >= 0 && position < job.capacity;
  if (rotate) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      rope_cos_sin<T>(position, rope.inv_freq, i, cos_of[i], sin_of[i]);
    }
    __syncthreads();
    if (position / chunk_keys == chunk) {
      const std::int64_t token_row = (sequence * job.kv_heads + kv_head) * head_dim;
      const std::int64_t cache_row = cache_offset + position * key_stride;
      const bool in_tile = position < first + staged_rows;
      const std::int64_t tile_row = (position - first) * head_dim;
      append_token_kv(static_cast<const T*>(rope.k) + token_row,
                      static_cast<const T*>(rope.v) + token_row,
                      static_cast<T*>(rope.k_cache) + cache_row,
                      static_cast<T*>(rope.v_cache) + cache_row, head_dim, cos_of, sin_of,
                      in_tile ? k_tile + tile_row : nullptr, in_tile ? v_tile + tile_row : nullptr);
    }
  }
  const int pieces = head_dim / kChunk;  // at most 32
  const int group = static_cast<int>(job.heads / job.kv_heads);
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int key_groups = kDecodeThreads / pieces;
  const int piece = static_cast<int>(threadIdx.x) % pieces;
  const int key_group = static_cast<int>(threadIdx.x) / pieces;  // idle for values if >= key_groups

  for (int pass = 0; pass < group; pass += kQueries) {
    const std::int64_t first_query = sequence * job.heads + kv_head * group + pass;
    // The previous pass is done with q_tile and group_sums; the appended row is written.
    __syncthreads();
    const T* q = static_cast<const T*>(job.q) + first_query * head_dim;
    if (rotate) {
      for (int index = threadIdx.x; index < kQueries * half; index += blockDim.x) {
        const int i = index / half;
        const int j = index % half;
        const float2 rotated =
            rotated_pair<T>(to_float(q[i * head_dim + j]), to_float(q[i * head_dim + j + half]),
                            cos_of[j], sin_of[j]);
        q_tile[i][j] = round_as<T>(rotated.x);
        q_tile[i][j + half] = round_as<T>(rotated.y);
      }
    } else {
      for (int index = threadIdx.x; index < kQueries * pieces; index += blockDim.x) {
        const int i = index / pieces;
        const int offset = index % pieces * kChunk;
        float values[kChunk];
        load_chunk(q + i * head_dim + offset, aligned, values);
#pragma unroll
        for (int e = 0; e < kChunk; ++e) q_tile[i][offset + e] = values[e];
      }
    }
    float running_max[kQueriesPerWarp];
    float running_sum[kQueriesPerWarp];
#pragma unroll
    for (int s = 0; s < kQueriesPerWarp; ++s) {
      running_max[s] = -INFINITY;
      running_sum[s] = 0.0f;
    }
    float acc[kQueries][kChunk] = {};
    if (staged) wait_copies<0>();  // before the barrier that makes the tile visible to all
    __syncthreads();

    for (std::int64_t tile = first; tile <= last; tile += kDecodeTile) {
      const int count = static_cast<int>(min(std::int64_t{kDecodeTile}, last - tile + 1));
      float dot[kQueries] = {};
      const bool from_tile = staged && tile == first;
      if (lane < count) {
        const T* key = from_tile ? k_tile + lane * head_dim : k_cache + (tile + lane) * key_stride;
        for (int p = warp; p < pieces; p += kDecodeWarps) {
          float values[kChunk];
          load_chunk(key + p * kChunk, aligned, values);
#pragma unroll
          for (int i = 0; i < kQueries; ++i) {
#pragma unroll
            for (int e = 0; e < kChunk; ++e) dot[i] += q_tile[i][p * kChunk + e] * values[e];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kQueries; ++i) dot_parts[warp][i][lane] = dot[i];
      __syncthreads();

#pragma unroll
      for (int s = 0; s < kQueriesPerWarp; ++s) {
        const int i = warp + s * kDecodeWarps;
        if (i < kQueries) {
          float score = -INFINITY;
          if (lane < count) {
            float sum = 0.0f;
            for (int w = 0; w < kDecodeWarps; ++w) sum += dot_parts[w][i][lane];
            score = sum * job.scale;
          }
          const float new_max = fmaxf(running_max[s], warp_reduce(score, Max{}));  // finite
          const float p = lane < count ? expf(score - new_max) : 0.0f;
          const float rescale = expf(running_max[s] - new_max);  // 0 on the first tile
          running_sum[s] = running_sum[s] * rescale + warp_reduce(p, Sum{});
          running_max[s] = new_max;
          probabilities[i][lane] = round_as<T>(p);
          if (lane == 0) rescales[i] = rescale;
        }
      }
      __syncthreads();  // the next tile's softmax, which rewrites these, waits at its first barrier

      if (key_group < key_groups) {
#pragma unroll
        for (int i = 0; i < kQueries; ++i) {
#pragma unroll
          for (int e = 0; e < kChunk; ++e) acc[i][e] *= rescales[i];
        }
        for (int c = key_group; c < count; c += key_groups) {
          float values[kChunk];
          const T* value = from_tile ? v_tile + c * head_dim : v_cache + (tile + c) * key_stride;
          load_chunk(value + piece * kChunk, aligned, values);
#pragma unroll
          for (int i = 0; i < kQueries; ++i) {
#pragma unroll
            for (int e = 0; e < kChunk; ++e) acc[i][e] += probabilities[i][c] * values[e];
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < kQueries; ++i) {
      float* partial = job.workspace + ((first_query + i) * gridDim.x + chunk) * (2 + head_dim);
      __syncthreads();  // the previous query's sums are read
      if (key_group < key_groups) {
#pragma unroll
        for (int e = 0; e < kChunk; ++e) {
          group_sums[key_group * head_dim + piece * kChunk + e] = acc[i][e];
        }
      }
      __syncthreads();
      for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
        for (int g = 0; g < key_groups; ++g) sum += group_sums[g * head_dim + d];
        partial[2 + d] = sum;
      }
      if (lane == 0 && warp == i % kDecodeWarps) {
        partial[0] = running_max[i / kDecodeWarps];
        partial[1] = running_sum[i / kDecodeWarps];
      }
    }
  }
}

// out row of head blockIdx.x of sequence blockIdx.y = Σ acc·exp(m − M) / Σ l·exp(m − M) over the
// chunks in the valid range, M their largest m; the division as attention_reference: times
// 1 / total. Warp w sums the chunks w, w + kCombineWarps, … (lane c dimensions c, c + 32, …),
// so that a long context's chunks are read by several warps at once; the warps' sums meet in
// shared memory.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
    attention_decode_combine_kernel(const AttentionJob job, std::int64_t chunk_keys,
                                    std::int64_t chunks) {
  constexpr int kDimsPerLane = kMaxHeadDim / kWarpSize;
  __shared__ float warp_partials[kCombineWarps];
  __shared__ float weights[kMaxDecodeChunks];  // exp(m − M) of the chunks in the range
  __shared__ float warp_sums[kCombineWarps][kMaxHeadDim];
  allow_next_kernel_start();
  wait_for_previous_kernels();
  const std::int64_t query = static_cast<std::int64_t>(blockIdx.y) * job.heads + blockIdx.x;
  const int head_dim = static_cast<int>(job.head_dim);
  T* out = static_cast<T*>(job.out) + query * head_dim;
  const KeyRange range = key_range(*job.first_position, job.window, job.capacity);
  if (range.last < range.first) {
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) out[i] = from_float<T>(0.0f);
    return;
  }
  const std::int64_t first_chunk = range.first / chunk_keys;
  const int used = static_cast<int>(range.last / chunk_keys - first_chunk + 1);
  const std::int64_t partial_size = 2 + head_dim;
  const float* partials = job.workspace + (query * chunks + first_chunk) * partial_size;

  float local_max = -INFINITY;
  for (int c = threadIdx.x; c < used; c += blockDim.x) {
    local_max = fmaxf(local_max, partials[c * partial_size]);
  }
  const float max_score = block_reduce(local_max, Max{}, warp_partials);
  float local_sum = 0.0f;
  for (int c = threadIdx.x; c < used; c += blockDim.x) {
    const float* partial = partials + c * partial_size;
    weights[c] = expf(partial[0] - max_score);
    local_sum += partial[1] * weights[c];
  }
  const float inv_total = 1.0f / block_reduce(local_sum, Sum{}, warp_partials);  // a barrier

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  float acc[kDimsPerLane] = {};
#pragma unroll 4
  for (int c = warp; c < used; c += kCombineWarps) {
    const float* values = partials + c * partial_size + 2;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int i = lane + k * kWarpSize;
      if (i < head_dim) acc[k] += values[i] * weights[c];
    }
  }
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int i = lane + k * kWarpSize;
    if (i < head_dim) warp_sums[warp][i] = acc[k];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < kCombineWarps; ++w) total += warp_sums[w][i];
    out[i] = from_float<T>(total * inv_total);
  }
}

// tile [kKeyTile, head_dim + 1] (the odd stride keeps lane c's reads of row c conflict-free) =
// cache rows [tile_start, tile_start + kKeyTile) of one kv head; rows outside [span.first,
// span.last] are zero, so that masked keys multiply nothing non-finite.
template <typename T>
__device__ void load_key_tile(const T* cache /* rows of stride key_stride */,
                              std::int64_t key_stride, std::int64_t tile_start, KeyRange span,
                              int head_dim, bool aligned, float* tile) {
  const int chunks_per_row = head_dim / kChunk;
  for (int index = threadIdx.x; index < kKeyTile * chunks_per_row; index += blockDim.x) {
    const int c = index / chunks_per_row;
    const int i = index % chunks_per_row * kChunk;
    const std::int64_t j = tile_start + c;
    float values[kChunk] = {};
    if (j >= span.first && j <= span.last) load_chunk(cache + j * key_stride + i, aligned, values);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) tile[c * (head_dim + 1) + i + k] = values[k];
  }
}

// One online-softmax step of a warp's query rows over a key tile: the scores (lane c: key c,
// -inf where masked) update the running max m and sum l, rescale acc, and give the
// probabilities exp(score − m) that multiply V, rounded in bf16 (l sums them unrounded, as
// attention_reference does). A row that has seen no key yet keeps m = -inf, l = 0 and gets
// probabilities 0: exp is taken relative to 0 rather than to -inf, which would give NaN.
template <typename T, int kDimsPerLane>
__device__ __forceinline__ void online_softmax_step(const float (&scores)[kRowsPerWarp],
                                                    float (&m)[kRowsPerWarp],
                                                    float (&l)[kRowsPerWarp],
                                                    float (&acc)[kRowsPerWarp][kDimsPerLane],
                                                    float (&probabilities)[kRowsPerWarp]) {
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float new_max = fmaxf(m[r], warp_reduce(scores[r], Max{}));
    const float reference = new_max == -INFINITY ? 0.0f : new_max;
    const float rescale = expf(m[r] - reference);
    const float p = expf(scores[r] - reference);
    l[r] = l[r] * rescale + warp_reduce(p, Sum{});
    m[r] = new_max;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) acc[r][d] *= rescale;
    probabilities[r] = round_as<T>(p);
  }
}

// Block (query tile blockIdx.x, head blockIdx.y); see the file comment. Dynamic shared memory:
// prefill_shared_bytes(head_dim).
template <typename T, int kDimsPerLane>
__global__ void __launch_bounds__(kPrefillThreads)
    attention_prefill_kernel(const AttentionJob job, bool aligned) {
  extern __shared__ float shared[];
  const int head_dim = static_cast<int>(job.head_dim);
  float* q_tile = shared;                           // [kQueryTile, head_dim]
  float* kv_tile = shared + kQueryTile * head_dim;  // [kKeyTile, head_dim + 1]
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const std::int64_t first_token = static_cast<std::int64_t>(blockIdx.x) * kQueryTile;
  const std::int64_t last_token = min(first_token + kQueryTile, job.tokens) - 1;
  const std::int64_t head = blockIdx.y;
  const std::int64_t kv_head = head / (job.heads / job.kv_heads);
  const std::int64_t key_stride = job.kv_heads * head_dim;
  const std::int64_t first_position = *job.first_position;
  const T* q = static_cast<const T*>(job.q);

  const int chunks_per_row = head_dim / kChunk;
  for (int index = threadIdx.x; index < kQueryTile * chunks_per_row; index += blockDim.x) {
    const int r = index / chunks_per_row;
    const int i = index % chunks_per_row * kChunk;
    const std::int64_t t = first_token + r;
    float values[kChunk] = {};
    if (t <= last_token) load_chunk(q + (t * job.heads + head) * head_dim + i, aligned, values);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) q_tile[r * head_dim + i + k] = values[k];
  }

  KeyRange rows[kRowsPerWarp];
  float m[kRowsPerWarp];
  float l[kRowsPerWarp];
  float acc[kRowsPerWarp][kDimsPerLane] = {};
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const std::int64_t t = first_token + warp * kRowsPerWarp + r;
    rows[r] =
        t <= last_token ? key_range(first_position + t, job.window, job.capacity) : KeyRange{0, -1};
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  // Key ranges grow with the position: the first query's starts first, the last's ends last.
  const KeyRange span{key_range(first_position + first_token, job.window, job.capacity).first,
                      key_range(first_position + last_token, job.window, job.capacity).last};

  const float* q_rows = q_tile + warp * kRowsPerWarp * head_dim;
  for (std::int64_t tile_start = span.first / kKeyTile * kKeyTile; tile_start <= span.last;
       tile_start += kKeyTile) {
    __syncthreads();  // the q tile is written; the previous V tile is read
    load_key_tile(static_cast<const T*>(job.k_cache) + kv_head * head_dim, key_stride, tile_start,
                  span, head_dim, aligned, kv_tile);
    __syncthreads();
    float scores[kRowsPerWarp] = {};
    const float* key = kv_tile + lane * (head_dim + 1);
    for (int i = 0; i < head_dim; ++i) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) scores[r] += q_rows[r * head_dim + i] * key[i];
    }
    const std::int64_t j = tile_start + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const bool visible = j >= rows[r].first && j <= rows[r].last;
      scores[r] = visible ? scores[r] * job.scale : -INFINITY;
    }
    float probabilities[kRowsPerWarp];
    online_softmax_step<T>(scores, m, l, acc, probabilities);

    __syncthreads();  // the K tile is read
    load_key_tile(static_cast<const T*>(job.v_cache) + kv_head * head_dim, key_stride, tile_start,
                  span, head_dim, aligned, kv_tile);
    __syncthreads();
    for (int c = 0; c < kKeyTile; ++c) {
      float p[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) p[r] = __shfl_sync(0xffffffffu, probabilities[r], c);
      const float* value = kv_tile + c * (head_dim + 1);
#pragma unroll
      for (int d = 0; d < kDimsPerLane; ++d) {
        const int i = lane + d * kWarpSize;
        const float v = i < head_dim ? value[i] : 0.0f;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) acc[r][d] += p[r] * v;
      }
    }
  }

  T* out = static_cast<T*>(job.out);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const std::int64_t t = first_token + warp * kRowsPerWarp + r;
    if (t > last_token) continue;
    const float inv_total = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) {
      const int i = lane + d * kWarpSize;
      if (i < head_dim) {
        out[(t * job.heads + head) * head_dim + i] = from_float<T>(acc[r][d] * inv_total);
      }
    }
  }
}

std::size_t prefill_shared_bytes(std::int64_t head_dim) {
  return static_cast<std::size_t>(kQueryTile * head_dim + kKeyTile * (head_dim + 1)) *
         sizeof(float);
}

// Keys per decode chunk: a tile, doubled until the capacity takes at most kMaxDecodeChunks.
std::int64_t decode_chunk_keys(std::int64_t capacity) {
  std::int64_t keys = kDecodeTile;
  while (keys * kMaxDecodeChunks < capacity) keys *= 2;
  return keys;
}

std::int64_t decode_chunks(std::int64_t capacity) {
  const std::int64_t keys = decode_chunk_keys(capacity);
  return (capacity + keys - 1) / keys;
}

// ---- Host side.

template <typename T, typename Op>
cudaError_t launch_update(void* a, const void* b, std::int64_t count, Op op, cudaStream_t stream) {
  T* typed_a = static_cast<T*>(a);
  const T* typed_b = static_cast<const T*>(b);
  if (is_aligned_16(a) && is_aligned_16(b)) {
    update_kernel<kChunk><<<elementwise_blocks(count, kChunk), kElementwiseThreads, 0, stream>>>(
        typed_a, typed_b, count, op);
  } else {
    update_kernel<1><<<elementwise_blocks(count, 1), kElementwiseThreads, 0, stream>>>(
        typed_a, typed_b, count, op);
  }
  return cudaGetLastError();
}

template <typename T, int kQueries>
cudaError_t launch_decode(const AttentionJob& job, const DecodeRope& rope, bool aligned,
                          cudaStream_t stream) {
  const std::int64_t chunk_keys = decode_chunk_keys(job.capacity);
  const std::int64_t chunks = decode_chunks(job.capacity);
  const auto sequences = static_cast<unsigned>(job.sequences);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(job.kv_heads), sequences);
  const bool stageable =
      aligned && rope.inv_freq != nullptr &&
      job.head_dim * static_cast<std::int64_t>(sizeof(T)) <= kDecodeStagedRowBytes;
  const cudaError_t error =
      launch_overlapped(attention_decode_chunk_kernel<T, kQueries>, grid, kDecodeThreads, 0, stream,
                        job, rope, chunk_keys, aligned, stageable);
  if (error != cudaSuccess) return error;
  return launch_overlapped(attention_decode_combine_kernel<T>,
                           dim3(static_cast<unsigned>(job.heads), sequences), kCombineThreads, 0,
                           stream, job, chunk_keys, chunks);
}

// A kv head's query heads go in passes of the most of 8, 4, 2, 1 that divides their number.
template <typename T>
cudaError_t launch_decode(const AttentionJob& job, const DecodeRope& rope, cudaStream_t stream) {
  const bool aligned =
      is_aligned_16(job.q) && is_aligned_16(job.k_cache) && is_aligned_16(job.v_cache);
  const std::int64_t group = job.heads / job.kv_heads;
  if (group % 8 == 0) return launch_decode<T, 8>(job, rope, aligned, stream);
  if (group % 4 == 0) return launch_decode<T, 4>(job, rope, aligned, stream);
  if (group % 2 == 0) return launch_decode<T, 2>(job, rope, aligned, stream);
  return launch_decode<T, 1>(job, rope, aligned, stream);
}

template <typename T, int kDimsPerLane>
cudaError_t launch_prefill(const AttentionJob& job, bool aligned, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((job.tokens + kQueryTile - 1) / kQueryTile),
                  static_cast<unsigned>(job.heads));
  // Beyond 48 KiB (head_dim > 188) the kernel needs more dynamic shared memory than the default.
  return launch_with_shared(attention_prefill_kernel<T, kDimsPerLane>, grid, kPrefillThreads,
                            prefill_shared_bytes(job.head_dim), stream, job, aligned);
}

template <typename T>
cudaError_t launch_attention(const AttentionJob& job, cudaStream_t stream) {
  if (job.tokens == 1) return launch_decode<T>(job, DecodeRope{}, stream);
  const bool aligned =
      is_aligned_16(job.q) && is_aligned_16(job.k_cache) && is_aligned_16(job.v_cache);
  if (job.head_dim <= 2 * kWarpSize) return launch_prefill<T, 2>(job, aligned, stream);
  if (job.head_dim <= 4 * kWarpSize) return launch_prefill<T, 4>(job, aligned, stream);
  return launch_prefill<T, 8>(job, aligned, stream);
}

bool valid_rope_job(const RopeAppendJob& job) {
  return job.tokens >= 0 && job.heads > 0 && job.kv_heads > 0 && job.head_dim > 0 &&
         job.head_dim % 2 == 0 && job.head_dim <= kMaxHeadDim && job.tokens <= INT32_MAX &&
         (job.heads + job.kv_heads) * job.head_dim <= INT32_MAX &&
         job.heads + job.kv_heads <= std::int64_t{kRopeHeadsPerBlock} * 65535 &&
         job.sequences >= 1 && job.tokens % job.sequences == 0;
}

// Whether rope and job describe one decode step: the shapes, dtype, position and buffers they
// share agree, and there is one token per sequence.
bool same_decode_step(const RopeAppendJob& rope, const AttentionJob& job) {
  return job.tokens == 1 && rope.tokens == job.sequences && rope.sequences == job.sequences &&
         rope.heads == job.heads && rope.kv_heads == job.kv_heads &&
         rope.head_dim == job.head_dim && rope.first_position == job.first_position &&
         rope.capacity == job.capacity && rope.dtype == job.dtype && rope.q == job.q &&
         rope.k_cache == job.k_cache && rope.v_cache == job.v_cache;
}

bool valid_attention_job(const AttentionJob& job) {
  return job.tokens >= 0 && job.heads > 0 && job.kv_heads > 0 && job.heads % job.kv_heads == 0 &&
         job.heads <= 65535 && job.head_dim > 0 && job.head_dim <= kMaxHeadDim &&
         job.head_dim % kChunk == 0 && job.capacity > 0 && job.window >= 0 &&
         (job.tokens != 1 || job.workspace != nullptr) && job.sequences >= 1 &&
         job.sequences <= 65535 && (job.sequences == 1 || job.tokens == 1);
}

}  // namespace

cudaError_t embedding_lookup(const std::int32_t* tokens, std::int64_t count, const void* table,
                             DType table_dtype, std::int64_t hidden, void* out, DType dtype,
                             cudaStream_t stream) {
  if (count < 0 || hidden < 0 || count > INT32_MAX) return cudaErrorInvalidValue;
  if (count == 0 || hidden == 0) return cudaSuccess;
  const bool vectors = hidden % kChunk == 0 && is_aligned_16(table) && is_aligned_16(out);
  return visit_activation_dtype(dtype, [&](auto out_type) {
    using T = typename decltype(out_type)::type;
    return visit_float_dtype(table_dtype, [&](auto table_type) {
      using Table = typename decltype(table_type)::type;
      const Table* typed_table = static_cast<const Table*>(table);
      T* typed_out = static_cast<T*>(out);
      const auto blocks = static_cast<unsigned>(count);
      if (vectors) {
        embedding_kernel<kChunk>
            <<<blocks, kEmbeddingThreads, 0, stream>>>(tokens, typed_table, hidden, typed_out);
      } else {
        embedding_kernel<1>
            <<<blocks, kEmbeddingThreads, 0, stream>>>(tokens, typed_table, hidden, typed_out);
      }
      return cudaGetLastError();
    });
  });
}

cudaError_t add_rms_norm(void* hidden, const void* delta, const float* weight, std::int64_t rows,
                         std::int64_t cols, float eps, void* y, DType dtype, cudaStream_t stream,
                         const Int8QuantizedRow* quantized_y, float int8_threshold) {
  if (rows < 0 || cols < 0 || rows > INT32_MAX) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  const bool vectors = cols % kChunk == 0 && is_aligned_16(hidden) && is_aligned_16(weight) &&
                       is_aligned_16(y) && (delta == nullptr || is_aligned_16(delta));
  if (quantized_y != nullptr && (rows != 1 || cols % 16 != 0 || cols > kMaxInt8QuantizedNormCols ||
                                 !vectors || !is_aligned_16(quantized_y->codes) ||
                                 !(int8_threshold >= 0.0f) || !isfinite(int8_threshold))) {
    return cudaErrorInvalidValue;
  }
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    T* typed_hidden = static_cast<T*>(hidden);
    const T* typed_delta = static_cast<const T*>(delta);
    T* typed_y = static_cast<T*>(y);
    const auto blocks = static_cast<unsigned>(rows);
    const int chunk_threads = row_threads(cols / kChunk, kNormMaxThreads);
    if (quantized_y != nullptr) {
      return launch_overlapped(add_rms_norm_kernel<kChunk, T, true>, blocks, chunk_threads, 0,
                               stream, typed_hidden, typed_delta, weight, cols, eps, typed_y,
                               *quantized_y, int8_threshold);
    }
    if (vectors) {
      return launch_overlapped(add_rms_norm_kernel<kChunk, T>, blocks, chunk_threads, 0, stream,
                               typed_hidden, typed_delta, weight, cols, eps, typed_y,
                               Int8QuantizedRow{}, 0.0f);
    }
    return launch_overlapped(add_rms_norm_kernel<1, T>, blocks, row_threads(cols, kNormMaxThreads),
                             0, stream, typed_hidden, typed_delta, weight, cols, eps, typed_y,
                             Int8QuantizedRow{}, 0.0f);
  });
}

cudaError_t add_residual(void* hidden, const void* delta, std::int64_t count, DType dtype,
                         cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_update<T>(hidden, delta, count, AddOp{}, stream);
  });
}

cudaError_t rope_append_kv(const RopeAppendJob& job, cudaStream_t stream) {
  if (!valid_rope_job(job)) return cudaErrorInvalidValue;
  if (job.tokens == 0) return cudaSuccess;
  return visit_activation_dtype(job.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const auto head_groups = static_cast<unsigned>(
        (job.heads + job.kv_heads + kRopeHeadsPerBlock - 1) / kRopeHeadsPerBlock);
    return launch_overlapped(rope_append_kv_kernel<T>,
                             dim3(static_cast<unsigned>(job.tokens), head_groups), kRopeThreads, 0,
                             stream, job);
  });
}

std::size_t attention_workspace_floats(std::int64_t /*tokens*/, std::int64_t heads,
                                       std::int64_t head_dim, std::int64_t capacity,
                                       std::int64_t sequences) {
  if (heads <= 0 || head_dim <= 0 || capacity <= 0 || sequences <= 0) return 0;
  return static_cast<std::size_t>(sequences * heads * decode_chunks(capacity) * (2 + head_dim));
}

cudaError_t attention(const AttentionJob& job, cudaStream_t stream) {
  if (!valid_attention_job(job)) return cudaErrorInvalidValue;
  if (job.tokens == 0) return cudaSuccess;
  if (attention_forward_mma_takes(job)) return attention_forward_mma(job, stream);
  return visit_activation_dtype(job.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_attention<T>(job, stream);
  });
}

cudaError_t rope_append_and_attend(const RopeAppendJob& rope, const AttentionJob& job,
                                   cudaStream_t stream) {
  if (!valid_rope_job(rope) || !valid_attention_job(job) || !same_decode_step(rope, job)) {
    return cudaErrorInvalidValue;
  }
  return visit_activation_dtype(job.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_decode<T>(
        job, DecodeRope{rope.k, rope.v, rope.inv_freq, rope.k_cache, rope.v_cache}, stream);
  });
}

cudaError_t silu_mul(void* gate, const void* up, std::int64_t count, DType dtype,
                     cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_update<T>(gate, up, count, SiluMulOp<T>{}, stream);
  });
}

cudaError_t convert_floats(const void* in, DType in_dtype, void* out, DType out_dtype,
                           std::int64_t count, cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const bool vectors = is_aligned_16(in) && is_aligned_16(out);
  return visit_float_dtype(in_dtype, [&](auto in_type) {
    using In = typename decltype(in_type)::type;
    return visit_float_dtype(out_dtype, [&](auto out_type) {
      using Out = typename decltype(out_type)::type;
      const In* typed_in = static_cast<const In*>(in);
      Out* typed_out = static_cast<Out*>(out);
      if (vectors) {
        convert_kernel<kChunk>
            <<<elementwise_blocks(count, kChunk), kElementwiseThreads, 0, stream>>>(
                typed_in, typed_out, count);
      } else {
        convert_kernel<1><<<elementwise_blocks(count, 1), kElementwiseThreads, 0, stream>>>(
            typed_in, typed_out, count);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace kbit::kernels::cuda
