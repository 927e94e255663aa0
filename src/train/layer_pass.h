// One decoder layer of one sequence in training (LoRA and full: train/causal_lm_backward.h): its
// forward by the model's own steps (model/cpu_llama.h) with every activation the backward needs
// kept, and the backward through it by the reference kernels of kernels/cpu/llama_backward.h, the
// Linears' input gradients (LinearWeight::backward_input) and, in full fine-tuning, their weight
// gradients (linear_weight_gradient_op).
//
// The layer, for x [tokens, hidden] at positions 0, 1, ...:
//   n1 = RMSNorm(x);  q, k, v = rope(Wq n1), rope(Wk n1), Wv n1;  a = attention(q, k, v)
//   h = x + Wo a;  n2 = RMSNorm(h);  g, u = Wgate n2, Wup n2;  s = silu(g) · u
//   out = h + Wdown s
// every W· being the base Linear plus its trained LoRA term, if any.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kbit/train/lora_state.h"
#include "model/cpu_llama.h"

namespace kbit::train {

// The trained LoRA of one decoder layer: for each of its Linears (model::LayerLinear order) its
// module of the state, or nullptr. Holds pointers into the state's modules.
class LayerAdapters {
 public:
  LayerAdapters(const std::array<LoraModule*, model::kLinearsPerLayer>& modules, float scaling);

  // Draws PEFT's dropout (probability p) on each module's input for a sequence of `tokens`
  // positions: factors 0 or 1 / (1 − p), from `seed` alone, so that the same seed draws the same
  // masks (the backward's recomputation of the layer sees the forward's). p = 0: none.
  void draw_dropout(double p, std::uint64_t seed, std::int64_t tokens);

  // The terms the forward adds: views of the modules' current A and B, and their dropout.
  model::LayerLora lora() const;
  LoraModule* module(model::LayerLinear linear) const { return modules_[linear]; }
  // The dropout factors of a module's input [tokens, in], or nullptr.
  const float* keep(model::LayerLinear linear) const { return terms_[linear].keep; }
  float scaling() const { return scaling_; }

 private:
  std::array<LoraModule*, model::kLinearsPerLayer> modules_;
  std::array<model::LoraTerm, model::kLinearsPerLayer> terms_;
  std::array<std::vector<float>, model::kLinearsPerLayer> keep_;
  float scaling_;
};

// Where full fine-tuning adds the gradients of a layer's own weights: each Linear's [out, in]
// (model::LayerLinear order) and each norm's [hidden]; nullptr: frozen. Owned elsewhere.
struct LayerWeightGradients {
  std::array<float*, model::kLinearsPerLayer> linears{};
  float* input_norm = nullptr;
  float* post_attention_norm = nullptr;
};

class LayerPass {
 public:
  // For one sequence of `tokens` positions, rotated with RoPE's `frequencies`.
  LayerPass(const model::CpuLlama& model, std::int64_t tokens, const float* frequencies);

  // Runs `layer` on input [tokens, hidden] (read again by backward(): it must stay), keeping
  // the activations; writes the layer's output [tokens, hidden] unless output is nullptr.
  void forward(const model::Layer& layer, const LayerAdapters& adapters, const float* input,
               float* output);

  // d_hidden [tokens, hidden]: the loss's gradient with respect to the layer's output, replaced
  // by the one with respect to its input. Adds the gradients of the adapters' A and B and of the
  // layer's weights `weights` wants. Requires forward() of the same layer and adapters just
  // before.
  void backward(const model::Layer& layer, const LayerAdapters& adapters,
                const LayerWeightGradients& weights, float* d_hidden);

 private:
  // dx [tokens, in] (+)= dy · W of the base Linear, then the LoRA term's dx added and its A and B
  // gradients accumulated, and dyᵀ · x added to d_weight [out, in] unless it is nullptr;
  // x [tokens, in] is the Linear's input.
  void linear_backward(const model::Layer& layer, const LayerAdapters& adapters,
                       model::LayerLinear linear, float* d_weight, const float* x, const float* dy,
                       float* dx, bool accumulate);
  // d_hidden += the gradient through RMSNorm(x) with `weight` given d_normed; the weight's
  // gradient added to d_weight [hidden] unless it is nullptr.
  void rms_norm_backward(const float* x, const std::vector<float>& weight, float* d_weight,
                         const float* d_normed, float* d_hidden);

  const model::CpuLlama& model_;
  std::int64_t tokens_;
  const float* frequencies_;
  const float* input_ = nullptr;
  // The forward's activations (names as above) and the backward's gradients.
  std::vector<float> n1_, q_, k_, v_, attention_, h_, n2_, gate_, up_, activation_;
  std::vector<float> d_normed_, dq_, dk_, dv_, d_attention_, d_gate_, d_up_, d_activation_;
  std::vector<float> scratch_;  // [tokens, hidden]
};

}  // namespace kbit::train
