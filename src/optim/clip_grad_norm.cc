// Gradient clipping by the global L2 norm (clip_grad_norm.h): on the host here, on a CUDA device
// through the launchers of kernels/cuda/grad_norm.cu. The total and the coefficient are computed
// on the host in both cases, by total_norm and clip_coefficient.
#include "kbit/optim/clip_grad_norm.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#if defined(KBIT_WITH_CUDA)
#include "core/cuda_runtime.h"
#include "kernels/cuda/optim_launchers.h"
#endif

namespace kbit::optim {
namespace {

Status check_gradient(const TensorView& gradient, const TensorView& first) {
  if (gradient.dtype() != DType::kF32) {
    return invalid_argument("clip_grad_norm: gradient " + gradient.describe() +
                            " is not float32; gradients are kept in float32");
  }
  if (!gradient.is_contiguous()) {
    return invalid_argument("clip_grad_norm: gradient " + gradient.describe() +
                            " is not contiguous");
  }
  if (gradient.device() != first.device()) {
    return invalid_argument("clip_grad_norm: gradients " + first.describe() + " and " +
                            gradient.describe() +
                            " are on different devices; they must all be on the host or all on "
                            "one CUDA device");
  }
  return ok_status();
}

float total_norm(double sum_of_squares) {
  return static_cast<float>(std::sqrt(sum_of_squares));
}

// min(1, max_norm / (total + 1e-6)) in float32, as torch computes clip_coef_clamped.
float clip_coefficient(float total, float max_norm) {
  return std::min(1.0f, max_norm / (total + 1e-6f));
}

#if defined(KBIT_WITH_CUDA)
// The CUDA path: the gradients' spans copied to a device workspace beside the partial sums, the
// sum of squares copied back (this waits for the stream), then the scaling queued.
Result<float> clip_on_cuda(std::span<const TensorView> gradients, float max_norm,
                           cudaStream_t stream) {
  std::vector<kernels::cuda::GradientSpan> spans;
  std::int64_t total_count = 0;
  for (const TensorView& gradient : gradients) {
    if (gradient.numel() == 0) continue;
    spans.push_back({gradient.data_as<float>(), total_count, gradient.numel()});
    total_count += gradient.numel();
  }
  if (spans.empty()) return 0.0f;
  if (spans.size() > static_cast<std::size_t>(INT_MAX)) {
    return invalid_argument("clip_grad_norm: " + std::to_string(spans.size()) +
                            " gradients; at most 2^31 - 1 on a CUDA device");
  }
  const auto tensors = static_cast<int>(spans.size());
  // [partials: kGradNormMaxBlocks doubles][sum: 1 double][spans]
  const std::size_t spans_offset = sizeof(double) * (kernels::cuda::kGradNormMaxBlocks + 1);
  const std::size_t span_bytes = spans.size() * sizeof(kernels::cuda::GradientSpan);
  KBIT_ASSIGN_OR_RETURN(Tensor workspace,
                        Tensor::empty(Shape{static_cast<std::int64_t>(spans_offset + span_bytes)},
                                      DType::kU8, gradients.front().device()));
  auto* bytes = workspace.data_as<std::byte>();
  auto* partials = reinterpret_cast<double*>(bytes);
  double* sum = partials + kernels::cuda::kGradNormMaxBlocks;
  auto* device_spans = reinterpret_cast<kernels::cuda::GradientSpan*>(bytes + spans_offset);
  KBIT_RETURN_IF_ERROR(
      kbit::detail::cuda_copy_on_stream(device_spans, spans.data(), span_bytes, stream));
  KBIT_RETURN_IF_ERROR(kbit::detail::status_from_cuda_error(
      kernels::cuda::grad_sum_of_squares(device_spans, tensors, total_count, partials, sum, stream),
      "clip_grad_norm: sum of squares"));
  double sum_of_squares = 0.0;
  KBIT_RETURN_IF_ERROR(
      kbit::detail::cuda_copy_on_stream(&sum_of_squares, sum, sizeof(double), stream));
  const float total = total_norm(sum_of_squares);
  if (!std::isfinite(total)) return total;
  const float coefficient = clip_coefficient(total, max_norm);
  // g · 1 = g for every finite g: nothing to do below the maximum norm.
  if (coefficient == 1.0f) return total;
  KBIT_RETURN_IF_ERROR(kbit::detail::status_from_cuda_error(
      kernels::cuda::grad_scale(device_spans, tensors, total_count, coefficient, stream),
      "clip_grad_norm: scaling"));
  return total;
}
#endif

}  // namespace

Result<float> clip_grad_norm(std::span<const TensorView> gradients, float max_norm,
                             const ExecutionOptions& options) {
  if (!(max_norm > 0.0f) || !std::isfinite(max_norm)) {
    return invalid_argument("clip_grad_norm: max_norm = " + std::to_string(max_norm) +
                            " must be finite and > 0");
  }
  for (const TensorView& gradient : gradients) {
    KBIT_RETURN_IF_ERROR(check_gradient(gradient, gradients.front()));
  }
  if (!gradients.empty() && gradients.front().device().is_cuda()) {
#if defined(KBIT_WITH_CUDA)
    return clip_on_cuda(gradients, max_norm, static_cast<cudaStream_t>(options.stream.handle));
#else
    (void)options;
    return unimplemented("clip_grad_norm: this kbit was built without CUDA, so " +
                         gradients.front().describe() +
                         " cannot be clipped; rebuild with the `cuda` preset");
#endif
  }
  double sum_of_squares = 0.0;
  for (const TensorView& gradient : gradients) {
    const float* values = gradient.data_as<const float>();
    for (std::int64_t i = 0; i < gradient.numel(); ++i) {
      sum_of_squares += static_cast<double>(values[i]) * values[i];
    }
  }
  const float total = total_norm(sum_of_squares);
  if (!std::isfinite(total)) return total;
  const float coefficient = clip_coefficient(total, max_norm);
  for (const TensorView& gradient : gradients) {
    float* values = gradient.data_as<float>();
    for (std::int64_t i = 0; i < gradient.numel(); ++i) values[i] *= coefficient;
  }
  return total;
}

}  // namespace kbit::optim
