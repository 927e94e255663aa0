// linear_weight_gradient_op (llama_backward.h): dW += dyᵀ · x as OpenBLAS products that read dy
// transposed where it lies, one panel of output features each.
#include <algorithm>

#include "kbit/core/parallel.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/llama_backward.h"

namespace kbit::kernels::cpu {

void linear_weight_gradient_op(const float* x, const float* dy, std::int64_t rows,
                               std::int64_t in_features, std::int64_t out_features, float* dweight,
                               const ExecutionOptions& options) {
  if (options.cpu_kernel == CpuKernel::kReference) {
    linear_backward_reference({x, nullptr, dy, rows, in_features, out_features, nullptr, dweight});
    return;
  }
  if (rows == 0) return;
  // A fixed split into panels of output features, each summed by one product: the same sums
  // for any thread count.
  const std::int64_t panels = (out_features + kSgemmPanelOut - 1) / kSgemmPanelOut;
  parallel_for(
      panels, 1,
      [&](std::int64_t first, std::int64_t end) {
        for (std::int64_t p = first; p < end; ++p) {
          const std::int64_t o0 = p * kSgemmPanelOut;
          const std::int64_t count = std::min(kSgemmPanelOut, out_features - o0);
          sgemm_transposed_accumulate(dy + o0, out_features, count, x, in_features, rows,
                                      dweight + o0 * in_features, in_features);
        }
      },
      options.threads);
}

}  // namespace kbit::kernels::cpu
