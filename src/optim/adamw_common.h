// What the 32-bit and the 8-bit AdamW steps share: argument checks and the per-step factors
// (contract: kbit/optim/adamw.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/optim/adamw.h"
#include "kernels/cpu/gpu_approx_math.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/optim_launchers.h"
#endif

namespace kbit::optim::detail {

// The factors of step t that bitsandbytes' kernels compute once per thread (spec 7.3):
//   c1 = 1 − __powf(beta1, t)       c2 = sqrtf(1 − __powf(beta2, t))
//   step_size = −lr·c2 / c1          (approximate division, as under --use_fast_math)
//   decay = 1 − lr·weight_decay     (the product rounded first: nvcc does not contract it)
// beta^t is the correctly rounded float32 of the exact power of the float32 beta, and the square
// root the IEEE one: the GPU's __powf and sqrt.approx are not reproduced (adamw.h).
struct StepFactors {
  float correction2 = 0;  // c2
  float step_size = 0;
  float decay = 1;  // used only when weight_decay > 0
};

inline float power(float base, std::int64_t exponent) {
  return static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
}

inline StepFactors step_factors(const AdamWHyperparameters& hyperparameters, std::int64_t step) {
  const float correction1 = 1.0f - power(hyperparameters.beta1, step);
  const float correction2 = std::sqrt(1.0f - power(hyperparameters.beta2, step));
  StepFactors factors;
  factors.correction2 = correction2;
  factors.step_size = kernels::cpu::div_approx_ftz(-hyperparameters.lr * correction2, correction1);
  factors.decay = 1.0f - hyperparameters.lr * hyperparameters.weight_decay;
  return factors;
}

// The parameter update of one element, given its new (unquantized) moments m and v:
//   p + step_size · (m / (sqrt(v) + c2·eps)), then the decay.
// Both sums are written as fused multiply-adds, as nvcc's --fmad=true forms them; the division is
// the GPU's approximate one. The eps term is too small to tell whether nvcc fused it. Fusing the
// parameter update reproduces more golden parameters bit for bit: 97% against 89% after step 1,
// measured once by hand with the spec's inferred __powf values (7.3) put in place of beta2^t.
inline float updated_parameter(float param, float m, float v, const StepFactors& factors,
                               const AdamWHyperparameters& hyperparameters) {
  const float denominator = std::fma(factors.correction2, hyperparameters.eps, std::sqrt(v));
  const float update = kernels::cpu::div_approx_ftz(m, denominator);
  float result = std::fma(factors.step_size, update, param);
  if (hyperparameters.weight_decay > 0.0f) result *= factors.decay;
  return result;
}

// The checks every step makes before touching anything: hyperparameters, the step count, and
// param / grad (f32, contiguous, same element count, n >= 1, on one device this build supports).
Status check_step_arguments(const AdamWHyperparameters& hyperparameters, const TensorView& param,
                            const TensorView& grad, std::int64_t completed_steps);

#if defined(KBIT_WITH_CUDA)
inline kernels::cuda::AdamWKernelHyperparameters kernel_hyperparameters(
    const AdamWHyperparameters& hyperparameters) {
  return {hyperparameters.lr, hyperparameters.beta1, hyperparameters.beta2, hyperparameters.eps,
          hyperparameters.weight_decay};
}
#endif

}  // namespace kbit::optim::detail
