// The 8-bit AdamW step (bitsandbytes' kOptimizerStatic8bit2StateBlockwise with OPTIMIZER = ADAM,
// one 256-thread CUDA block per 256 elements; spec 7.3): on CUDA devices in
// kernels/cuda/adamw.cu; on the CPU here, one block of the state at a time. The blocks are
// independent, so they are split over the thread pool: the same bits for any count.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/core/parallel.h"
#include "kbit/optim/adamw.h"
#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cpu/gpu_approx_math.h"
#include "optim/adamw_common.h"
#include "quant/checks.h"

namespace kbit::optim {
namespace {

using kernels::cpu::div_approx_ftz;

// Blocks of 256 elements per task of the thread pool (64 Ki elements).
constexpr std::int64_t kBlocksPerTask = 256;

// Codes the GPU's padding lanes load for elements past n (spec 7.3, padding note).
constexpr std::uint8_t kPaddingCode1 = 128;
constexpr std::uint8_t kPaddingCode2 = 0;

// The state's shapes and device; on the CPU also its absmax values.
Status check_state(const AdamW8bitState& state, const TensorView& param) {
  const std::int64_t n = param.numel();
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state.state1, "state1 (codes of m)", {DType::kU8}, n));
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state.state2, "state2 (codes of v)", {DType::kU8}, n));
  const std::int64_t blocks = adamw8bit_block_count(n);
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state.absmax1, "absmax1", {DType::kF32}, blocks));
  KBIT_RETURN_IF_ERROR(quant::check_tensor(state.absmax2, "absmax2", {DType::kF32}, blocks));
  KBIT_RETURN_IF_ERROR(quant::check_same_device(
      {&param, &state.state1, &state.state2, &state.absmax1, &state.absmax2}));
  if (param.device().is_cuda()) return ok_status();
  for (const TensorView* tensor : {&state.absmax1, &state.absmax2}) {
    const float* absmax = tensor->data_as<const float>();
    for (std::int64_t block = 0; block < blocks; ++block) {
      if (!(absmax[block] >= 0.0f && absmax[block] <= std::numeric_limits<float>::max())) {
        return invalid_argument(std::string(tensor == &state.absmax1 ? "absmax1" : "absmax2") +
                                "[" + std::to_string(block) +
                                "] = " + std::to_string(absmax[block]) +
                                " is not a finite value >= 0; the 8-bit AdamW state is corrupt");
      }
    }
  }
  return ok_status();
}

// The moments of one element from its stored codes and its gradient g, as the kernel computes
// them: dequantize (map · absmax), then `v·beta2 + (1 − beta2)·g·g` and `m·beta1 + (1 − beta1)·g`
// with the multiply-adds nvcc fuses (spec 7.3: with these forms every golden absmax matches).
struct Moments {
  float m = 0;
  float v = 0;
};

struct BlockConstants {
  float beta1 = 0;
  float beta2 = 0;
  float one_minus_beta1 = 0;
  float one_minus_beta2 = 0;
  float absmax1 = 0;  // the block's absmax before the step
  float absmax2 = 0;
};

Moments updated_moments(std::uint8_t code1, std::uint8_t code2, float g, const BlockConstants& k) {
  Moments moments;
  const float v = quant::kDynamicUnsignedMap[code2] * k.absmax2;
  moments.v = std::fma(k.one_minus_beta2 * g, g, v * k.beta2);
  const float m = quant::kDynamicSignedMap[code1] * k.absmax1;
  moments.m = std::fma(k.one_minus_beta1, g, m * k.beta1);
  return moments;
}

}  // namespace

Status adamw8bit_step(const AdamWHyperparameters& hyperparameters, TensorView param,
                      const TensorView& grad, AdamW8bitState* state,
                      const ExecutionOptions& options) {
  if (state == nullptr) return invalid_argument("adamw8bit_step: state is null");
  KBIT_RETURN_IF_ERROR(detail::check_step_arguments(hyperparameters, param, grad, state->step));
  const std::int64_t n = param.numel();
  KBIT_RETURN_IF_ERROR(check_state(*state, param));

  const std::int64_t step = state->step + 1;
  if (param.device().is_cuda()) {
#if defined(KBIT_WITH_CUDA)
    KBIT_RETURN_IF_ERROR(kbit::detail::status_from_cuda_error(
        kernels::cuda::adamw8bit_step(
            detail::kernel_hyperparameters(hyperparameters), static_cast<int>(step),
            param.data_as<float>(), grad.data_as<const float>(),
            state->state1.data_as<std::uint8_t>(), state->state2.data_as<std::uint8_t>(),
            state->absmax1.data_as<float>(), state->absmax2.data_as<float>(), n,
            static_cast<cudaStream_t>(options.stream.handle)),
        "adamw8bit_step"));
    state->step = step;
    return ok_status();
#else
    (void)options;
    return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
  }
  const detail::StepFactors factors = detail::step_factors(hyperparameters, step);
  float* p = param.data_as<float>();
  const float* g = grad.data_as<const float>();
  std::uint8_t* codes1 = state->state1.data_as<std::uint8_t>();
  std::uint8_t* codes2 = state->state2.data_as<std::uint8_t>();
  float* absmax1 = state->absmax1.data_as<float>();
  float* absmax2 = state->absmax2.data_as<float>();
  const float* map1 = quant::kDynamicSignedMap.data();
  const float* map2 = quant::kDynamicUnsignedMap.data();

  const auto step_blocks = [&](std::int64_t first_block, std::int64_t end_block) {
    std::array<Moments, kAdamW8bitBlockSize> moments;
    for (std::int64_t block = first_block; block < end_block; ++block) {
      const std::int64_t begin = block * kAdamW8bitBlockSize;
      const std::int64_t count = std::min(kAdamW8bitBlockSize, n - begin);
      BlockConstants constants;
      constants.beta1 = hyperparameters.beta1;
      constants.beta2 = hyperparameters.beta2;
      constants.one_minus_beta1 = 1.0f - hyperparameters.beta1;
      constants.one_minus_beta2 = 1.0f - hyperparameters.beta2;
      constants.absmax1 = absmax1[block];
      constants.absmax2 = absmax2[block];

      // 1. New moments, unquantized, and the block's new maxima. A non-finite gradient resets
      //    the element's moments to 0.
      float new_absmax1 = -std::numeric_limits<float>::max();
      float new_absmax2 = -std::numeric_limits<float>::max();
      for (std::int64_t j = 0; j < count; ++j) {
        const std::int64_t i = begin + j;
        Moments& element = moments[static_cast<std::size_t>(j)];
        element = std::isfinite(g[i]) ? updated_moments(codes1[i], codes2[i], g[i], constants)
                                      : Moments{};
        new_absmax1 = std::fmax(new_absmax1, std::fabs(element.m));
        new_absmax2 = std::fmax(new_absmax2, std::fabs(element.v));
      }
      if (count < kAdamW8bitBlockSize) {
        // The GPU's lanes past n load gradient 0 and the padding codes, and take part in the max.
        const Moments padding = updated_moments(kPaddingCode1, kPaddingCode2, 0.0f, constants);
        new_absmax1 = std::fmax(new_absmax1, std::fabs(padding.m));
        new_absmax2 = std::fmax(new_absmax2, std::fabs(padding.v));
      }
      absmax1[block] = new_absmax1;
      absmax2[block] = new_absmax2;

      // 2. The parameter step uses the unquantized moments; then the moments are requantized
      //    against the new maxima with the GPU's approximate division.
      for (std::int64_t j = 0; j < count; ++j) {
        const std::int64_t i = begin + j;
        const Moments& element = moments[static_cast<std::size_t>(j)];
        if (std::isfinite(g[i])) {
          p[i] = detail::updated_parameter(p[i], element.m, element.v, factors, hyperparameters);
        }
        std::uint8_t code1 =
            kernels::search_dynamic_map(div_approx_ftz(element.m, new_absmax1), map1);
        const std::uint8_t code2 =
            kernels::search_dynamic_map(div_approx_ftz(element.v, new_absmax2), map2);
        // Keep the sign of m (not needed for v >= 0); uint8 arithmetic wraps as on the GPU, so a
        // block of zeros (0/0 = NaN -> code 0, negative) ends at code 255 (spec 7.3).
        if (std::signbit(map1[code1]) != std::signbit(element.m)) {
          code1 = static_cast<std::uint8_t>(element.m > 0.0f ? code1 + 1 : code1 - 1);
        }
        codes1[i] = code1;
        codes2[i] = code2;
      }
    }
  };
  parallel_for(adamw8bit_block_count(n), kBlocksPerTask, step_blocks);
  state->step = step;
  return ok_status();
}

}  // namespace kbit::optim
