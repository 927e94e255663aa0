// linear_weight_gradient (llama_backward.h): dW += dyᵀ · x as OpenBLAS products. Both operands
// are transposed first so that each product reads dense rows of `rows` values, the shape
// sgemm_panel takes (y = x · panelᵀ); the transposes cost O(rows · (in + out)) against the
// product's O(rows · in · out).
#include <algorithm>
#include <vector>

#include "kbit/core/parallel.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/llama_backward.h"

namespace kbit::kernels::cpu {
namespace {

// [rows, cols] -> [cols, rows]
std::vector<float> transposed(const float* values, std::int64_t rows, std::int64_t cols) {
  std::vector<float> result(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      result[static_cast<std::size_t>(c * rows + r)] = values[r * cols + c];
    }
  }
  return result;
}

}  // namespace

void linear_weight_gradient(const float* x, const float* dy, std::int64_t rows,
                            std::int64_t in_features, std::int64_t out_features, float* dweight,
                            int threads) {
  if (rows == 0) return;
  const std::vector<float> dy_t = transposed(dy, rows, out_features);  // [out, rows]
  const std::vector<float> x_t = transposed(x, rows, in_features);     // [in, rows]
  // A fixed split into panels of output features, each summed by one product: the same sums
  // for any thread count.
  const std::int64_t panels = (out_features + kSgemmPanelOut - 1) / kSgemmPanelOut;
  parallel_for(
      panels, 1,
      [&](std::int64_t first, std::int64_t end) {
        for (std::int64_t p = first; p < end; ++p) {
          const std::int64_t o0 = p * kSgemmPanelOut;
          const std::int64_t count = std::min(kSgemmPanelOut, out_features - o0);
          for (std::int64_t i0 = 0; i0 < in_features; i0 += kSgemmPanelIn) {
            const std::int64_t width = std::min(kSgemmPanelIn, in_features - i0);
            sgemm_panel(dy_t.data() + o0 * rows, rows, count, x_t.data() + i0 * rows, width, rows,
                        true, dweight + o0 * in_features + i0, in_features);
          }
        }
      },
      threads);
}

}  // namespace kbit::kernels::cpu
