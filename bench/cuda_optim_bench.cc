// GPU throughput of the AdamW steps (kbit/optim/adamw.h on CUDA tensors), through the trainer's
// per-parameter state (optim::AdamWParameterState), against the device's copy bandwidth.
//
// Cases, each one step per iteration:
//   * a parameter of 2^26 f32 elements (256 MiB), rotating over three parameters, each with its
//     own gradient and state, so that no step finds its data in the 60 MB L2;
//   * a parameter of 65 536 elements, a rank-16 LoRA matrix of a 4096-wide layer, where the
//     launch rather than the memory sets the time (read the time, not the GB/s).
// Each in 8-bit and 32-bit, and paged (state1 and state2 in managed memory, resident on the
// device: what paging costs when nothing is evicted).
//
// Bytes counted per element (the fewest a step must move): 8-bit 16 + 16/256 (the parameter read
// and written, the gradient read, both codes read and written, both absmax read and written per
// block of 256); 32-bit 28 (the parameter, the gradient, and both f32 moments read and written).
// Parameters and gradients are normal random values, never zeros.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "cuda_bench_timing.h"
#include "kbit/core/device.h"
#include "kbit/core/random.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/optim/adamw.h"
#include "kbit/optim/adamw_parameter_state.h"

namespace {

using kbit::DType;
using kbit::Tensor;
using kbit::optim::AdamWParameterState;

constexpr int kRotation = 3;
constexpr std::int64_t kLargeParameter = std::int64_t{1} << 26;
constexpr std::int64_t kLoraParameter = 16 * 4096;

// A parameter on the GPU with its gradient and its optimizer state.
struct Parameter {
  Tensor value;     // f32 [n]
  Tensor gradient;  // f32 [n]
  AdamWParameterState state;
};

// A device copy of normal random values (mean 0, stddev `scale`), seeded by `seed`.
kbit::Result<Tensor> random_on_gpu(std::int64_t n, std::uint64_t seed, float scale) {
  KBIT_ASSIGN_OR_RETURN(Tensor host, Tensor::empty(kbit::Shape{n}, DType::kF32));
  KBIT_RETURN_IF_ERROR(kbit::fill_normal(host.view(), seed, 0.0f, scale));
  KBIT_ASSIGN_OR_RETURN(Tensor device,
                        Tensor::empty(kbit::Shape{n}, DType::kF32, kbit::Device::cuda(0)));
  KBIT_RETURN_IF_ERROR(kbit::copy_tensor(host.view(), device.view()));
  return device;
}

kbit::Result<Parameter> make_parameter(std::int64_t n, bool eight_bit, bool paged,
                                       std::uint64_t seed) {
  KBIT_ASSIGN_OR_RETURN(Tensor value, random_on_gpu(n, seed, 0.02f));
  KBIT_ASSIGN_OR_RETURN(Tensor gradient, random_on_gpu(n, seed + 1000, 1e-3f));
  KBIT_ASSIGN_OR_RETURN(AdamWParameterState state,
                        AdamWParameterState::create(n, eight_bit, {kbit::Device::cuda(0), paged}));
  return Parameter{std::move(value), std::move(gradient), std::move(state)};
}

double bytes_per_step(std::int64_t n, bool eight_bit) {
  const double elements = static_cast<double>(n);
  return eight_bit ? elements * (16.0 + 16.0 / kbit::optim::kAdamW8bitBlockSize) : elements * 28.0;
}

// Times one step per iteration over kRotation parameters of n elements. The parameters are made
// per case (and freed after it), so the largest cases never hold more than 3 GiB together.
void run_steps(benchmark::State& state, std::int64_t n, bool eight_bit, bool paged) {
  if (!kbit::cuda_available()) {
    state.SkipWithError("no CUDA device: these benchmarks run on a GPU");
    return;
  }
  std::array<std::optional<Parameter>, kRotation> parameters;
  for (int i = 0; i < kRotation; ++i) {
    kbit::Result<Parameter> made = make_parameter(n, eight_bit, paged, 7 + 2 * i);
    if (!made.ok()) {
      state.SkipWithError(made.status().to_string().c_str());
      return;
    }
    parameters[static_cast<std::size_t>(i)].emplace(std::move(made).value());
  }
  // The first step starts from the zero state; the timed ones step from real moments.
  const kbit::optim::AdamWHyperparameters hyperparameters;
  std::string failure;
  const double gb_per_s =
      kbit::bench::run_timed(state, bytes_per_step(n, eight_bit), kRotation, [&](int index) {
        Parameter& p = *parameters[static_cast<std::size_t>(index)];
        const kbit::Status stepped =
            p.state.apply(hyperparameters, p.value.view(), p.gradient.view());
        if (!stepped.ok()) {
          failure = stepped.to_string();
          return cudaErrorInvalidValue;
        }
        return cudaGetLastError();
      });
  if (!failure.empty()) {
    state.SkipWithError(failure.c_str());
    return;
  }
  kbit::bench::report_fraction(state, gb_per_s);
  state.counters["paged"] = paged && parameters[0]->state.paged() ? 1.0 : 0.0;
}

void BM_AdamW8bitStep(benchmark::State& state) {
  run_steps(state, kLargeParameter, /*eight_bit=*/true, /*paged=*/false);
}
void BM_PagedAdamW8bitStep(benchmark::State& state) {
  run_steps(state, kLargeParameter, /*eight_bit=*/true, /*paged=*/true);
}
void BM_AdamW32bitStep(benchmark::State& state) {
  run_steps(state, kLargeParameter, /*eight_bit=*/false, /*paged=*/false);
}
void BM_PagedAdamW32bitStep(benchmark::State& state) {
  run_steps(state, kLargeParameter, /*eight_bit=*/false, /*paged=*/true);
}
void BM_AdamW8bitStepLora(benchmark::State& state) {
  run_steps(state, kLoraParameter, /*eight_bit=*/true, /*paged=*/false);
}
void BM_AdamW32bitStepLora(benchmark::State& state) {
  run_steps(state, kLoraParameter, /*eight_bit=*/false, /*paged=*/false);
}

KBIT_GPU_BENCHMARK(BM_AdamW8bitStep);
KBIT_GPU_BENCHMARK(BM_PagedAdamW8bitStep);
KBIT_GPU_BENCHMARK(BM_AdamW32bitStep);
KBIT_GPU_BENCHMARK(BM_PagedAdamW32bitStep);
KBIT_GPU_BENCHMARK(BM_AdamW8bitStepLora);
KBIT_GPU_BENCHMARK(BM_AdamW32bitStepLora);

}  // namespace
