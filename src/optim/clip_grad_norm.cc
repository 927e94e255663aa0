// Gradient clipping by the global L2 norm (clip_grad_norm.h).
#include "kbit/optim/clip_grad_norm.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace kbit::optim {
namespace {

Status check_gradient(const TensorView& gradient) {
  if (gradient.dtype() != DType::kF32) {
    return invalid_argument("clip_grad_norm: gradient " + gradient.describe() +
                            " is not float32; gradients are kept in float32");
  }
  if (!gradient.device().is_cpu()) {
    return unimplemented("clip_grad_norm runs on the CPU only for now; gradient " +
                         gradient.describe() + " is not a host tensor");
  }
  if (!gradient.is_contiguous()) {
    return invalid_argument("clip_grad_norm: gradient " + gradient.describe() +
                            " is not contiguous");
  }
  return ok_status();
}

}  // namespace

Result<float> clip_grad_norm(std::span<const TensorView> gradients, float max_norm) {
  if (!(max_norm > 0.0f) || !std::isfinite(max_norm)) {
    return invalid_argument("clip_grad_norm: max_norm = " + std::to_string(max_norm) +
                            " must be finite and > 0");
  }
  double sum_of_squares = 0.0;
  for (const TensorView& gradient : gradients) {
    KBIT_RETURN_IF_ERROR(check_gradient(gradient));
    const float* values = gradient.data_as<const float>();
    for (std::int64_t i = 0; i < gradient.numel(); ++i) {
      sum_of_squares += static_cast<double>(values[i]) * values[i];
    }
  }
  const auto total = static_cast<float>(std::sqrt(sum_of_squares));
  if (!std::isfinite(total)) return total;
  const float coefficient = std::min(1.0f, max_norm / (total + 1e-6f));
  for (const TensorView& gradient : gradients) {
    float* values = gradient.data_as<float>();
    for (std::int64_t i = 0; i < gradient.numel(); ++i) values[i] *= coefficient;
  }
  return total;
}

}  // namespace kbit::optim
