// The GEMV that linear_float and linear_float_layers (linear_launchers.h) take for one row (a
// decode step of one sequence): y[out] = x[in] · Wᵀ (+ bias) for each layer, the products exact in
// f32 (bf16 × bf16, or f32 FMAs), summed in f32 in a fixed order, the bias added to the sum and
// the result rounded once to the activation dtype, as linear_float's cuBLAS path does (its sums
// run in another order). cuBLAS's own GEMV reads a 4096 × 4096 bf16 weight at 0.43 of the copy's
// bandwidth (BENCHMARKS.md), and takes q, k and v, gate and up, one launch each. With more rows
// the CUDA cores' FMAs bind (at 8 rows a version of this GEMV read at 0.22-0.35 of the copy's
// bandwidth), and cuBLAS's tensor-core kernels are faster.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "kbit/core/dtype.h"
#include "kernels/cuda/linear_launchers.h"

namespace kbit::kernels::cuda {

// Whether the GEMV takes the call: one row, in a multiple of the values of a 16-byte vector, x
// and every weight 16-byte aligned.
bool float_gemv_applies(const void* x, std::span<const FloatLayer> layers, std::int64_t rows,
                        std::int64_t in, DType dtype);

// Queues the GEMV for `layers` (validated as linear_float_layers validates them, and
// float_gemv_applies) in one launch on `stream`; returns the launch's error.
cudaError_t launch_float_gemv(const void* x, std::span<const FloatLayer> layers, std::int64_t in,
                              DType dtype, LinearEpilogue epilogue, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
