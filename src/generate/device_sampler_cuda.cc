#include <cuda_runtime_api.h>

#include <limits>
#include <random>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/generate/device_sampler.h"
#include "kernels/cuda/sampling_launchers.h"

namespace kbit::generate {
namespace {

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(error, what);
}

}  // namespace

struct DeviceSampler::State {
  SamplingParams params;
  std::int64_t vocab = 0;
  cudaStream_t stream = nullptr;
  std::mt19937_64 random;  // Sampler's generator, seeded alike
  Tensor seen;             // u8 [vocab]
  Tensor workspace;        // u8 [sampling_workspace_bytes(vocab)]
  Tensor ids;              // i32: the chosen tokens, or history being uploaded

  // ids with room for `count`; reallocating waits for the work that may still use the old one.
  Status reserve_ids(std::int64_t count) {
    if (ids.numel() >= count) return ok_status();
    KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
    KBIT_ASSIGN_OR_RETURN(ids, Tensor::empty({count}, DType::kI32, seen.device()));
    return ok_status();
  }
};

DeviceSampler::DeviceSampler(std::unique_ptr<State> state) : state_(std::move(state)) {}
DeviceSampler::~DeviceSampler() = default;

Result<std::unique_ptr<DeviceSampler>> DeviceSampler::create(const SamplingParams& params,
                                                             std::int64_t vocab, Device device,
                                                             Stream stream) {
  KBIT_RETURN_IF_ERROR(params.validate());
  auto state = std::make_unique<State>();
  state->params = params;
  state->vocab = vocab;
  state->stream = static_cast<cudaStream_t>(stream.handle);
  state->random.seed(params.seed);
  KBIT_ASSIGN_OR_RETURN(state->seen, Tensor::empty({vocab}, DType::kU8, device));
  KBIT_RETURN_IF_ERROR(cuda_status(
      cudaMemsetAsync(state->seen.view().data(), 0, static_cast<std::size_t>(vocab), state->stream),
      "cudaMemsetAsync"));
  const auto workspace_bytes =
      static_cast<std::int64_t>(kernels::cuda::sampling_workspace_bytes(vocab));
  KBIT_ASSIGN_OR_RETURN(
      state->workspace,
      Tensor::empty({std::max<std::int64_t>(workspace_bytes, 1)}, DType::kU8, device));
  KBIT_ASSIGN_OR_RETURN(state->ids, Tensor::empty({1}, DType::kI32, device));
  return std::unique_ptr<DeviceSampler>(new DeviceSampler(std::move(state)));
}

Status DeviceSampler::observe(std::span<const std::int32_t> tokens) {
  State& s = *state_;
  if (s.params.repetition_penalty == 1.0f || tokens.empty()) return ok_status();
  const auto count = static_cast<std::int64_t>(tokens.size());
  KBIT_RETURN_IF_ERROR(s.reserve_ids(count));
  // From pageable memory the runtime stages the values at the call, so `tokens` may go.
  KBIT_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(s.ids.view().data(), tokens.data(), tokens.size_bytes(),
                                  cudaMemcpyHostToDevice, s.stream),
                  "cudaMemcpyAsync (history)"));
  return cuda_status(kernels::cuda::mark_seen(s.seen.data_as<std::uint8_t>(),
                                              s.ids.data_as<const std::int32_t>(), count, s.stream),
                     "mark_seen");
}

Result<std::int32_t> DeviceSampler::sample(const TensorView& logits) {
  KBIT_ASSIGN_OR_RETURN(const std::vector<std::int32_t> tokens, sample_rows(logits));
  if (tokens.size() != 1) {
    return invalid_argument("DeviceSampler::sample: logits of one sequence expected, got " +
                            logits.describe());
  }
  return tokens.front();
}

Result<std::vector<std::int32_t>> DeviceSampler::sample_rows(const TensorView& logits) {
  State& s = *state_;
  const std::int64_t rows = s.vocab > 0 ? logits.numel() / s.vocab : 0;
  if (logits.dtype() != DType::kF32 || rows < 1 || rows * s.vocab != logits.numel() ||
      !logits.is_contiguous() || logits.device() != s.seen.device()) {
    return invalid_argument("DeviceSampler: logits must be contiguous f32 [rows, " +
                            std::to_string(s.vocab) + "] on " + s.seen.device().to_string() +
                            ", got " + logits.describe());
  }
  const SamplingParams& p = s.params;
  if (rows > 1 && p.repetition_penalty != 1.0f) {
    return invalid_argument(
        "DeviceSampler: the repetition penalty reads one sequence's history; sample a batch "
        "without it");
  }
  KBIT_RETURN_IF_ERROR(s.reserve_ids(rows));
  const kernels::cuda::DeviceSamplingParams params{p.temperature, p.top_k, p.top_p, p.min_p,
                                                   p.repetition_penalty};
  for (std::int64_t r = 0; r < rows; ++r) {
    // The draw Sampler makes for a non-greedy step (uniform_real_distribution's canonical
    // number).
    const double uniform =
        p.greedy() ? 0.0
                   : std::generate_canonical<double, std::numeric_limits<double>::digits>(s.random);
    KBIT_RETURN_IF_ERROR(cuda_status(
        kernels::cuda::sample_token(
            logits.data_as<float>() + r * s.vocab, s.vocab, s.seen.data_as<std::uint8_t>(), params,
            uniform, s.workspace.view().data(), s.ids.data_as<std::int32_t>() + r, s.stream),
        "sample_token"));
  }
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(rows));
  KBIT_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(tokens.data(), s.ids.view().data(), tokens.size() * sizeof(std::int32_t),
                      cudaMemcpyDeviceToHost, s.stream),
      "cudaMemcpyAsync (chosen tokens)"));
  KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(s.stream), "sampling on the GPU"));
  return tokens;
}

}  // namespace kbit::generate
