// AdamW's hyperparameter and argument checks, and the 32-bit step (bitsandbytes'
// kOptimizer32bit2State with OPTIMIZER = ADAM): on the CPU here, on CUDA devices in
// kernels/cuda/adamw.cu.
#include "kbit/optim/adamw.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "core/cuda_runtime.h"
#include "optim/adamw_common.h"
#include "quant/checks.h"

namespace kbit::optim {
namespace {

std::string describe_value(float value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", static_cast<double>(value));
  return buffer;
}

Status out_of_range(const char* name, float value, const char* range) {
  return invalid_argument(std::string("AdamW hyperparameter ") + name + " = " +
                          describe_value(value) + " is out of range; it must be " + range);
}

}  // namespace

Status check_adamw_hyperparameters(const AdamWHyperparameters& hyperparameters) {
  const float max = std::numeric_limits<float>::max();
  if (!(hyperparameters.lr >= 0.0f && hyperparameters.lr <= max)) {
    return out_of_range("lr", hyperparameters.lr, "finite and >= 0");
  }
  if (!(hyperparameters.beta1 >= 0.0f && hyperparameters.beta1 < 1.0f)) {
    return out_of_range("beta1", hyperparameters.beta1, "in [0, 1)");
  }
  if (!(hyperparameters.beta2 >= 0.0f && hyperparameters.beta2 < 1.0f)) {
    return out_of_range("beta2", hyperparameters.beta2, "in [0, 1)");
  }
  if (!(hyperparameters.eps >= 0.0f && hyperparameters.eps <= max)) {
    return out_of_range("eps", hyperparameters.eps, "finite and >= 0");
  }
  if (!(hyperparameters.weight_decay >= 0.0f && hyperparameters.weight_decay <= max)) {
    return out_of_range("weight_decay", hyperparameters.weight_decay, "finite and >= 0");
  }
  return ok_status();
}

std::int64_t adamw8bit_block_count(std::int64_t n) {
  return (n + kAdamW8bitBlockSize - 1) / kAdamW8bitBlockSize;
}

bool adamw_state_is_8bit(std::int64_t n, bool eight_bit_optimizer) {
  return eight_bit_optimizer && n >= kMin8bitStateSize;
}

std::int64_t adamw_state_bytes(std::int64_t n, bool eight_bit_optimizer) {
  const auto f32_bytes = static_cast<std::int64_t>(sizeof(float));
  if (!adamw_state_is_8bit(n, eight_bit_optimizer)) return 2 * f32_bytes * n;
  return 2 * n + 2 * f32_bytes * adamw8bit_block_count(n);
}

namespace detail {

Status check_step_arguments(const AdamWHyperparameters& hyperparameters, const TensorView& param,
                            const TensorView& grad, std::int64_t completed_steps) {
  KBIT_RETURN_IF_ERROR(check_adamw_hyperparameters(hyperparameters));
  // bitsandbytes' kernels take the step as an int.
  if (completed_steps < 0 || completed_steps >= std::numeric_limits<std::int32_t>::max()) {
    return invalid_argument("AdamW state step = " + std::to_string(completed_steps) +
                            " is out of range; it counts completed steps, from 0 to 2^31 - 2");
  }
  if (param.numel() == 0) {
    return invalid_argument("param (" + param.describe() +
                            ") is empty; AdamW needs at least "
                            "one element");
  }
  KBIT_RETURN_IF_ERROR(quant::check_tensor(param, "param", {DType::kF32}, param.numel()));
  KBIT_RETURN_IF_ERROR(quant::check_tensor(grad, "grad", {DType::kF32}, param.numel()));
  KBIT_RETURN_IF_ERROR(quant::check_same_device({&param, &grad}));
  return quant::check_device_supported(param);
}

}  // namespace detail

Status adamw32bit_step(const AdamWHyperparameters& hyperparameters, TensorView param,
                       const TensorView& grad, AdamW32bitState* state,
                       const ExecutionOptions& options) {
  if (state == nullptr) return invalid_argument("adamw32bit_step: state is null");
  KBIT_RETURN_IF_ERROR(detail::check_step_arguments(hyperparameters, param, grad, state->step));
  const std::int64_t n = param.numel();
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state->state1, "state1 (m)", {DType::kF32}, n));
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state->state2, "state2 (v)", {DType::kF32}, n));
  KBIT_RETURN_IF_ERROR(quant::check_same_device({&param, &state->state1, &state->state2}));

  const std::int64_t step = state->step + 1;
  if (param.device().is_cuda()) {
#if defined(KBIT_WITH_CUDA)
    KBIT_RETURN_IF_ERROR(kbit::detail::status_from_cuda_error(
        kernels::cuda::adamw32bit_step(
            detail::kernel_hyperparameters(hyperparameters), static_cast<int>(step),
            param.data_as<float>(), grad.data_as<const float>(), state->state1.data_as<float>(),
            state->state2.data_as<float>(), n, static_cast<cudaStream_t>(options.stream.handle)),
        "adamw32bit_step"));
    state->step = step;
    return ok_status();
#else
    (void)options;
    return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
  }
  const detail::StepFactors factors = detail::step_factors(hyperparameters, step);
  const float beta1 = hyperparameters.beta1;
  const float beta2 = hyperparameters.beta2;
  const float one_minus_beta1 = 1.0f - beta1;
  const float one_minus_beta2 = 1.0f - beta2;
  float* p = param.data_as<float>();
  const float* g = grad.data_as<const float>();
  float* m = state->state1.data_as<float>();
  float* v = state->state2.data_as<float>();
  for (std::int64_t i = 0; i < n; ++i) {
    // bitsandbytes writes `m·beta1 + (1 − beta1)·g` and `v·beta2 + (1 − beta2)·(g·g)`; here nvcc
    // fuses the first product into the sum (unlike in the 8-bit kernel, adamw8bit.cc): with these
    // forms every golden m and v is bitsandbytes' (adamw_test.cc).
    m[i] = std::fma(m[i], beta1, one_minus_beta1 * g[i]);
    v[i] = std::fma(v[i], beta2, one_minus_beta2 * (g[i] * g[i]));
    p[i] = detail::updated_parameter(p[i], m[i], v[i], factors, hyperparameters);
  }
  state->step = step;
  return ok_status();
}

}  // namespace kbit::optim
