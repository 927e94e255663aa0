// OpenBLAS as the CPU kernels use it: weight panels converted to f32 on the fly and multiplied
// with sgemm, so that a compressed weight is never widened whole (llama_ops.h linear_blas,
// quantized_linear.h linear_4bit).
#pragma once

#include <cstdint>

namespace kbit::kernels::cpu {

// A panel of kSgemmPanelOut output features x kSgemmPanelIn input features in f32 (512 KiB)
// stays in L2 while sgemm streams the activations past it.
inline constexpr std::int64_t kSgemmPanelOut = 128;
inline constexpr std::int64_t kSgemmPanelIn = 1024;

// y[rows, features] = x[rows, width] · panel[features, width]ᵀ, or y += that when accumulate.
// Leading dimensions (elements between rows) are x_stride and y_stride; the panel is dense.
// Runs on the calling thread: kbit threads the work itself, and OpenBLAS's own threads would
// oversubscribe the cores, so the first call sets OpenBLAS to one thread for the process.
void sgemm_panel(const float* x, std::int64_t x_stride, std::int64_t rows, const float* panel,
                 std::int64_t features, std::int64_t width, bool accumulate, float* y,
                 std::int64_t y_stride);

// y[rows, features] += aᵀ · b, for a [depth, rows] of leading dimension a_stride and b
// [depth, features] dense; y's leading dimension is y_stride. On the calling thread, as above.
void sgemm_transposed_accumulate(const float* a, std::int64_t a_stride, std::int64_t rows,
                                 const float* b, std::int64_t features, std::int64_t depth,
                                 float* y, std::int64_t y_stride);

}  // namespace kbit::kernels::cpu
