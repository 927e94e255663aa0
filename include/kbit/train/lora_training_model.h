// LoRA fine-tuning of a Llama model on the CPU: the training forward and the backward of the
// causal-LM loss with respect to the LoRA weights, everything else frozen (the base Linears in
// any format — float, 4-bit, int8 — the embedding, the norms and lm_head), as PEFT trains an
// adapter on a base prepared by prepare_model_for_kbit_training (spec 9.5, 9.6) with gradient
// checkpointing and the config's lora_dropout.
//
// The loss of a batch of token sequences, as transformers' LlamaForCausalLM computes it: the
// logits at position t predict labels[t + 1] (the labels are shifted inside; labels[., 0] is
// never a target), positions whose target is −100 are ignored, and the loss is the mean
// cross-entropy over the batch's labelled targets (reduction "mean"). The model computes in f32:
// the base as LlamaModel::forward does, each LoRA term as PEFT's forward (LoRA weights in f32),
// the base Linears' input gradients as bitsandbytes' backward (LinearWeight::backward_input).
//
// Memory: one sequence at a time, keeping only each layer's input hidden state from the forward
// (per-layer gradient checkpointing: the backward recomputes a layer's activations from its
// input before going back through it), and the full-vocabulary logits of a chunk of positions
// at a time, never the whole sequence's.
//
// Usage:
//   KBIT_ASSIGN_OR_RETURN(LlamaModel base, LlamaModel::load(dir, options));   // CPU, f32
//   KBIT_ASSIGN_OR_RETURN(LoraState state, LoraState::create(base.config(), lora, seed));
//   KBIT_ASSIGN_OR_RETURN(LoraTrainingModel model, LoraTrainingModel::create(base, state));
//   model.state().zero_gradients();
//   KBIT_ASSIGN_OR_RETURN(double loss, model.loss_and_gradients(input_ids, labels, batch));
//   ... an optimizer step on model.state().modules() (kbit/optim/adamw.h)
//
// Thread safety: loss_and_gradients() writes the state's gradients: one call at a time per
// object. The forward's kernels and the base Linears' input gradients run on the base model's
// thread pool (its ExecutionOptions); the other backward steps are, for now, the single-threaded
// reference kernels of kernels/cpu/llama_backward.h.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/model/llama.h"
#include "kbit/train/lora_state.h"
#include "kbit/train/trainable_model.h"

namespace kbit::train {

class LoraTrainingModel final : public TrainableModel {
 public:
  // Trains `state` on `base`, which must outlive the returned object and be loaded on the CPU
  // with f32 activations and without adapters. Every module of the state must be a Linear of
  // the base's decoder layers, with its shape. Fails with kUnimplemented for a model on a GPU
  // ("CPU only for now"), bf16 activations or loaded adapters; with
  // kInvalidArgument, naming the module, for a state that does not fit the model.
  static Result<LoraTrainingModel> create(const model::LlamaModel& base, LoraState state);

  LoraTrainingModel(LoraTrainingModel&&) noexcept;
  LoraTrainingModel& operator=(LoraTrainingModel&&) noexcept;
  ~LoraTrainingModel();

  const LoraState& state() const { return state_; }
  LoraState& state() { return state_; }

  // Every module's lora_A [r, in] and lora_B [out, r], named "<module>.lora_A" and
  // "<module>.lora_B", with their gradients in the state.
  std::vector<TrainableParameter> parameters() override;

  // As TrainableModel says; the gradients are those of every LoRA A and B.
  // With the config's lora_dropout > 0, each LoRA term's input goes through PEFT's dropout
  // (elements zeroed with probability p, the rest scaled by 1 / (1 − p)), its masks drawn from
  // the dropout seed, each sequence's index in the batch, its layer and its Linear: the same
  // seed, the same masks.
  Result<double> loss_and_gradients(std::span<const std::int32_t> input_ids,
                                    std::span<const std::int32_t> labels,
                                    std::int64_t batch) override;

  void set_dropout_seed(std::uint64_t seed) override { dropout_seed_ = seed; }

  // The adapter as PEFT saves it (LoraState::save).
  Status save(const std::filesystem::path& dir) const override { return state_.save(dir); }

 private:
  LoraTrainingModel(const model::LlamaModel& base, LoraState state);

  const model::LlamaModel* base_;
  LoraState state_;
  // For each decoder layer and each of its Linears (linear_modules() order), the index of its
  // module in state_, or −1 where it has no LoRA.
  std::vector<std::array<int, model::kLinearsPerLayer>> placement_;
  std::uint64_t dropout_seed_ = 0;
};

}  // namespace kbit::train
