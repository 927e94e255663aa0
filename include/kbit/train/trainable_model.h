// What a Trainer (kbit/train/trainer.h) trains: a model with parameters, the loss of a batch and
// its gradients, and the files users load afterwards. LoraTrainingModel (LoRA adapters on a
// frozen base) and FullTrainingModel (every weight) are the two.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::train {

// One trained tensor: its f32 values and the gradient loss_and_gradients() adds to, of the same
// size, both owned by the model, contiguous and on the device the model computes on (the host,
// or a CUDA device). The optimizer changes the values, never the sizes.
struct TrainableParameter {
  std::string name;     // unique in the model; names the parameter's tensors in a checkpoint
  TensorView values;    // f32 [n]
  TensorView gradient;  // f32 [n]

  // The values and gradient as host spans: only for a parameter on the host.
  std::span<float> host_values() const { return host_span(values); }
  std::span<float> host_gradient() const { return host_span(gradient); }

 private:
  static std::span<float> host_span(const TensorView& view) {
    return {view.data_as<float>(), static_cast<std::size_t>(view.numel())};
  }
};

// A host vector as the one-dimensional f32 view a TrainableParameter holds.
inline TensorView host_vector_view(std::span<float> values) {
  return TensorView(values.data(), DType::kF32, Shape{static_cast<std::int64_t>(values.size())});
}

class TrainableModel {
 public:
  virtual ~TrainableModel() = default;

  // Every parameter, always in the same order; the spans stay valid while the model lives.
  virtual std::vector<TrainableParameter> parameters() = 0;

  // input_ids and labels are [batch, T], sequence-major (the same T for every sequence, T >= 1),
  // token ids in [0, vocab) and labels in [0, vocab) or −100. Returns the mean cross-entropy
  // over the labelled targets, as transformers' LlamaForCausalLM computes it (position t
  // predicts labels[t + 1]), in double from f32 logits, and ADDS its gradient to every
  // parameter's gradient (zero them first for one batch's gradient; leave them to accumulate
  // micro-batches, each weighted by its own mean). kInvalidArgument, leaving the gradients
  // unchanged, for mismatched sizes, an id or label out of range, or no labelled target at all;
  // kUnimplemented for sequences longer than the model's sliding window (Mistral).
  virtual Result<double> loss_and_gradients(std::span<const std::int32_t> input_ids,
                                            std::span<const std::int32_t> labels,
                                            std::int64_t batch) = 0;

  // The seed of the dropout masks of the calls that follow (a trainer sets one per step);
  // a model without dropout ignores it.
  virtual void set_dropout_seed(std::uint64_t seed) = 0;

  // Writes what users load into the folder `dir` (made if missing; each file written whole):
  // a PEFT adapter, or a model folder.
  virtual Status save(const std::filesystem::path& dir) const = 0;
};

}  // namespace kbit::train
