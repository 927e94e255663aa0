// The Llama model on the CPU: the weights as LlamaModel::load reads them, and the steps of the
// forward (spec 11.3) that LlamaModel::forward (inference, llama.cc) and the LoRA training
// forward and backward (train/) both run, so that each step is written once. Internal to the
// library; reach a loaded model's with cpu_llama().
//
// A decoder layer over `tokens` rows of one sequence, in the order the steps run:
//   attention_inputs   normed = RMSNorm(hidden); q, k, v = projections of normed; q, k rotated
//   attention          causal grouped-query attention of q over the keys and values
//   attention_output   hidden += o_proj(attention)
//   mlp_inputs         normed = RMSNorm(hidden); gate, up = projections of normed
//   mlp_activation     gate = silu(gate) · up
//   mlp_output         hidden += down_proj(gate)
// Each projection is the base Linear plus the LoRA terms the caller passes (LayerLora): the
// adapters loaded with the model for inference, the trained ones in training.
//
// Immutable once loaded; the steps may run concurrently on distinct buffers.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/tensor.h"
#include "kbit/model/llama.h"
#include "kbit/model/llama_config.h"
#include "model/linear_weight.h"
#include "model/lora.h"

namespace kbit::model {

// A Linear layer: its weight [out, in] in any format, an optional f32 bias and the LoRA terms
// of the adapters loaded with the model that target it.
struct Linear {
  LinearWeight weight;
  std::vector<float> bias;     // empty: none
  std::vector<LoraTerm> lora;  // empty: none
};

// A layer's Linears in linear_modules() order.
enum LayerLinear : int { kQProj, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj };

struct Layer {
  std::vector<float> input_norm;
  std::vector<float> post_attention_norm;
  Linear q, k, v, o;
  Linear gate, up, down;

  // Indexed by LayerLinear.
  std::array<const Linear*, kLinearsPerLayer> linears() const {
    return {&q, &k, &v, &o, &gate, &up, &down};
  }
};

// The LoRA terms each of a layer's Linears adds, indexed by LayerLinear.
using LayerLora = std::array<std::span<const LoraTerm>, kLinearsPerLayer>;

// The terms of the adapters loaded with the model.
LayerLora loaded_lora(const Layer& layer);

struct CpuLlama {
  // The model's, wherever it runs (a GPU model uses these three only).
  LlamaConfig config;
  ExecutionOptions execution;
  LinearNumerics numerics;

  TensorView embed;  // [vocab, hidden]
  Linear lm_head;    // [vocab, hidden]; a view of the embedding when tied and not quantized
  std::vector<float> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // for rope types that do not depend on the sequence length
  bool round_bf16 = false;      // activation_dtype kBF16: round activations to bf16
  Tensor bf16_embed;            // with bf16 activations, an embedding not stored in bf16, rounded

  // Whether lm_head computes with the embedding's own storage (tied and not quantized).
  bool lm_head_is_embedding() const;

  // y [rows, out] = the Linear of x [rows, in] (its bias included) plus the terms `lora`.
  void linear(const Linear& layer, std::span<const LoraTerm> lora, const float* x,
              std::int64_t rows, float* y) const;
  // y [rows, hidden] = RMSNorm of x with `weight`; y may equal x.
  void rms_norm(const float* x, const std::vector<float>& weight, std::int64_t rows,
                float* y) const;
  // hidden[0, count) += delta, rounded to bf16 with bf16 activations (a bf16 residual add).
  void add_residual(float* hidden, const float* delta, std::int64_t count) const;
  // hidden [tokens, hidden_size] = the embedding rows of `tokens` (each in [0, vocab)), in f32.
  void embed_tokens(std::span<const std::int32_t> tokens, float* hidden) const;
  // RoPE's inv_freq [head_dim / 2] for a call whose positions end before end_position:
  // inv_freq, or for the dynamic type one computed into `storage`.
  const float* rope_frequencies(std::int64_t end_position, std::vector<float>& storage) const;

  // ---- the steps of a decoder layer (above); rows of one sequence from first_position --------
  // hidden [tokens, hidden_size] is read; normed [tokens, hidden_size], q [tokens, heads · d],
  // k and v [tokens, kv_heads · d] are written.
  void attention_inputs(const Layer& layer, const LayerLora& lora, const float* hidden,
                        std::int64_t tokens, std::int64_t first_position, const float* frequencies,
                        float* normed, float* q, float* k, float* v) const;
  // out [tokens, heads · d] from q and the keys and values of positions
  // [0, first_position + tokens) ([.., kv_heads, d]), with the config's sliding window.
  void attention(const float* q, const float* keys, const float* values, std::int64_t tokens,
                 std::int64_t first_position, float* out) const;
  // hidden [tokens, hidden_size] += o_proj(attention); proj [tokens, hidden_size] is scratch.
  void attention_output(const Layer& layer, const LayerLora& lora, const float* attention,
                        std::int64_t tokens, float* proj, float* hidden) const;
  // normed [tokens, hidden_size], gate and up [tokens, intermediate] from hidden.
  void mlp_inputs(const Layer& layer, const LayerLora& lora, const float* hidden,
                  std::int64_t tokens, float* normed, float* gate, float* up) const;
  // gate [tokens, intermediate] = silu(gate) · up, in place.
  void mlp_activation(float* gate, const float* up, std::int64_t tokens) const;
  // hidden += down_proj(activation); proj [tokens, hidden_size] is scratch.
  void mlp_output(const Layer& layer, const LayerLora& lora, const float* activation,
                  std::int64_t tokens, float* proj, float* hidden) const;
};

// The CPU side of a loaded model; nullptr for a model on a GPU.
const CpuLlama* cpu_llama(const LlamaModel& model);

}  // namespace kbit::model
