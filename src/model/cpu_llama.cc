#include "model/cpu_llama.h"

#include <cmath>

#include "kbit/model/rope.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"

namespace kbit::model {

namespace ops = kbit::kernels::cpu;

LayerLora loaded_lora(const Layer& layer) {
  LayerLora lora;
  const std::array<const Linear*, kLinearsPerLayer> linears = layer.linears();
  for (int j = 0; j < kLinearsPerLayer; ++j) lora[j] = linears[j]->lora;
  return lora;
}

bool CpuLlama::lm_head_is_embedding() const {
  return lm_head.weight.format() == LinearFormat::kFloat &&
         lm_head.weight.float_weight().data() == embed.data();
}

void CpuLlama::linear(const Linear& layer, std::span<const LoraTerm> lora, const float* x,
                      std::int64_t rows, float* y) const {
  layer.weight.forward(x, rows, layer.bias.empty() ? nullptr : layer.bias.data(), numerics, y,
                       execution);
  add_lora_terms(lora, x, rows, round_bf16, layer.weight.format() != LinearFormat::kFloat, y,
                 execution);
}

void CpuLlama::rms_norm(const float* x, const std::vector<float>& weight, std::int64_t rows,
                        float* y) const {
  const ops::RmsNormJob job{
      x, weight.data(), rows, config.hidden_size, static_cast<float>(config.rms_norm_eps),
      y, round_bf16};
  ops::rms_norm_op(job, execution);
}

void CpuLlama::add_residual(float* hidden, const float* delta, std::int64_t count) const {
  for (std::int64_t i = 0; i < count; ++i) hidden[i] += delta[i];
  if (round_bf16) ops::round_to_bf16(hidden, count);
}

void CpuLlama::embed_tokens(std::span<const std::int32_t> tokens, float* hidden) const {
  const std::int64_t e = config.hidden_size;
  ops::visit_float_dtype(embed.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* table = embed.data_as<const T>();
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const T* row = table + tokens[t] * e;
      float* out = hidden + static_cast<std::int64_t>(t) * e;
      for (std::int64_t i = 0; i < e; ++i) out[i] = ops::to_f32(row[i]);
    }
  });  // with bf16 activations the table is bf16, so these are bf16 values already
}

const float* CpuLlama::rope_frequencies(std::int64_t end_position,
                                        std::vector<float>& storage) const {
  if (config.rope.type != RopeType::kDynamic) return inv_freq.data();
  storage =
      rope_inv_freq(config.rope, config.head_dim, config.max_position_embeddings, end_position);
  return storage.data();
}

void CpuLlama::attention_inputs(const Layer& layer, const LayerLora& lora, const float* hidden,
                                std::int64_t tokens, std::int64_t first_position,
                                const float* frequencies, float* normed, float* q, float* k,
                                float* v) const {
  const LlamaConfig& c = config;
  rms_norm(hidden, layer.input_norm, tokens, normed);
  linear(layer.q, lora[kQProj], normed, tokens, q);
  linear(layer.k, lora[kKProj], normed, tokens, k);
  linear(layer.v, lora[kVProj], normed, tokens, v);
  ops::rope_op(ops::RopeJob{q, tokens, c.num_attention_heads, c.head_dim, first_position,
                            frequencies, round_bf16},
               execution);
  ops::rope_op(ops::RopeJob{k, tokens, c.num_key_value_heads, c.head_dim, first_position,
                            frequencies, round_bf16},
               execution);
}

void CpuLlama::attention(const float* q, const float* keys, const float* values,
                         std::int64_t tokens, std::int64_t first_position, float* out) const {
  const LlamaConfig& c = config;
  const ops::AttentionJob job{q,
                              keys,
                              values,
                              tokens,
                              c.num_attention_heads,
                              c.num_key_value_heads,
                              c.head_dim,
                              first_position,
                              c.sliding_window.value_or(0),
                              1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                              out,
                              round_bf16};
  ops::attention_op(job, execution);
}

void CpuLlama::attention_output(const Layer& layer, const LayerLora& lora, const float* attention,
                                std::int64_t tokens, float* proj, float* hidden) const {
  linear(layer.o, lora[kOProj], attention, tokens, proj);
  add_residual(hidden, proj, tokens * config.hidden_size);
}

void CpuLlama::mlp_inputs(const Layer& layer, const LayerLora& lora, const float* hidden,
                          std::int64_t tokens, float* normed, float* gate, float* up) const {
  rms_norm(hidden, layer.post_attention_norm, tokens, normed);
  linear(layer.gate, lora[kGateProj], normed, tokens, gate);
  linear(layer.up, lora[kUpProj], normed, tokens, up);
}

void CpuLlama::mlp_activation(float* gate, const float* up, std::int64_t tokens) const {
  ops::silu_mul_op(gate, up, tokens * config.intermediate_size, execution, round_bf16);
}

void CpuLlama::mlp_output(const Layer& layer, const LayerLora& lora, const float* activation,
                          std::int64_t tokens, float* proj, float* hidden) const {
  linear(layer.down, lora[kDownProj], activation, tokens, proj);
  add_residual(hidden, proj, tokens * config.hidden_size);
}

}  // namespace kbit::model
