// The causal-LM loss of a batch and its backward on the CPU, for everything training trains:
// the LoRA modules of LoRA fine-tuning and the model's own weights in full fine-tuning. The
// contract users see is LoraTrainingModel::loss_and_gradients (kbit/train/lora_training_model.h);
// FullTrainingModel (kbit/train/full_training_model.h) runs the same code.
//
// One sequence at a time: the forward keeps each decoder layer's input only (per-layer gradient
// checkpointing: LayerPass recomputes a layer's activations before its backward), and the loss
// computes full-vocabulary logits a chunk of labelled positions at a time.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/train/lora_state.h"
#include "model/cpu_llama.h"
#include "train/layer_pass.h"

namespace kbit::train {

// The gradients of the model's own weights (full fine-tuning), added to; nullptr: frozen.
struct ModelWeightGradients {
  float* embed = nullptr;       // [vocab, hidden]
  float* lm_head = nullptr;     // [vocab, hidden]; the embedding's own when they are tied
  float* final_norm = nullptr;  // [hidden]
  std::vector<LayerWeightGradients> layers;  // one per decoder layer, or none
};

// What a batch's backward computes gradients of. Pointers into state owned elsewhere.
struct TrainedParts {
  // For each decoder layer, its LoRA modules by model::LayerLinear (nullptr: none); or empty.
  std::vector<std::array<LoraModule*, model::kLinearsPerLayer>> lora;
  float lora_scaling = 1.0f;
  double lora_dropout = 0.0;
  ModelWeightGradients weights;
};

// Whether training can run on the model: on the CPU (`cpu` not nullptr), with f32 activations
// and no adapters loaded; kUnimplemented saying which and the fix.
Status check_trainable_model(const model::CpuLlama* cpu);

// kInvalidArgument for ids and labels that are not [batch, T] of the vocabulary (labels −100
// allowed) or have no labelled target; kUnimplemented for T beyond a sliding window.
Status check_training_batch(const model::LlamaConfig& config,
                            std::span<const std::int32_t> input_ids,
                            std::span<const std::int32_t> labels, std::int64_t batch);

// The targets of a batch that check_training_batch accepts, [batch, T]: position t of sequence b
// predicts labels[b][t + 1], the last position of each sequence nothing (−100); and how many are
// labelled.
struct ShiftedTargets {
  std::vector<std::int32_t> targets;
  std::int64_t labelled = 0;
};
ShiftedTargets shift_labels(std::span<const std::int32_t> labels, std::int64_t batch);

// The mean cross-entropy over the labelled targets of a batch that check_training_batch
// accepts, as LoraTrainingModel::loss_and_gradients says, adding its gradient with respect to
// everything `parts` names. Dropout masks come from `dropout_seed`.
double causal_lm_loss_and_gradients(const model::CpuLlama& model, const TrainedParts& parts,
                                    std::span<const std::int32_t> input_ids,
                                    std::span<const std::int32_t> labels, std::int64_t batch,
                                    std::uint64_t dropout_seed);

}  // namespace kbit::train
