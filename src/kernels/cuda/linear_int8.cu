// The LLM.int8 Linear layer on the GPU (contract: linear_launchers.h; arithmetic: spec 6.3, as
// kernels/cpu/quantized_linear_reference.cc's linear_int8_reference defines it).
//
// One row (decode) with at most kQuantizingGemvMaxInputs inputs: int8_row_gemv_kernel does steps
// 1-7 in one launch, each block quantizing the row itself with the quantizer's arithmetic
// (int8_rowwise_parts.cuh), or steps 5-7 on the row's quantization that add_rms_norm made
// (int8_quantized_row.h).
//
// Otherwise steps 1-4 reuse the row-wise quantizer of int8_rowwise.cu, which reads x in its own
// dtype and rounds each value to f16 first, as the reference does. With a threshold, one block
// then turns the outlier-column mask into an ascending list and its length, both left in device
// memory: the later kernels read the count there, so the host never waits for the GPU. Then
// step 5 (the int32 products), fused with steps 6-7 for a few rows:
//   rows <= kInt8GemvMaxRows  int8_gemv_kernel: a block of 256 threads takes 4 output features;
//                             its threads split the in dimension, read 16-byte vectors of the
//                             4 weight rows and of every activation row, multiply them with
//                             __dp4a, and meet in shared memory. One pass over the weight serves
//                             every row.
//   more rows                 cuBLASLt's int8 GEMM into int32 ("TN": row-major y = x · Wᵀ is the
//                             column-major yᵀ = W · xᵀ with W transposed), then
//                             int8_epilogue_kernel on tiles of 32 rows × 32 output features.
//                             Where cuBLASLt has no algorithm for the shape (it wants in and out
//                             multiples of 4), int8_products_kernel, a tiled __dp4a GEMM, writes
//                             the same products.
// Integer sums are exact, so everything but the outlier columns' f32 sum is bit for bit the
// reference's; that sum runs in another order.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include "core/cuda_runtime.h"
#include "kbit/quant/codebooks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_queries.h"
#include "kernels/cuda/fused_layers.h"
#include "kernels/cuda/int8_quantized_row.h"
#include "kernels/cuda/int8_rowwise_parts.cuh"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"
#include "kernels/cuda/overlapped_launch.cuh"
#include "kernels/cuda/quant_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr std::int64_t kInt8GemvMaxRows = 8;
constexpr int kGemvThreads = 256;
constexpr int kGemvOutputs = 4;  // output features per block of int8_gemv_kernel
constexpr int kCompactThreads = 1024;
constexpr int kElementwiseThreads = 256;
constexpr int kTile = 32;           // rows and output features of an epilogue or products tile
constexpr int kTileThreadRows = 8;  // blockDim (kTile, kTileThreadRows)
constexpr int kTileThreads = kTile * kTileThreadRows;
constexpr int kTileRowsPerThread = kTile / kTileThreadRows;
constexpr int kChunkWords = 8;  // products kernel: 32 bytes of each row per step
constexpr std::int64_t kMaxTileRows = std::int64_t{65535} * kTile;  // gridDim.y limit

// Steps 1-4's results in the workspace, and the layer's tensors, as the output kernels read them.
template <typename T>
struct Int8OutputArgs {
  const T* x;                           // [rows, in]
  const std::int8_t* codes;             // CA [rows, in]
  const float* row_absmax;              // SCA [rows]
  const std::int32_t* outlier_columns;  // [*outlier_count], ascending
  const std::int32_t* outlier_count;    // [1], or nullptr without a threshold
  const std::int8_t* weight;            // CB [out, in]
  const float* weight_absmax;           // SCB [out]
  const T* bias;                        // [out] or nullptr
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
  T* y;  // [rows, out]
};

__device__ __forceinline__ float rounded_to_f16(float value) {
  return __half2float(__float2half_rn(value));
}

template <typename T>
__device__ __forceinline__ float rounded_to(float value) {
  return to_float(from_float<T>(value));
}

// round_X(W'[o][j]) with W' = fl32(fl32(CB · SCB) · 1/127), the weight as the outlier part uses it.
template <typename T>
__device__ __forceinline__ float dequantized_weight(std::int8_t code, float weight_absmax) {
  const float scaled = __fmul_rn(static_cast<float>(code), weight_absmax);
  return rounded_to<T>(__fmul_rn(scaled, quant::kInt8DequantScale));
}

// out[i] = T(CB[i] · fl32(SCB[o] · 1/127)), o = i / in, i in [0, count): MatMul8bitLt's backward
// matrix, CB.to(T).mul_(SCB.unsqueeze(1).mul(1.0 / 127.0)) (the codes are exact in T; the product
// is taken in f32 and rounded once).
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
    dequantize_int8_weight_kernel(const std::int8_t* __restrict__ codes,
                                  const float* __restrict__ row_absmax, std::int64_t in,
                                  std::int64_t count, T* __restrict__ out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float scale = __fmul_rn(row_absmax[i / in], quant::kInt8DequantScale);
    out[i] = from_float<T>(__fmul_rn(static_cast<float>(codes[i]), scale));
  }
}

__device__ __forceinline__ int outlier_count_of(const std::int32_t* outlier_count) {
  return outlier_count != nullptr ? *outlier_count : 0;
}

// Steps 6-7 for element (row, o): `row_absmax` is SCA[row], `product` C[row][o], `outlier_sum`
// the f32 sum Σ_j x[row][j] · round_X(W'[o][j]) over the outlier columns (read only when there
// are some).
// The bias has the activation dtype, never f16, so it is added after the f16 rounding.
template <typename T>
__device__ __forceinline__ T int8_output(const Int8OutputArgs<T>& args, float row_absmax,
                                         std::int64_t o, std::int32_t product, float outlier_sum,
                                         bool has_outliers) {
  const float scaled =
      __fmul_rn(__fmul_rn(__int2float_rn(product), row_absmax), args.weight_absmax[o]);
  float y = rounded_to_f16(__fmaf_rn(scaled, quant::kInt8MatmulDequantScale, 0.0f));
  if (args.bias != nullptr) y = rounded_to_f16(__fadd_rn(y, to_float(args.bias[o])));
  y = rounded_to<T>(y);
  if (has_outliers) y = rounded_to<T>(__fadd_rn(y, outlier_sum));
  return from_float<T>(y);
}

// is_outlier_column [cols] -> outlier_columns [count] ascending, outlier_count [1]. One block;
// each pass over blockDim.x columns places its outliers after those of earlier passes.
__global__ void __launch_bounds__(kCompactThreads)
    compact_outlier_columns_kernel(const std::uint8_t* __restrict__ is_outlier_column,
                                   std::int64_t cols, std::int32_t* __restrict__ outlier_columns,
                                   std::int32_t* __restrict__ outlier_count) {
  __shared__ int warp_counts[kCompactThreads / 32];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  int found = 0;
  for (std::int64_t first = 0; first < cols; first += kCompactThreads) {
    const std::int64_t j = first + threadIdx.x;
    const bool outlier = j < cols && is_outlier_column[j] != 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, outlier);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int position = found + __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) position += warp_counts[w];
    if (outlier) outlier_columns[position] = static_cast<std::int32_t>(j);
    for (int w = 0; w < kCompactThreads / 32; ++w) found += warp_counts[w];
    __syncthreads();  // warp_counts is rewritten by the next pass
  }
  if (threadIdx.x == 0) *outlier_count = found;
}

__device__ __forceinline__ int dot_16_codes(int4 a, int4 w, int sum) {
  sum = __dp4a(a.x, w.x, sum);
  sum = __dp4a(a.y, w.y, sum);
  sum = __dp4a(a.z, w.z, sum);
  return __dp4a(a.w, w.w, sum);
}

// Values [first, first + 16) of a row of x as the quantizer takes them (int8_input_value), 0
// past `in`. `vector_ok` promises first + 16 <= in and a 16-byte aligned row + first.
template <typename T>
__device__ __forceinline__ void load_16_inputs(const T* __restrict__ row, std::int64_t first,
                                               std::int64_t in, bool vector_ok,
                                               float (&values)[16]) {
  if (vector_ok) {
    constexpr int kPerVector = kValuesPerVector<T>;
#pragma unroll
    for (int v = 0; v < 16 / kPerVector; ++v) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + first) + v);
      T elements[kPerVector];
      std::memcpy(elements, &raw, sizeof(raw));
#pragma unroll
      for (int k = 0; k < kPerVector; ++k)
        values[v * kPerVector + k] = int8_input_value(elements[k]);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 16; ++k) values[k] = first + k < in ? int8_input_value(row[first + k]) : 0.0f;
}

// Codes [first, first + 16) of a weight row, 0 past `in`; read once, streamed past the caches.
__device__ __forceinline__ int4 load_16_weight_codes(const std::int8_t* __restrict__ row,
                                                     std::int64_t first, std::int64_t in,
                                                     bool vector_ok) {
  if (vector_ok) return __ldcs(reinterpret_cast<const int4*>(row + first));
  std::int8_t bytes[16];
#pragma unroll
  for (int k = 0; k < 16; ++k) bytes[k] = first + k < in ? row[first + k] : std::int8_t{0};
  int4 codes;
  std::memcpy(&codes, bytes, sizeof(codes));
  return codes;
}

// Byte k (0..15) of 16 codes.
__device__ __forceinline__ std::int8_t byte_of(int4 codes, int k) {
  const int word = k < 8 ? (k < 4 ? codes.x : codes.y) : (k < 12 ? codes.z : codes.w);
  return static_cast<std::int8_t>(word >> (8 * (k % 4)));
}

// 16 codes packed as __dp4a takes them, code c in byte c % 4 of word c / 4.
__device__ __forceinline__ int4 pack_16_codes(const std::int8_t (&codes)[16]) {
  int words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    words[i] = static_cast<int>(
        static_cast<std::uint8_t>(codes[4 * i]) |
        static_cast<std::uint32_t>(static_cast<std::uint8_t>(codes[4 * i + 1])) << 8 |
        static_cast<std::uint32_t>(static_cast<std::uint8_t>(codes[4 * i + 2])) << 16 |
        static_cast<std::uint32_t>(static_cast<std::uint8_t>(codes[4 * i + 3])) << 24);
  }
  return make_int4(words[0], words[1], words[2], words[3]);
}

// The 16 codes with byte c zeroed where bit c of `outliers` is set.
__device__ __forceinline__ int4 zero_outlier_codes(int4 codes, std::uint32_t outliers) {
  // Bits 0..3 of a nibble to bytes 0..3 (the shifted copies never overlap), then to 0xff each.
  const auto kept = [&](int word, int i) {
    const std::uint32_t nibble = (outliers >> (4 * i)) & 0xfu;
    const std::uint32_t cleared = ((nibble * 0x00204081u) & 0x01010101u) * 0xffu;
    return static_cast<int>(static_cast<std::uint32_t>(word) & ~cleared);
  };
  return make_int4(kept(codes.x, 0), kept(codes.y, 1), kept(codes.z, 2), kept(codes.w, 3));
}

// The threads' sums [kFeatures][kRows] of a GEMV block, met in shared memory in a fixed order:
// gather() (every thread of the block calls it, with the same `has_outliers` in every block)
// leaves sum i = k · kRows + r of (feature k, row r) for product(i) and outlier_sum(i).
template <int kFeatures, int kRows>
struct GemvBlockSums {
  static constexpr int kSums = kFeatures * kRows;
  static constexpr int kWarps = kGemvThreads / 32;
  std::int32_t warp_products[kWarps][kSums];
  float warp_outlier_sums[kWarps][kSums];

  __device__ __forceinline__ void gather(const std::int32_t (&products)[kFeatures][kRows],
                                         const float (&outlier_sums)[kFeatures][kRows],
                                         bool has_outliers) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
    for (int k = 0; k < kFeatures; ++k) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const std::int32_t product = warp_sum(products[k][r]);
        const float outlier_sum = has_outliers ? warp_sum(outlier_sums[k][r]) : 0.0f;
        if (lane == 0) {
          warp_products[warp][k * kRows + r] = product;
          warp_outlier_sums[warp][k * kRows + r] = outlier_sum;
        }
      }
    }
    __syncthreads();
  }
  __device__ __forceinline__ std::int32_t product(int i) const {
    std::int32_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_products[w][i];
    return total;
  }
  __device__ __forceinline__ float outlier_sum(int i) const {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += warp_outlier_sums[w][i];
    return total;
  }
};

// The end of a GEMV block (steps 6-7): the block's sums of output features [first_out,
// first_out + kFeatures) meet (GemvBlockSums), and thread k · kRows + r stores y[r][first_out + k]
// (none beyond out). row_absmax(r) gives SCA[r]. `has_outliers` must be the same for every
// block. Every thread of the block must call it.
template <typename T, int kFeatures, int kRows, typename RowAbsmax>
__device__ __forceinline__ void store_gemv_outputs(const Int8OutputArgs<T>& args,
                                                   std::int64_t first_out,
                                                   const std::int32_t (&products)[kFeatures][kRows],
                                                   const float (&outlier_sums)[kFeatures][kRows],
                                                   bool has_outliers, RowAbsmax row_absmax) {
  __shared__ GemvBlockSums<kFeatures, kRows> sums;
  sums.gather(products, outlier_sums, has_outliers);
  const int i = static_cast<int>(threadIdx.x);
  if (i >= kFeatures * kRows) return;
  const std::int64_t o = first_out + i / kRows;
  const int row = i % kRows;
  if (o >= args.out) return;
  args.y[row * args.out + o] =
      int8_output(args, row_absmax(row), o, sums.product(i), sums.outlier_sum(i), has_outliers);
}

// Steps 5-7 for rows [0, kRows) and output features [blockIdx.x · 4, +4). `vector_ok` promises
// in % 16 == 0 and 16-byte aligned codes and weight. A block's last features may lie beyond
// out: they read the last weight row and write nothing.
template <typename T, int kRows>
__global__ void __launch_bounds__(kGemvThreads)
    int8_gemv_kernel(const Int8OutputArgs<T> args, bool vector_ok) {
  const std::int64_t first_out = static_cast<std::int64_t>(blockIdx.x) * kGemvOutputs;
  const std::int64_t in = args.in;
  std::int64_t features[kGemvOutputs];
#pragma unroll
  for (int k = 0; k < kGemvOutputs; ++k) features[k] = min(first_out + k, args.out - 1);

  std::int32_t products[kGemvOutputs][kRows] = {};
  if (vector_ok) {
    const auto* codes = reinterpret_cast<const int4*>(args.codes);
    const auto* weight = reinterpret_cast<const int4*>(args.weight);
    const std::int64_t vectors = in / 16;
    for (std::int64_t v = threadIdx.x; v < vectors; v += kGemvThreads) {
      int4 w[kGemvOutputs];
#pragma unroll
      for (int k = 0; k < kGemvOutputs; ++k) w[k] = __ldg(weight + features[k] * vectors + v);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int4 a = __ldg(codes + r * vectors + v);
#pragma unroll
        for (int k = 0; k < kGemvOutputs; ++k)
          products[k][r] = dot_16_codes(a, w[k], products[k][r]);
      }
    }
  } else {
    for (std::int64_t j = threadIdx.x; j < in; j += kGemvThreads) {
#pragma unroll
      for (int k = 0; k < kGemvOutputs; ++k) {
        const int w = args.weight[features[k] * in + j];
#pragma unroll
        for (int r = 0; r < kRows; ++r) products[k][r] += args.codes[r * in + j] * w;
      }
    }
  }

  const int outliers = outlier_count_of(args.outlier_count);
  float outlier_sums[kGemvOutputs][kRows] = {};
  for (int c = static_cast<int>(threadIdx.x); c < outliers; c += kGemvThreads) {
    const std::int64_t j = args.outlier_columns[c];
#pragma unroll
    for (int k = 0; k < kGemvOutputs; ++k) {
      const float w =
          dequantized_weight<T>(args.weight[features[k] * in + j], args.weight_absmax[features[k]]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        outlier_sums[k][r] += __fmul_rn(to_float(args.x[r * in + j]), w);
      }
    }
  }

  store_gemv_outputs<T>(args, first_out, products, outlier_sums, outliers > 0,
                        [&](int row) { return args.row_absmax[row]; });
}

// The one-row GEMV: a row GEMV (fused_layers.h) of kQuantizingGemvWarps warps.
constexpr int kQuantizingGemvWarps = kGemvThreads / 32;
// Vectors of each weight row in flight per lane: 4 at 64 registers, four blocks per SM; 8 (about
// 120 registers, two blocks per SM) for launches of at most two blocks per SM, which leave the
// registers unused otherwise: o and down of the 8B-class shapes, 4096 outputs in 256 blocks
// (BENCHMARKS.md: 0.7% of the int8 decode step).
constexpr int kQuantizingGemvUnroll = 4;
constexpr int kQuantizingGemvBlocksPerMultiprocessor = 4;
constexpr int kFewBlocksGemvUnroll = 8;
constexpr int kFewBlocksPerMultiprocessor = 2;

// The blocks per multiprocessor that an instance with kUnroll vectors in flight is built for.
constexpr int row_gemv_blocks_per_multiprocessor(int unroll) {
  return unroll == kFewBlocksGemvUnroll ? kFewBlocksPerMultiprocessor
                                        : kQuantizingGemvBlocksPerMultiprocessor;
}

// The most inputs of the self-quantizing GEMV: the block's copy of x as codes and its outlier
// bits (18 bytes per 16 inputs) then take 144 KiB of shared memory.
constexpr std::int64_t kQuantizingGemvMaxInputs = 128 * 1024;

std::size_t quantizing_gemv_shared_bytes(std::int64_t in) {
  const auto vectors = static_cast<std::size_t>((in + 15) / 16);
  return vectors * (sizeof(int4) + sizeof(std::uint16_t));
}

// The layers of one launch of the one-row GEMV, all of the same x and in. With kStore, layer i
// owns blocks [end_block[i − 1], end_block[i]) (end_block[−1] = 0), row_gemv_block_features each;
// with kSiluMul every block takes the same features of gate (layer 0) and of up (layer 1). Their
// codes, row_absmax and outlier lists are not used: x's quantization is `quantized_x` where an
// earlier kernel made it, else each block's own.
template <typename T>
struct Int8GemvLayers {
  Int8OutputArgs<T> layer[kMaxFusedLayers];
  int end_block[kMaxFusedLayers];
  int count;
  Int8QuantizedRow quantized_x;
};

// x's quantization as the one-row GEMV reads it: codes and outlier bits in shared memory, the
// absmax as stored, and whether any column is an outlier (the same in every block).
struct RowCodes {
  const int4* codes;                  // [vectors]
  const std::uint16_t* outlier_bits;  // [vectors]
  float row_absmax;
  bool any_outlier;
};

// One row x [in] quantized by the whole block (every thread must call it) into `codes` and
// `outlier_bits` [vectors] of shared memory: thread t takes the 16-value vectors t, t + 256, …;
// pass 1 finds the absmax without the outliers and the outlier columns; pass 2 turns each vector
// into codes with the quantizer's arithmetic (int8_rowwise_parts.cuh), 0 in outlier columns.
template <typename T>
__device__ __forceinline__ RowCodes quantize_row_in_shared(const T* __restrict__ x, std::int64_t in,
                                                           bool vector_ok, float threshold,
                                                           int4* codes, std::uint16_t* outlier_bits,
                                                           float* absmax_partials) {
  const std::int64_t vectors = (in + 15) / 16;
  Int8RowScan scan;
  bool any_outlier = false;
  for (std::int64_t v = threadIdx.x; v < vectors; v += kGemvThreads) {
    float values[16];
    load_16_inputs(x, 16 * v, in, vector_ok, values);
    std::uint32_t outliers = 0;  // bit c: column 16v + c
#pragma unroll
    for (int c = 0; c < 16; ++c) outliers |= (scan.add(values[c], threshold) ? 1u : 0u) << c;
    outlier_bits[v] = static_cast<std::uint16_t>(outliers);
    any_outlier = any_outlier || outliers != 0;
  }
  const bool all_finite = __syncthreads_and(scan.all_finite);
  // Every block sees every column, so all agree on whether there are outlier columns.
  any_outlier = __syncthreads_or(any_outlier);
  const float absmax = group_max(scan.absmax, kGemvThreads, absmax_partials);
  const float scale = int8_row_scale(absmax);
  for (std::int64_t v = threadIdx.x; v < vectors; v += kGemvThreads) {
    float values[16];
    load_16_inputs(x, 16 * v, in, vector_ok, values);
    std::int8_t bytes[16];
#pragma unroll
    for (int c = 0; c < 16; ++c) bytes[c] = int8_code(values[c], scale);
    codes[v] = zero_outlier_codes(pack_16_codes(bytes), outlier_bits[v]);
  }
  __syncthreads();
  return {codes, outlier_bits, int8_row_absmax(absmax, all_finite), any_outlier};
}

// x's quantization as an earlier kernel left it (read after the wait for it), its codes and
// outlier bits copied into `codes` and `outlier_bits` [vectors] of shared memory by the whole
// block (every thread must call it).
__device__ __forceinline__ RowCodes copy_quantized_row_to_shared(const Int8QuantizedRow& quantized,
                                                                 std::int64_t vectors, int4* codes,
                                                                 std::uint16_t* outlier_bits) {
  const auto* global_codes = reinterpret_cast<const int4*>(quantized.codes);
  for (std::int64_t v = threadIdx.x; v < vectors; v += kGemvThreads) {
    codes[v] = __ldg(global_codes + v);
    outlier_bits[v] = __ldg(quantized.outlier_bits + v);
  }
  const RowCodes row{codes, outlier_bits, *quantized.absmax, *quantized.has_outliers != 0};
  __syncthreads();
  return row;
}

// Steps 1-7 for one row of x in one kernel, so that a decode step's Linear is one launch instead
// of four (the outlier mask's reset, the quantizer, the outlier list, the products), and the
// layers of one x (q, k and v; gate and up, with silu_mul applied to their outputs) one launch
// between them. With more rows every block would read all of them: at 8 rows this form made the
// decode step 3.4x slower than the quantizer's launches (BENCHMARKS.md).
//   Before the wait (overlapped_launch.cuh) each lane requests its first weight vectors: x and y
//   belong to the kernels around this one.
//   Quantizing: with kPrequantized an earlier kernel (add_rms_norm) left x's quantization in
//   layers.quantized_x, and each block copies it into shared memory (read from global memory in
//   the loop instead, it made the decode step 4% slower: BENCHMARKS.md); otherwise each block
//   quantizes x itself (a few KiB, read from L2 by every block), quantize_row_in_shared.
//   Products: as linear_float's GEMV, each warp reads two weight rows (two features of a layer,
//   or with kSiluMul one feature of gate and the same of up), lane l their 16-byte vectors l,
//   l + 32, …, kUnroll of each in flight, multiplied by __dp4a with x's codes;
//   outlier columns add x · round_X(W') in f32. The lanes' sums meet in a butterfly of shuffles.
// Every weight row's sums run in the order of a single layer's launch, so fusing changes no bit.
// `vector_ok` promises in % 16 == 0 and 16-byte aligned x and weights. A block's last features may
// lie beyond out: they read the last weight row and write nothing. With kQuantizingGemvUnroll,
// four blocks per multiprocessor (64 registers; unbounded it took 80, three blocks): its warps
// spend half their cycles waiting for global loads, and the fourth block took 14336 × 4096 from
// 0.79 to 0.86 of the copy (BENCHMARKS.md); with kFewBlocksGemvUnroll, two.
template <typename T, LinearEpilogue kEpilogue, bool kPrequantized, int kUnroll>
__global__ void __launch_bounds__(kGemvThreads, row_gemv_blocks_per_multiprocessor(kUnroll))
    int8_row_gemv_kernel(const __grid_constant__ Int8GemvLayers<T> layers, float threshold,
                         bool vector_ok) {
  constexpr bool kSiluMul = kEpilogue == LinearEpilogue::kSiluMul;
  constexpr int kRows = kRowGemvWarpRows;
  extern __shared__ int4 shared_codes[];  // [vectors], then the outlier bits [vectors] (uint16)
  __shared__ float absmax_partials[kQuantizingGemvWarps];
  const BlockLayer block =
      kSiluMul ? BlockLayer{0, 0} : block_layer(layers.end_block, layers.count);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const T* x = layers.layer[0].x;
  const std::int64_t in = layers.layer[0].in;
  const std::int64_t vectors = (in + 15) / 16;

  // Weight row k of this warp: a feature of layer block.layer, or with kSiluMul of gate (k = 0)
  // and up (k = 1). Features past the last re-read the last one; their sums are never stored.
  const std::int64_t first_feature =
      row_gemv_first_feature(block, kQuantizingGemvWarps, warp, kEpilogue);
  const Int8OutputArgs<T>* row_args[kRows];
  std::int64_t features[kRows];
  const std::int8_t* weight_rows[kRows];
#pragma unroll
  for (int k = 0; k < kRows; ++k) {
    row_args[k] = &layers.layer[kSiluMul ? k : block.layer];
    features[k] = min(first_feature + (kSiluMul ? 0 : k), row_args[k]->out - 1);
    weight_rows[k] = row_args[k]->weight + features[k] * in;
  }
  int4 w[kRows][kUnroll];
  const auto load_weights = [&](std::int64_t first) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = first + u * 32;
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        w[k][u] = v < vectors ? load_16_weight_codes(weight_rows[k], 16 * v, in, vector_ok)
                              : make_int4(0, 0, 0, 0);
      }
    }
  };
  load_weights(lane);
  wait_for_previous_kernels();

  auto* shared_bits = reinterpret_cast<std::uint16_t*>(shared_codes + vectors);
  RowCodes row;
  if constexpr (kPrequantized) {
    row = copy_quantized_row_to_shared(layers.quantized_x, vectors, shared_codes, shared_bits);
  } else {
    row = quantize_row_in_shared(x, in, vector_ok, threshold, shared_codes, shared_bits,
                                 absmax_partials);
  }

  std::int32_t products[kRows] = {};
  float outlier_sums[kRows] = {};
  constexpr int kStride = 32 * kUnroll;
  for (std::int64_t first = lane; first < vectors; first += kStride) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = first + u * 32;
      if (v >= vectors) break;
      const int4 codes = row.codes[v];
#pragma unroll
      for (int k = 0; k < kRows; ++k) products[k] = dot_16_codes(codes, w[k][u], products[k]);
      if (!row.any_outlier) continue;
      for (std::uint32_t rest = row.outlier_bits[v]; rest != 0; rest &= rest - 1) {
        const int c = __ffs(static_cast<int>(rest)) - 1;
        const float value = to_float(x[16 * v + c]);
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          const float weight =
              dequantized_weight<T>(byte_of(w[k][u], c), row_args[k]->weight_absmax[features[k]]);
          outlier_sums[k] += __fmul_rn(value, weight);
        }
      }
    }
    if (first + kStride < vectors) load_weights(first + kStride);
  }
  allow_next_kernel_start();
#pragma unroll
  for (int k = 0; k < kRows; ++k) {
    products[k] = warp_sum(products[k]);
    if (row.any_outlier) outlier_sums[k] = warp_sum(outlier_sums[k]);
  }
  if (lane != 0) return;
  const auto output = [&](int k) {
    return int8_output(*row_args[k], row.row_absmax, features[k], products[k], outlier_sums[k],
                       row.any_outlier);
  };
  if constexpr (kSiluMul) {
    if (first_feature < row_args[0]->out) {
      row_args[0]->y[first_feature] =
          from_float<T>(silu_mul_value<T>(to_float(output(0)), to_float(output(1))));
    }
  } else {
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const std::int64_t o = first_feature + k;
      if (o < row_args[k]->out) row_args[k]->y[o] = output(k);
    }
  }
}

// Steps 6-7 for a tile of kTile rows × kTile output features, given the products [rows, out].
// Each thread takes one feature (threadIdx.x) and kTileRowsPerThread rows. The outlier part is a
// small GEMM over kTile columns at a time, staged in shared memory.
template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    int8_epilogue_kernel(const Int8OutputArgs<T> args, const std::int32_t* __restrict__ products,
                         const float* __restrict__ precomputed_sums) {
  __shared__ float tile_x[kTile][kTile];      // [tile row][column]
  __shared__ float tile_w[kTile][kTile + 1];  // [tile feature][column]; +1: no bank conflicts
  const std::int64_t first_row = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const std::int64_t first_out = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const int outliers = outlier_count_of(args.outlier_count);
  // The outlier sums here, unless a GEMM made them already (precomputed_sums [rows, out]).
  const int columns_here = precomputed_sums == nullptr ? outliers : 0;
  float outlier_sums[kTileRowsPerThread] = {};
  for (int first_column = 0; first_column < columns_here; first_column += kTile) {
    const int c = first_column + static_cast<int>(threadIdx.x);
    const bool column_ok = c < outliers;
    const std::int64_t j = column_ok ? args.outlier_columns[c] : 0;
#pragma unroll
    for (int i = 0; i < kTileRowsPerThread; ++i) {
      const int tile_row = static_cast<int>(threadIdx.y) + kTileThreadRows * i;
      const std::int64_t row = first_row + tile_row;
      const std::int64_t o = first_out + tile_row;
      tile_x[tile_row][threadIdx.x] =
          column_ok && row < args.rows ? to_float(args.x[row * args.in + j]) : 0.0f;
      tile_w[tile_row][threadIdx.x] =
          column_ok && o < args.out
              ? dequantized_weight<T>(args.weight[o * args.in + j], args.weight_absmax[o])
              : 0.0f;
    }
    __syncthreads();
    for (int k = 0; k < kTile; ++k) {
      const float w = tile_w[threadIdx.x][k];
#pragma unroll
      for (int i = 0; i < kTileRowsPerThread; ++i) {
        outlier_sums[i] += __fmul_rn(tile_x[threadIdx.y + kTileThreadRows * i][k], w);
      }
    }
    __syncthreads();  // the tiles are rewritten by the next pass
  }

  const std::int64_t o = first_out + threadIdx.x;
  if (o >= args.out) return;
#pragma unroll
  for (int i = 0; i < kTileRowsPerThread; ++i) {
    const std::int64_t row = first_row + threadIdx.y + kTileThreadRows * i;
    if (row >= args.rows) continue;
    const float sum =
        precomputed_sums != nullptr ? precomputed_sums[row * args.out + o] : outlier_sums[i];
    args.y[row * args.out + o] =
        int8_output(args, args.row_absmax[row], o, products[row * args.out + o], sum, outliers > 0);
  }
}

// x's outlier columns: gathered [rows, count] = x[:, columns[j]], j < count.
template <typename T>
__global__ void gather_outlier_x_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t in,
                                        const std::int32_t* __restrict__ columns, int count,
                                        T* __restrict__ gathered) {
  const std::int64_t n = rows * count;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    gathered[i] = x[(i / count) * in + columns[i % count]];
  }
}

// The weight's outlier columns for features [first_out, first_out + features), dequantized as
// the outlier part uses them: gathered [features, count] = round_X(W'[o][columns[j]]).
template <typename T>
__global__ void gather_outlier_weight_kernel(const std::int8_t* __restrict__ weight,
                                             const float* __restrict__ weight_absmax,
                                             std::int64_t in,
                                             const std::int32_t* __restrict__ columns, int count,
                                             std::int64_t first_out, std::int64_t features,
                                             T* __restrict__ gathered) {
  const std::int64_t n = features * count;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t o = first_out + i / count;
    gathered[i] =
        from_float<T>(dequantized_weight<T>(weight[o * in + columns[i % count]], weight_absmax[o]));
  }
}

// Four codes of row[k0, k0 + 4) packed into a word for __dp4a, 0 beyond `end`.
__device__ __forceinline__ int packed_codes(const std::int8_t* __restrict__ row, std::int64_t k0,
                                            std::int64_t end) {
  unsigned word = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    const unsigned code = k0 + b < end ? static_cast<std::uint8_t>(row[k0 + b]) : 0u;
    word |= code << (8 * b);
  }
  return static_cast<int>(word);
}

// products [rows, out] = codes [rows, in] · weight [out, in]ᵀ in int32, for shapes cuBLASLt does
// not take: tiles of kTile rows × kTile features, kChunkWords words of in at a time.
__global__ void __launch_bounds__(kTileThreads)
    int8_products_kernel(const std::int8_t* __restrict__ codes,
                         const std::int8_t* __restrict__ weight, std::int64_t rows, std::int64_t in,
                         std::int64_t out, std::int32_t* __restrict__ products) {
  __shared__ int tile_codes[kTile][kChunkWords + 1];  // +1: no bank conflicts
  __shared__ int tile_weight[kTile][kChunkWords + 1];
  const std::int64_t first_row = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const std::int64_t first_out = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const int thread = static_cast<int>(threadIdx.y) * kTile + static_cast<int>(threadIdx.x);
  const int load_row = thread / kChunkWords;  // each thread loads one word of each tile
  const int load_word = thread % kChunkWords;
  const std::int64_t code_row = min(first_row + load_row, rows - 1);
  const std::int64_t weight_row = min(first_out + load_row, out - 1);
  std::int32_t sums[kTileRowsPerThread] = {};
  for (std::int64_t k0 = 0; k0 < in; k0 += 4 * kChunkWords) {
    const std::int64_t k = k0 + 4 * load_word;
    tile_codes[load_row][load_word] = packed_codes(codes + code_row * in, k, in);
    tile_weight[load_row][load_word] = packed_codes(weight + weight_row * in, k, in);
    __syncthreads();
#pragma unroll
    for (int word = 0; word < kChunkWords; ++word) {
      const int w = tile_weight[threadIdx.x][word];
#pragma unroll
      for (int i = 0; i < kTileRowsPerThread; ++i) {
        sums[i] = __dp4a(tile_codes[threadIdx.y + kTileThreadRows * i][word], w, sums[i]);
      }
    }
    __syncthreads();  // the tiles are rewritten by the next step
  }
  const std::int64_t o = first_out + threadIdx.x;
  if (o >= out) return;
#pragma unroll
  for (int i = 0; i < kTileRowsPerThread; ++i) {
    const std::int64_t row = first_row + threadIdx.y + kTileThreadRows * i;
    if (row < rows) products[row * out + o] = sums[i];
  }
}

static_assert(kTile * kChunkWords == kTileThreads, "int8_products_kernel loads a word per thread");

// ---- Host side.

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(error, what);
}

Status cublas_lt_status(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return ok_status();
  return internal_error(std::string("linear_int8: ") + what + ": " +
                        cublasLtGetStatusString(status));
}

// The largest power of two up to 256 that divides the address: what cuBLASLt may assume.
std::uint32_t alignment_of(const void* pointer) {
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Where steps 1-4 and the products live in the context's workspace.
struct Int8Scratch {
  std::int8_t* codes;               // [rows, in]
  float* row_absmax;                // [rows]
  std::uint8_t* is_outlier_column;  // [in]
  std::int32_t* outlier_columns;    // [in]
  std::int32_t* outlier_count;      // [1]
  std::int32_t* products;           // [rows, out]
  void* cublas_workspace;           // [kLinearCublasWorkspaceBytes]
  void* outlier_x;                  // [rows, count] of the activation dtype
  void* outlier_weight;             // [chunk, count] of the activation dtype
  float* outlier_sums;              // [rows, out]
  std::int64_t outlier_weight_elements;
};

Int8Scratch int8_scratch(const LinearContext& context, const LinearWorkspaceLayout& layout) {
  auto* base = static_cast<std::byte*>(context.workspace());
  return Int8Scratch{
      reinterpret_cast<std::int8_t*>(base + layout.int8_codes),
      reinterpret_cast<float*>(base + layout.int8_row_absmax),
      reinterpret_cast<std::uint8_t*>(base + layout.int8_outlier_mask),
      reinterpret_cast<std::int32_t*>(base + layout.int8_outlier_columns),
      reinterpret_cast<std::int32_t*>(base + layout.int8_outlier_count),
      reinterpret_cast<std::int32_t*>(base + layout.int32_output),
      base + layout.cublas_workspace,
      base + layout.int8_outlier_x,
      base + layout.int8_outlier_weight,
      reinterpret_cast<float*>(base + layout.int8_outlier_sums),
      static_cast<std::int64_t>((layout.int8_outlier_sums - layout.int8_outlier_weight) / 4)};
}

// Steps 1-4: codes, row_absmax and, with a threshold, the outlier columns and their count.
Status quantize_activations(const void* x, DType dtype, std::int64_t rows, std::int64_t in,
                            float threshold, const Int8Scratch& scratch, cudaStream_t stream) {
  const bool has_threshold = threshold > 0.0f;
  if (has_threshold) {
    KBIT_RETURN_IF_ERROR(cuda_status(
        cudaMemsetAsync(scratch.is_outlier_column, 0, static_cast<std::size_t>(in), stream),
        "linear_int8: cudaMemsetAsync (outlier mask)"));
  }
  KBIT_RETURN_IF_ERROR(
      cuda_status(quantize_int8_rowwise(x, dtype, rows, in, threshold, scratch.codes,
                                        scratch.row_absmax, scratch.is_outlier_column, stream),
                  "linear_int8: quantize_int8_rowwise"));
  if (!has_threshold) return ok_status();
  // With more than one row, whole outlier columns go to the floating-point part.
  if (rows > 1) {
    KBIT_RETURN_IF_ERROR(cuda_status(
        zero_outlier_columns(scratch.codes, rows, in, scratch.is_outlier_column, stream),
        "linear_int8: zero_outlier_columns"));
  }
  compact_outlier_columns_kernel<<<1, kCompactThreads, 0, stream>>>(
      scratch.is_outlier_column, in, scratch.outlier_columns, scratch.outlier_count);
  return cuda_status(cudaGetLastError(), "linear_int8: compact_outlier_columns_kernel");
}

// Launches the GEMV instance for exactly args.rows rows (1 ..= kInt8GemvMaxRows) on the codes of
// steps 1-4.
template <typename T, int kRows = 1>
void launch_int8_gemv(const Int8OutputArgs<T>& args, bool vector_ok, cudaStream_t stream) {
  if constexpr (kRows < kInt8GemvMaxRows) {
    if (args.rows > kRows) return launch_int8_gemv<T, kRows + 1>(args, vector_ok, stream);
  }
  const auto blocks = static_cast<unsigned>((args.out + kGemvOutputs - 1) / kGemvOutputs);
  int8_gemv_kernel<T, kRows><<<blocks, kGemvThreads, 0, stream>>>(args, vector_ok);
}

// Launches the one-row GEMV for `layers` (1 to kMaxFusedLayers, of one row of the same x; with
// kSiluMul two of equal out) on x's quantization in `quantized_x`, or where that is null, each
// block's own (then at most kQuantizingGemvMaxInputs inputs).
template <typename T>
cudaError_t launch_int8_row_gemv(std::span<const Int8OutputArgs<T>> layers, float threshold,
                                 LinearEpilogue epilogue, const Int8QuantizedRow* quantized_x,
                                 cudaStream_t stream) {
  const Int8OutputArgs<T>& first = layers.front();
  bool vector_ok = first.in % 16 == 0 && is_aligned_16(first.x);
  Int8GemvLayers<T> fused{};
  if (quantized_x != nullptr) fused.quantized_x = *quantized_x;
  const int blocks = fused_layer_blocks(
      layers, row_gemv_block_features(kQuantizingGemvWarps, epilogue), epilogue, fused.end_block);
  if (blocks == 0) return cudaErrorInvalidValue;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    vector_ok = vector_ok && is_aligned_16(layers[i].weight);
    fused.layer[i] = layers[i];
  }
  fused.count = static_cast<int>(layers.size());
  const std::size_t shared_bytes = quantizing_gemv_shared_bytes(first.in);
  const bool silu_mul_epilogue = epilogue == LinearEpilogue::kSiluMul;
  constexpr auto kStore = LinearEpilogue::kStore;
  constexpr auto kSiluMul = LinearEpilogue::kSiluMul;
  const auto instance = [&](auto unroll) {
    constexpr int kUnroll = decltype(unroll)::value;
    return quantized_x != nullptr
               ? (silu_mul_epilogue ? int8_row_gemv_kernel<T, kSiluMul, true, kUnroll>
                                    : int8_row_gemv_kernel<T, kStore, true, kUnroll>)
               : (silu_mul_epilogue ? int8_row_gemv_kernel<T, kSiluMul, false, kUnroll>
                                    : int8_row_gemv_kernel<T, kStore, false, kUnroll>);
  };
  const bool few_blocks = blocks <= kFewBlocksPerMultiprocessor * current_device_multiprocessors();
  const auto kernel = few_blocks ? instance(std::integral_constant<int, kFewBlocksGemvUnroll>{})
                                 : instance(std::integral_constant<int, kQuantizingGemvUnroll>{});
  const cudaError_t error =
      opt_in_dynamic_shared_memory(reinterpret_cast<const void*>(kernel), shared_bytes);
  if (error != cudaSuccess) return error;
  return launch_overlapped(kernel, static_cast<unsigned>(blocks), kGemvThreads, shared_bytes,
                           stream, fused, threshold, vector_ok);
}

// The first failure of a sequence of cuBLASLt calls, and the call that failed.
struct CublasLtCalls {
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  const char* failed_call = "";

  bool ok() const { return status == CUBLAS_STATUS_SUCCESS; }
  void check(cublasStatus_t result, const char* call) {
    if (ok() && result != CUBLAS_STATUS_SUCCESS) {
      status = result;
      failed_call = call;
    }
  }
};

// cuBLASLt's description of products [rows, out] = codes [rows, in] · weight [out, in]ᵀ in
// column-major terms: products [out, rows] = weightᵀ · codes, weight stored as [in, out] and
// transposed, codes as [in, rows] (the "TN" layout of its int8 kernels). The descriptors live
// in this struct's storage, so cuBLASLt allocates nothing for them.
struct Int8GemmDescriptors {
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatrixLayoutOpaque_t weight;
  cublasLtMatrixLayoutOpaque_t codes;
  cublasLtMatrixLayoutOpaque_t products;
  cublasLtMatmulPreferenceOpaque_t preference;
};

void init_int8_gemm(Int8GemmDescriptors& d, const std::int8_t* codes, const std::int8_t* weight,
                    std::int64_t rows, std::int64_t in, std::int64_t out,
                    const std::int32_t* products, CublasLtCalls& calls) {
  const auto u64 = [](std::int64_t n) { return static_cast<std::uint64_t>(n); };
  const cublasOperation_t transpose = CUBLAS_OP_T;
  calls.check(cublasLtMatmulDescInit(&d.desc, CUBLAS_COMPUTE_32I, CUDA_R_32I),
              "cublasLtMatmulDescInit");
  calls.check(cublasLtMatmulDescSetAttribute(&d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                             sizeof(transpose)),
              "cublasLtMatmulDescSetAttribute (TRANSA)");
  calls.check(cublasLtMatrixLayoutInit(&d.weight, CUDA_R_8I, u64(in), u64(out), in),
              "cublasLtMatrixLayoutInit (weight)");
  calls.check(cublasLtMatrixLayoutInit(&d.codes, CUDA_R_8I, u64(in), u64(rows), in),
              "cublasLtMatrixLayoutInit (codes)");
  calls.check(cublasLtMatrixLayoutInit(&d.products, CUDA_R_32I, u64(out), u64(rows), out),
              "cublasLtMatrixLayoutInit (products)");

  // The heuristic may pick kernels needing more alignment than the pointers have unless told.
  const std::uint64_t workspace_bytes = kLinearCublasWorkspaceBytes;
  const std::uint32_t alignments[4] = {alignment_of(weight), alignment_of(codes),
                                       alignment_of(products), alignment_of(products)};
  const cublasLtMatmulPreferenceAttributes_t alignment_attributes[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  calls.check(cublasLtMatmulPreferenceInit(&d.preference), "cublasLtMatmulPreferenceInit");
  calls.check(
      cublasLtMatmulPreferenceSetAttribute(&d.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace_bytes, sizeof(workspace_bytes)),
      "cublasLtMatmulPreferenceSetAttribute (workspace)");
  for (int i = 0; i < 4; ++i) {
    calls.check(cublasLtMatmulPreferenceSetAttribute(&d.preference, alignment_attributes[i],
                                                     &alignments[i], sizeof(alignments[i])),
                "cublasLtMatmulPreferenceSetAttribute (alignment)");
  }
}

// scratch.products = codes · weightᵀ by cuBLASLt. Leaves CUBLAS_STATUS_NOT_SUPPORTED in `calls`
// when it has no algorithm for the shape (nothing is queued then). The algorithm of each shape
// and alignment is chosen once per context.
void int8_products_cublas_lt(LinearContext& context, const std::int8_t* weight, std::int64_t rows,
                             std::int64_t in, std::int64_t out, const Int8Scratch& scratch,
                             CublasLtCalls& calls) {
  Int8GemmDescriptors d;
  init_int8_gemm(d, scratch.codes, weight, rows, in, out, scratch.products, calls);
  if (!calls.ok()) return;
  const LinearContext::GemmKey key = {
      rows, in, out, alignment_of(weight),
      std::min(alignment_of(scratch.codes), alignment_of(scratch.products))};
  auto [entry, inserted] = context.lt_algorithms().try_emplace(key);
  if (inserted) {
    cublasLtMatmulHeuristicResult_t heuristic{};
    int algorithms = 0;
    calls.check(cublasLtMatmulAlgoGetHeuristic(context.cublas_lt(), &d.desc, &d.weight, &d.codes,
                                               &d.products, &d.products, &d.preference, 1,
                                               &heuristic, &algorithms),
                "cublasLtMatmulAlgoGetHeuristic");
    if (!calls.ok()) {
      context.lt_algorithms().erase(entry);
      return;
    }
    if (algorithms > 0) entry->second = heuristic.algo;
  }
  if (!entry->second) {
    calls.check(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic");
    return;
  }
  const std::int32_t alpha = 1;
  const std::int32_t beta = 0;
  calls.check(cublasLtMatmul(context.cublas_lt(), &d.desc, &alpha, weight, &d.weight, scratch.codes,
                             &d.codes, &beta, scratch.products, &d.products, scratch.products,
                             &d.products, &*entry->second, scratch.cublas_workspace,
                             kLinearCublasWorkspaceBytes, context.stream()),
              "cublasLtMatmul");
}

// Step 5 for more than kInt8GemvMaxRows rows: scratch.products [rows, out].
Status int8_products(LinearContext& context, const std::int8_t* weight, std::int64_t rows,
                     std::int64_t in, std::int64_t out, const Int8Scratch& scratch) {
  CublasLtCalls calls;
  int8_products_cublas_lt(context, weight, rows, in, out, scratch, calls);
  if (calls.status != CUBLAS_STATUS_NOT_SUPPORTED) {
    return cublas_lt_status(calls.status, calls.failed_call);
  }
  const dim3 grid(static_cast<unsigned>((out + kTile - 1) / kTile),
                  static_cast<unsigned>((rows + kTile - 1) / kTile));
  int8_products_kernel<<<grid, dim3(kTile, kTileThreadRows), 0, context.stream()>>>(
      scratch.codes, weight, rows, in, out, scratch.products);
  return cuda_status(cudaGetLastError(), "linear_int8: int8_products_kernel");
}

// Step 7's sums Σ_j x[row][j] · round_X(W'[o][j]) over the outlier columns, as a GEMM on the
// tensor cores into scratch.outlier_sums, where there are outlier columns: true if it made them.
// A prompt can have thousands (a column counts once any row reaches the threshold), which the
// epilogue's own loop would take milliseconds over. Needs the count on the host, so it waits for
// the stream; inside a CUDA graph capture, where it cannot, the epilogue sums instead (false).
template <typename T>
Result<bool> outlier_sums_by_gemm(LinearContext& context, const Int8OutputArgs<T>& args,
                                  const Int8Scratch& scratch) {
  if (args.outlier_count == nullptr) return false;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamIsCapturing(context.stream(), &capture),
                                   "linear_int8: cudaStreamIsCapturing"));
  if (capture != cudaStreamCaptureStatusNone) return false;
  std::int32_t count = 0;
  KBIT_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(&count, args.outlier_count, sizeof(count),
                                                   cudaMemcpyDeviceToHost, context.stream()),
                                   "linear_int8: outlier count"));
  KBIT_RETURN_IF_ERROR(
      cuda_status(cudaStreamSynchronize(context.stream()), "linear_int8: outlier count"));
  if (count == 0) return false;
  const cudaStream_t stream = context.stream();
  const int threads = 256;
  const auto blocks = [&](std::int64_t n) {
    return static_cast<unsigned>(std::min<std::int64_t>((n + threads - 1) / threads, 65535));
  };
  T* x = static_cast<T*>(scratch.outlier_x);
  T* weight = static_cast<T*>(scratch.outlier_weight);
  gather_outlier_x_kernel<T><<<blocks(args.rows * count), threads, 0, stream>>>(
      args.x, args.rows, args.in, args.outlier_columns, count, x);
  KBIT_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "linear_int8: gather_outlier_x_kernel"));
  constexpr bool kF32 = std::is_same_v<T, float>;
  const cudaDataType_t type = kF32 ? CUDA_R_32F : CUDA_R_16BF;
  // As linear_float: never TF32 for f32 data; bf16 products are exact in f32.
  const cublasComputeType_t compute = kF32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const std::int64_t chunk =
      std::max<std::int64_t>(1, std::min(args.out, scratch.outlier_weight_elements / count));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  for (std::int64_t first_out = 0; first_out < args.out; first_out += chunk) {
    const std::int64_t features = std::min(chunk, args.out - first_out);
    gather_outlier_weight_kernel<T><<<blocks(features * count), threads, 0, stream>>>(
        args.weight, args.weight_absmax, args.in, args.outlier_columns, count, first_out, features,
        weight);
    KBIT_RETURN_IF_ERROR(
        cuda_status(cudaGetLastError(), "linear_int8: gather_outlier_weight_kernel"));
    // Column-major sums[features, rows] = weight[count, features]ᵀ · x[count, rows], into
    // columns [first_out, first_out + features) of the row-major [rows, out] sums.
    KBIT_RETURN_IF_ERROR(linear_cublas_status(
        cublasGemmEx(context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(features),
                     static_cast<int>(args.rows), count, &alpha, weight, type, count, x, type,
                     count, &beta, scratch.outlier_sums + first_out, CUDA_R_32F,
                     static_cast<int>(args.out), compute, CUBLAS_GEMM_DEFAULT),
        "linear_int8: outlier columns' cublasGemmEx"));
  }
  return true;
}

// Steps 5-7 once steps 1-4 have run.
template <typename T>
Status int8_outputs(LinearContext& context, const Int8OutputArgs<T>& args,
                    const Int8Scratch& scratch) {
  if (args.rows <= kInt8GemvMaxRows) {
    const bool vector_ok =
        args.in % 16 == 0 && is_aligned_16(args.codes) && is_aligned_16(args.weight);
    launch_int8_gemv(args, vector_ok, context.stream());
    return cuda_status(cudaGetLastError(), "linear_int8: int8_gemv_kernel");
  }
  KBIT_RETURN_IF_ERROR(int8_products(context, args.weight, args.rows, args.in, args.out, scratch));
  KBIT_ASSIGN_OR_RETURN(const bool precomputed, outlier_sums_by_gemm(context, args, scratch));
  const dim3 grid(static_cast<unsigned>((args.out + kTile - 1) / kTile),
                  static_cast<unsigned>((args.rows + kTile - 1) / kTile));
  int8_epilogue_kernel<T><<<grid, dim3(kTile, kTileThreadRows), 0, context.stream()>>>(
      args, scratch.products, precomputed ? scratch.outlier_sums : nullptr);
  return cuda_status(cudaGetLastError(), "linear_int8: int8_epilogue_kernel");
}

template <typename T>
Int8OutputArgs<T> output_args(const void* x, const Int8WeightDevice& weight, const void* bias,
                              std::int64_t rows, std::int64_t in, std::int64_t out,
                              bool has_threshold, const Int8Scratch& scratch, void* y) {
  return Int8OutputArgs<T>{static_cast<const T*>(x),
                           scratch.codes,
                           scratch.row_absmax,
                           scratch.outlier_columns,
                           has_threshold ? scratch.outlier_count : nullptr,
                           weight.codes,
                           weight.row_absmax,
                           static_cast<const T*>(bias),
                           rows,
                           in,
                           out,
                           static_cast<T*>(y)};
}

Status check_int8_arguments(const LinearContext& context, const void* x,
                            const Int8WeightDevice& weight, std::int64_t rows, std::int64_t in,
                            std::int64_t out, float threshold, const void* y, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return invalid_argument("linear_int8: the activation dtype must be f32 or bf16, not " +
                            std::string(dtype_name(dtype)));
  }
  if (rows < 1 || in < 1 || out < 1) {
    return invalid_argument("linear_int8: rows, in and out must be positive");
  }
  // Outlier columns are int32; the tiled kernels' grids have at most 65535 rows of tiles.
  if (in > INT32_MAX || rows > kMaxTileRows) {
    return invalid_argument("linear_int8: more than " + std::to_string(INT32_MAX) +
                            " in features or " + std::to_string(kMaxTileRows) + " rows");
  }
  if (!(threshold >= 0.0f) || !std::isfinite(threshold)) {
    return invalid_argument("linear_int8: the threshold must be finite and >= 0");
  }
  if (x == nullptr || weight.codes == nullptr || weight.row_absmax == nullptr || y == nullptr) {
    return invalid_argument("linear_int8: x, the weight's codes and absmax, and y are required");
  }
  if (linear_workspace_layout(rows, in, out).total_bytes > context.workspace_bytes()) {
    return invalid_argument("linear_int8: [" + std::to_string(rows) + ", " + std::to_string(in) +
                            "] -> " + std::to_string(out) +
                            " features exceeds the sizes the LinearContext was created for");
  }
  return ok_status();
}

}  // namespace

Status linear_int8(LinearContext& context, const void* x, const Int8WeightDevice& weight,
                   const void* bias, std::int64_t rows, std::int64_t in, std::int64_t out,
                   float threshold, void* y, DType dtype) {
  KBIT_RETURN_IF_ERROR(
      check_int8_arguments(context, x, weight, rows, in, out, threshold, y, dtype));
  const Int8Scratch scratch = int8_scratch(context, linear_workspace_layout(rows, in, out));
  const bool has_threshold = threshold > 0.0f;
  const auto outputs = [&](auto type_tag) {
    using T = decltype(type_tag);
    const Int8OutputArgs<T> args =
        output_args<T>(x, weight, bias, rows, in, out, has_threshold, scratch, y);
    if (rows == 1 && in <= kQuantizingGemvMaxInputs) {
      return cuda_status(launch_int8_row_gemv<T>({&args, 1}, threshold, LinearEpilogue::kStore,
                                                 nullptr, context.stream()),
                         "linear_int8: int8_row_gemv_kernel");
    }
    KBIT_RETURN_IF_ERROR(
        quantize_activations(x, dtype, rows, in, threshold, scratch, context.stream()));
    return int8_outputs(context, args, scratch);
  };
  return dtype == DType::kF32 ? outputs(float{}) : outputs(__nv_bfloat16{});
}

Status linear_int8_layers(LinearContext& context, const void* x, std::span<const Int8Layer> layers,
                          std::int64_t rows, std::int64_t in, float threshold, DType dtype,
                          LinearEpilogue epilogue, const Int8QuantizedRow* quantized_x) {
  KBIT_RETURN_IF_ERROR(check_fused_layer_group("linear_int8_layers", layers, epilogue));
  for (const Int8Layer& layer : layers) {
    KBIT_RETURN_IF_ERROR(check_int8_arguments(context, x, layer.weight, rows, in, layer.out,
                                              threshold, layer.y, dtype));
  }
  if (quantized_x != nullptr && (rows != 1 || in % 16 != 0 || !is_aligned_16(quantized_x->codes))) {
    return invalid_argument(
        "linear_int8_layers: a quantized x needs one row, in a multiple of 16 and 16-byte aligned "
        "codes");
  }
  if (rows == 1 && in <= kQuantizingGemvMaxInputs) {
    const auto fused = [&](auto type_tag) {
      using T = decltype(type_tag);
      std::array<Int8OutputArgs<T>, kMaxFusedLayers> args;
      for (std::size_t i = 0; i < layers.size(); ++i) {
        // The one-row GEMV uses no scratch.
        args[i] = output_args<T>(x, layers[i].weight, layers[i].bias, rows, in, layers[i].out,
                                 threshold > 0.0f, Int8Scratch{}, layers[i].y);
      }
      return launch_int8_row_gemv<T>({args.data(), layers.size()}, threshold, epilogue, quantized_x,
                                     context.stream());
    };
    return cuda_status(dtype == DType::kF32 ? fused(float{}) : fused(__nv_bfloat16{}),
                       "linear_int8_layers: int8_row_gemv_kernel");
  }
  return linear_layers_one_by_one(layers, rows, dtype, epilogue, context.stream(),
                                  "linear_int8_layers", [&](const Int8Layer& layer) {
                                    return linear_int8(context, x, layer.weight, layer.bias, rows,
                                                       in, layer.out, threshold, layer.y, dtype);
                                  });
}

Status dequantize_int8_weight(const Int8WeightDevice& weight, std::int64_t out, std::int64_t in,
                              DType dtype, void* weight_out, cudaStream_t stream) {
  if ((dtype != DType::kF32 && dtype != DType::kBF16) || out < 1 || in < 1 ||
      weight.codes == nullptr || weight.row_absmax == nullptr || weight_out == nullptr) {
    return invalid_argument(
        "dequantize_int8_weight: an f32 or bf16 output, sizes of at least 1 and non-null "
        "codes, row absmax and output are required");
  }
  const std::int64_t count = out * in;
  const auto blocks = static_cast<unsigned>(
      std::min<std::int64_t>((count + kElementwiseThreads - 1) / kElementwiseThreads, 65535));
  if (dtype == DType::kF32) {
    dequantize_int8_weight_kernel<<<blocks, kElementwiseThreads, 0, stream>>>(
        weight.codes, weight.row_absmax, in, count, static_cast<float*>(weight_out));
  } else {
    dequantize_int8_weight_kernel<<<blocks, kElementwiseThreads, 0, stream>>>(
        weight.codes, weight.row_absmax, in, count, static_cast<__nv_bfloat16*>(weight_out));
  }
  return cuda_status(cudaGetLastError(), "dequantize_int8_weight");
}

}  // namespace kbit::kernels::cuda
