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

namespace kbit::train {

// One trained tensor: its f32 values and the gradient loss_and_gradients() adds to, of the same
// size, both owned by the model. The optimizer changes the values, never the sizes.
struct TrainableParameter {
  std::string name;  // unique in the model; names the parameter's tensors in a checkpoint
  std::span<float> values;
  std::span<float> gradient;
};

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
