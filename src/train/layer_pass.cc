#include "train/layer_pass.h"

#include <algorithm>
#include <cmath>

#include "kbit/core/random.h"
#include "kernels/cpu/llama_backward.h"

namespace kbit::train {
namespace {

namespace k = kbit::kernels::cpu;
using model::LayerLinear;

void add(const std::vector<float>& delta, float* values) {
  for (std::size_t i = 0; i < delta.size(); ++i) values[i] += delta[i];
}

}  // namespace

LayerAdapters::LayerAdapters(const std::array<LoraModule*, model::kLinearsPerLayer>& modules,
                             float scaling)
    : modules_(modules), scaling_(scaling) {
  for (int j = 0; j < model::kLinearsPerLayer; ++j) {
    LoraModule* module = modules_[j];
    if (module == nullptr) continue;
    terms_[j] = model::LoraTerm{
        TensorView(module->a.data(), DType::kF32, {module->rank, module->in_features}),
        TensorView(module->b.data(), DType::kF32, {module->out_features, module->rank}), scaling};
  }
}

void LayerAdapters::draw_dropout(double p, std::uint64_t seed, std::int64_t tokens) {
  if (p <= 0) return;
  // nn.Dropout: each element kept with probability 1 − p and scaled by 1 / (1 − p) (f32).
  const float kept = p < 1 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
  for (int j = 0; j < model::kLinearsPerLayer; ++j) {
    if (modules_[j] == nullptr) continue;
    std::vector<float>& keep = keep_[j];
    keep.resize(static_cast<std::size_t>(tokens * modules_[j]->in_features));
    const std::uint64_t stream = random_bits(seed, static_cast<std::uint64_t>(j));
    for (std::size_t i = 0; i < keep.size(); ++i) {
      const double uniform = static_cast<double>(random_bits(stream, i) >> 11) * 0x1p-53;
      keep[i] = uniform < p ? 0.0f : kept;
    }
    terms_[j].keep = keep.data();
  }
}

model::LayerLora LayerAdapters::lora() const {
  model::LayerLora lora;
  for (int j = 0; j < model::kLinearsPerLayer; ++j) {
    if (modules_[j] != nullptr) lora[j] = std::span<const model::LoraTerm>(&terms_[j], 1);
  }
  return lora;
}

LayerPass::LayerPass(const model::CpuLlama& model, std::int64_t tokens, const float* frequencies)
    : model_(model), tokens_(tokens), frequencies_(frequencies) {
  const model::LlamaConfig& c = model.config;
  const auto rows = [&](std::int64_t width) { return static_cast<std::size_t>(tokens * width); };
  const std::int64_t q_width = c.num_attention_heads * c.head_dim;
  const std::int64_t kv_width = c.num_key_value_heads * c.head_dim;
  for (std::vector<float>* buffer : {&n1_, &h_, &n2_, &d_normed_, &scratch_}) {
    buffer->resize(rows(c.hidden_size));
  }
  for (std::vector<float>* buffer : {&q_, &attention_, &dq_, &d_attention_}) {
    buffer->resize(rows(q_width));
  }
  for (std::vector<float>* buffer : {&k_, &v_, &dk_, &dv_}) buffer->resize(rows(kv_width));
  for (std::vector<float>* buffer :
       {&gate_, &up_, &activation_, &d_gate_, &d_up_, &d_activation_}) {
    buffer->resize(rows(c.intermediate_size));
  }
}

void LayerPass::forward(const model::Layer& layer, const LayerAdapters& adapters,
                        const float* input, float* output) {
  const model::LayerLora lora = adapters.lora();
  input_ = input;
  model_.attention_inputs(layer, lora, input, tokens_, 0, frequencies_, n1_.data(), q_.data(),
                          k_.data(), v_.data());
  model_.attention(q_.data(), k_.data(), v_.data(), tokens_, 0, attention_.data());
  std::copy(input, input + h_.size(), h_.begin());
  model_.attention_output(layer, lora, attention_.data(), tokens_, scratch_.data(), h_.data());
  model_.mlp_inputs(layer, lora, h_.data(), tokens_, n2_.data(), gate_.data(), up_.data());
  activation_ = gate_;
  model_.mlp_activation(activation_.data(), up_.data(), tokens_);
  if (output == nullptr) return;
  std::copy(h_.begin(), h_.end(), output);
  model_.mlp_output(layer, lora, activation_.data(), tokens_, scratch_.data(), output);
}

void LayerPass::backward(const model::Layer& layer, const LayerAdapters& adapters,
                         const LayerWeightGradients& weights, float* d_hidden) {
  const model::LlamaConfig& c = model_.config;
  const auto backward_linear = [&](LayerLinear linear, const float* x, const float* dy, float* dx,
                                   bool accumulate) {
    linear_backward(layer, adapters, linear, weights.linears[linear], x, dy, dx, accumulate);
  };
  // out = h + Wdown s, s = silu(g) · u, g and u from n2 = RMSNorm(h).
  backward_linear(model::kDownProj, activation_.data(), d_hidden, d_activation_.data(), false);
  k::silu_mul_backward_reference(gate_.data(), up_.data(), d_activation_.data(),
                                 static_cast<std::int64_t>(gate_.size()), d_gate_.data(),
                                 d_up_.data());
  backward_linear(model::kGateProj, n2_.data(), d_gate_.data(), d_normed_.data(), false);
  backward_linear(model::kUpProj, n2_.data(), d_up_.data(), d_normed_.data(), true);
  rms_norm_backward(h_.data(), layer.post_attention_norm, weights.post_attention_norm,
                    d_normed_.data(), d_hidden);

  // h = x + Wo a, a = attention(q, k, v), q, k, v from n1 = RMSNorm(x).
  backward_linear(model::kOProj, attention_.data(), d_hidden, d_attention_.data(), false);
  const k::AttentionBackwardJob attention{q_.data(),
                                          k_.data(),
                                          v_.data(),
                                          d_attention_.data(),
                                          tokens_,
                                          c.num_attention_heads,
                                          c.num_key_value_heads,
                                          c.head_dim,
                                          1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                          dq_.data(),
                                          dk_.data(),
                                          dv_.data()};
  k::attention_backward_reference(attention);
  k::rope_backward_reference(
      {dq_.data(), tokens_, c.num_attention_heads, c.head_dim, 0, frequencies_});
  k::rope_backward_reference(
      {dk_.data(), tokens_, c.num_key_value_heads, c.head_dim, 0, frequencies_});
  backward_linear(model::kQProj, n1_.data(), dq_.data(), d_normed_.data(), false);
  backward_linear(model::kKProj, n1_.data(), dk_.data(), d_normed_.data(), true);
  backward_linear(model::kVProj, n1_.data(), dv_.data(), d_normed_.data(), true);
  rms_norm_backward(input_, layer.input_norm, weights.input_norm, d_normed_.data(), d_hidden);
}

void LayerPass::linear_backward(const model::Layer& layer, const LayerAdapters& adapters,
                                LayerLinear linear, float* d_weight, const float* x,
                                const float* dy, float* dx, bool accumulate) {
  const model::LinearWeight& weight = layer.linears()[linear]->weight;
  if (d_weight != nullptr) {
    k::linear_weight_gradient_op(x, dy, tokens_, weight.in_features(), weight.out_features(),
                                 d_weight, model_.execution);
  }
  if (accumulate) {  // only the Linears reading a normed hidden state: [tokens, hidden]
    weight.backward_input(dy, tokens_, model_.numerics, scratch_.data(), model_.execution);
    add(scratch_, dx);
  } else {
    weight.backward_input(dy, tokens_, model_.numerics, dx, model_.execution);
  }
  LoraModule* module = adapters.module(linear);
  if (module == nullptr) return;
  const k::LoraBackwardJob job{x,
                               module->a.data(),
                               module->b.data(),
                               dy,
                               tokens_,
                               module->in_features,
                               module->out_features,
                               module->rank,
                               adapters.scaling(),
                               module->grad_a.data(),
                               module->grad_b.data(),
                               dx,
                               adapters.keep(linear)};
  k::lora_backward_reference(job);
}

void LayerPass::rms_norm_backward(const float* x, const std::vector<float>& weight, float* d_weight,
                                  const float* d_normed, float* d_hidden) {
  const model::LlamaConfig& c = model_.config;
  k::rms_norm_backward_reference({x, weight.data(), d_normed, tokens_, c.hidden_size,
                                  static_cast<float>(c.rms_norm_eps), scratch_.data(), d_weight});
  add(scratch_, d_hidden);
}

}  // namespace kbit::train
