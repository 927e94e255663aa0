// Sampler's work on a GPU: the logits a model on the GPU produced are processed and drawn from
// there (kernels/cuda/sampling_launchers.h), and only the chosen id comes back to the host. The
// same processors, order and ties as Sampler (kbit/generate/sampler.h), and the same draws: the
// uniform numbers come from Sampler's generator, seeded alike, so a seed gives the same tokens on
// either device where the logits are the same.
//
// Not thread safe. In builds without CUDA, create() fails with kUnimplemented.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/generate/sampler.h"

namespace kbit::generate {

class DeviceSampler {
 public:
  // Requires params.validate().ok(). Work is queued on `stream` (the one the logits are made
  // on: the sequence's KvCache::stream()).
  static Result<std::unique_ptr<DeviceSampler>> create(const SamplingParams& params,
                                                       std::int64_t vocab, Device device,
                                                       Stream stream);
  ~DeviceSampler();
  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;

  // Adds tokens (each in [0, vocab)) to the history the repetition penalty reads.
  Status observe(std::span<const std::int32_t> tokens);

  // The next token from logits f32 [vocab] (or [1, vocab]) on the device (modified in place),
  // waiting for it.
  Result<std::int32_t> sample(const TensorView& logits);
  // One token from each row of logits f32 [rows, vocab] (the sequences of a batch), waiting once
  // for all. With rows > 1 the repetition penalty must be off: the history is one sequence's.
  Result<std::vector<std::int32_t>> sample_rows(const TensorView& logits);

 private:
  struct State;
  explicit DeviceSampler(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kbit::generate
