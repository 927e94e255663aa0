// What the Linear launchers (linear_launchers.h) share privately: the layout of
// LinearContext's device workspace, a cuBLAS status helper and a bias-broadcast kernel.
//
// Byte offsets into LinearContext::workspace(), each 256-byte aligned:
//   cublas_workspace        [kLinearCublasWorkspaceBytes]   cuBLAS's own, set once by create()
//                           (cublasLtMatmul calls on the context's stream may use it too: work
//                           on one stream runs in order)
// then two families laid over the same bytes (one launcher call uses one family, and calls on
// one stream run one after another):
//   4-bit many-token path   four_bit_weight_chunk  [four_bit_chunk_out, in] compute dtype
//   (and its input gradient, linear_input_gradient_workspace_layout)
//                           four_bit_x             [rows, in] compute dtype
//                           gemm_output            [rows, out] compute dtype (4 bytes reserved
//                                                   per element, so f32 fits)
//   int8 path               int8_codes             [rows, in] int8
//                           int8_row_absmax        [rows] f32
//                           int8_outlier_mask      [in] uint8
//                           int8_outlier_columns   [in] int32
//                           int8_outlier_count     [1] int32
//                           int32_output           [rows, out] int32
//
// A launcher computes the layout for its own call's sizes and checks total_bytes against
// LinearContext::workspace_bytes(): every offset and total_bytes grow with each size, so a call
// within the sizes a context was created for always fits, and cublas_workspace never moves.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"

namespace kbit::kernels::cuda {

inline constexpr std::size_t kLinearCublasWorkspaceBytes = std::size_t{32} << 20;
// The 4-bit path's region for dequantized weight: this many values in f32 (64 MiB), twice as many
// in a 16-bit compute dtype.
inline constexpr std::int64_t kFourBitChunkElements = std::int64_t{16} << 20;

struct LinearWorkspaceLayout {
  std::size_t cublas_workspace;
  std::size_t four_bit_weight_chunk;
  std::size_t four_bit_x;
  std::size_t gemm_output;
  std::size_t int8_codes;
  std::size_t int8_row_absmax;
  std::size_t int8_outlier_mask;
  std::size_t int8_outlier_columns;
  std::size_t int8_outlier_count;
  std::size_t int32_output;
  // The int8 path's outlier columns as a GEMM: x's outlier columns [rows, ≤ in], the dequantized
  // weight columns of a chunk of features [≤ weight_chunk elements], their f32 products
  // [rows, out] (4 bytes per element each, so f32 activations fit).
  std::size_t int8_outlier_x;
  std::size_t int8_outlier_weight;
  std::size_t int8_outlier_sums;
  std::size_t total_bytes;
};

constexpr std::size_t linear_workspace_aligned(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// Output features per chunk of the 4-bit path's dequantized weight [out, in] in a compute dtype
// of element_bytes (2 or 4): at least one and at most out, and no more than the region holds
// (kFourBitChunkElements · 4 bytes, or one row if that is larger). Where several chunks are needed
// they are of equal size, rounded up to a multiple of 64 where 64 rows fit: cuBLAS runs equal
// chunks of whole tiles faster than full chunks and a small remainder (BENCHMARKS.md).
constexpr std::int64_t four_bit_chunk_out(std::int64_t in, std::int64_t out,
                                          std::size_t element_bytes) {
  const auto values = static_cast<std::int64_t>(kFourBitChunkElements * 4 /
                                                static_cast<std::int64_t>(element_bytes));
  const std::int64_t fitting = std::max<std::int64_t>(values / in, 1);
  if (fitting >= out) return out;
  if (fitting < 64) return fitting;
  const std::int64_t rounded = fitting / 64 * 64;
  const std::int64_t chunks = (out + rounded - 1) / rounded;
  const std::int64_t even = ((out + chunks - 1) / chunks + 63) / 64 * 64;
  return std::min(even, rounded);
}

// Sizes are positive element counts: rows of x, in and out features.
constexpr LinearWorkspaceLayout linear_workspace_layout(std::int64_t rows, std::int64_t in,
                                                        std::int64_t out) {
  const auto count = [](std::int64_t n) { return static_cast<std::size_t>(n); };
  // Bounds chunk_out · in from above by a size that grows with in and out.
  const std::int64_t weight_chunk_elements =
      std::max(std::min(out * in, kFourBitChunkElements), in);
  LinearWorkspaceLayout layout{};
  layout.cublas_workspace = 0;
  const std::size_t families = linear_workspace_aligned(kLinearCublasWorkspaceBytes);

  layout.four_bit_weight_chunk = families;
  layout.four_bit_x =
      layout.four_bit_weight_chunk + linear_workspace_aligned(count(weight_chunk_elements) * 4);
  layout.gemm_output = layout.four_bit_x + linear_workspace_aligned(count(rows * in) * 4);
  const std::size_t four_bit_end =
      layout.gemm_output + linear_workspace_aligned(count(rows * out) * 4);

  layout.int8_codes = families;
  layout.int8_row_absmax = layout.int8_codes + linear_workspace_aligned(count(rows * in));
  layout.int8_outlier_mask = layout.int8_row_absmax + linear_workspace_aligned(count(rows) * 4);
  layout.int8_outlier_columns = layout.int8_outlier_mask + linear_workspace_aligned(count(in));
  layout.int8_outlier_count = layout.int8_outlier_columns + linear_workspace_aligned(count(in) * 4);
  layout.int32_output = layout.int8_outlier_count + linear_workspace_aligned(4);
  layout.int8_outlier_x = layout.int32_output + linear_workspace_aligned(count(rows * out) * 4);
  layout.int8_outlier_weight =
      layout.int8_outlier_x + linear_workspace_aligned(count(rows * in) * 4);
  layout.int8_outlier_sums =
      layout.int8_outlier_weight + linear_workspace_aligned(count(weight_chunk_elements) * 4);
  const std::size_t int8_end =
      layout.int8_outlier_sums + linear_workspace_aligned(count(rows * out) * 4);

  layout.total_bytes = std::max(four_bit_end, int8_end);
  return layout;
}

// The layout of a linear_4bit_backward_input call, dx [rows, in] = dy [rows, out] · W [out, in]:
// the 4-bit family with four_bit_weight_chunk holding chunks of W as in the forward,
// four_bit_x dy in the compute dtype [rows, out] and gemm_output the f32 sums [rows, in]. The
// forward layout of a call with max(in, out) inputs and outputs has room for each, and grows with
// every size as that one does.
constexpr LinearWorkspaceLayout linear_input_gradient_workspace_layout(std::int64_t rows,
                                                                       std::int64_t in,
                                                                       std::int64_t out) {
  const std::int64_t wide = std::max(in, out);
  return linear_workspace_layout(rows, wide, wide);
}

// ok for CUBLAS_STATUS_SUCCESS; otherwise kInternal "<call>: <cuBLAS's status name>"
// (kOutOfMemory for CUBLAS_STATUS_ALLOC_FAILED). Defined in linear_context.cc.
Status linear_cublas_status(cublasStatus_t status, const char* call);

// y[r, o] = round_y(round_c(sums[r, o] + round_c(bias[o]))) for sums f32 [rows, out] (a GEMM's
// f32 output), bias [out] of bias_dtype or null (then round_y(round_c(sums[r, o]))), round_c the
// rounding to compute_dtype and round_y to y's dtype (each f32, f16 or bf16): the bias joins the
// f32 sum before the rounding, as the CPU references do. Queued on `stream`; returns the launch
// error. Defined in linear_4bit.cu.
cudaError_t finish_linear_rows(const float* sums, std::int64_t rows, std::int64_t out,
                               const void* bias, DType bias_dtype, DType compute_dtype, void* y,
                               DType y_dtype, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
