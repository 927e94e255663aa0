// LoRA fine-tuning of a Llama model on a CUDA device: LoraTrainingModel's loss and gradients
// (kbit/train/lora_training_model.h: the same loss, the same LoRA terms and dropout masks, per-
// layer gradient checkpointing) computed by kbit's CUDA kernels on a base LlamaModel loaded on the
// GPU, with the adapters' weights and gradients in device memory.
//
// Numerics: as the base model computes (LlamaModel::forward on the GPU): activations stored in
// its activation dtype (f32 or bf16: transformers' Trainer with bf16=True), arithmetic in f32;
// the LoRA terms in f32 as PEFT computes them (lora_dtype kF32: LoraTrainingModel's terms), or
// with bf16 activations in bf16 as PEFT under torch.autocast(bf16) computes them, which is what
// transformers' Trainer with bf16=True runs (kBF16: A and B rounded to bf16 for the products,
// f32 accumulation, f32 gradients of A and B; kernels/cuda/lora_launchers.h); the base Linears'
// input gradients as bitsandbytes'
// backward (the 4-bit weight dequantized a chunk at a time, never stored whole); attention's
// backward from recomputed probabilities (FlashAttention-2). With f32 activations the results
// are the CPU model's up to the order of f32 sums.
//
// Memory: sequences_per_pass sequences run through the layers at once; beyond the base weights
// and the adapters (A, B and their gradients in f32), a pass keeps each decoder layer's input
// ([layers + 1, rows, hidden] in the activation dtype) and one layer's activations, which the
// backward recomputes layer by layer; the loss takes lm_head's logits kLogitChunkRows rows at a
// time. A batch of more sequences runs as several passes whose gradients add up.
//
// Thread safety: one call at a time per object. The work runs on a stream of the object's own;
// loss_and_gradients() returns with it finished.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kbit/model/llama.h"
#include "kbit/train/lora_state.h"
#include "kbit/train/trainable_model.h"

namespace kbit::train {

class CudaLoraTrainingModel final : public TrainableModel {
 public:
  // Trains `state` (copied to the device) on `base`, which must be loaded on a CUDA device
  // without adapters, with float, 4-bit or int8 Linears, and
  // must outlive the result. Every module of the state must be a Linear of the base's decoder
  // layers with its shape (kInvalidArgument naming the module otherwise). sequences_per_pass
  // >= 1. lora_dtype: kF32, or kBF16 on a base with bf16 activations (see Numerics).
  // kUnimplemented in a build without CUDA.
  static Result<CudaLoraTrainingModel> create(const model::LlamaModel& base, const LoraState& state,
                                              std::int64_t sequences_per_pass,
                                              DType lora_dtype = DType::kF32);

  CudaLoraTrainingModel(CudaLoraTrainingModel&&) noexcept;
  CudaLoraTrainingModel& operator=(CudaLoraTrainingModel&&) noexcept;
  ~CudaLoraTrainingModel() override;

  // Every module's lora_A [r, in] and lora_B [out, r] as device tensors, named as
  // LoraTrainingModel names them, with their gradients.
  std::vector<TrainableParameter> parameters() override;

  // As TrainableModel and LoraTrainingModel say, on the device.
  Result<double> loss_and_gradients(std::span<const std::int32_t> input_ids,
                                    std::span<const std::int32_t> labels,
                                    std::int64_t batch) override;

  void set_dropout_seed(std::uint64_t seed) override;

  // The adapters and their gradients as they are now, copied from the device.
  Result<LoraState> state() const;

  // The adapter as PEFT saves it (LoraState::save of state()).
  Status save(const std::filesystem::path& dir) const override;

  // Device memory this object holds (adapters, gradients, activations and scratch), in bytes.
  std::size_t device_bytes() const;

 private:
  struct Impl;
  explicit CudaLoraTrainingModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::train
