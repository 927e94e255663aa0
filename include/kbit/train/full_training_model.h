// Full fine-tuning of a Llama model on the CPU: every weight trained — the embedding, each decoder
// layer's seven Linears and two RMSNorm weights, the final norm and lm_head (the embedding itself
// when they are tied) — as transformers' Trainer trains a model whose parameters all require
// grad. The model keeps f32 master weights (the checkpoint's values widened exactly), computes in
// f32 as LoraTrainingModel does (the same loss, per-layer gradient checkpointing and chunked
// logits: kbit/train/lora_training_model.h), and saves its weights rounded to the dtype the
// checkpoint stored them in.
//
// Memory: the f32 weights and one f32 gradient of each, 8 bytes per parameter, beside the
// optimizer's states (kbit/optim/adamw_parameter_state.h: 2 bytes per parameter with AdamW8bit).
//
// Thread safety: loss_and_gradients() writes the gradients: one call at a time per object.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/model/llama.h"
#include "kbit/train/trainable_model.h"

namespace kbit::train {

class FullTrainingModel final : public TrainableModel {
 public:
  // Copies the weights of `base`, which model_dir holds and which must be loaded on the CPU with
  // f32 activations, without adapters, and with float Linears (f32, f16 or bf16) without biases;
  // kUnimplemented otherwise, naming what and the fix. model_dir's other files are those save()
  // copies. `base` need not outlive the result.
  static Result<FullTrainingModel> create(const model::LlamaModel& base,
                                          const std::filesystem::path& model_dir);

  FullTrainingModel(FullTrainingModel&&) noexcept;
  FullTrainingModel& operator=(FullTrainingModel&&) noexcept;
  ~FullTrainingModel() override;

  // Every weight, named as in the checkpoint: model.embed_tokens.weight; for each layer its
  // input_layernorm, q/k/v/o_proj, post_attention_layernorm and gate/up/down_proj weights;
  // model.norm.weight; and lm_head.weight unless it is tied to the embedding.
  std::vector<TrainableParameter> parameters() override;

  // As TrainableModel says; every weight's gradient (the tied embedding's sums both of its uses).
  Result<double> loss_and_gradients(std::span<const std::int32_t> input_ids,
                                    std::span<const std::int32_t> labels,
                                    std::int64_t batch) override;

  // Full fine-tuning draws no dropout masks.
  void set_dropout_seed(std::uint64_t) override {}

  // A model folder that LlamaModel::load and transformers load: dir/model.safetensors with every
  // weight rounded to its checkpoint dtype (the norms to the embedding's), then model_dir's other
  // files (config.json, the tokenizer, ...) copied.
  Status save(const std::filesystem::path& dir) const override;

 private:
  struct Weights;
  explicit FullTrainingModel(std::unique_ptr<Weights> weights);
  std::unique_ptr<Weights> weights_;
};

}  // namespace kbit::train
