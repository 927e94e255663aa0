#include "kbit/model/llama.h"

#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <string>

#include "kbit/io/checkpoint.h"
#include "kbit/model/rope.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

// A Linear layer: a view of the mapped weight [out, in] and an optional f32 bias.
struct Linear {
  TensorView weight;
  std::vector<float> bias;  // empty: none
};

struct Layer {
  std::vector<float> input_norm;
  std::vector<float> post_attention_norm;
  Linear q, k, v, o;
  Linear gate, up, down;
};

std::string shape_text(std::initializer_list<std::int64_t> dims) {
  std::string text = "[";
  bool first = true;
  for (std::int64_t d : dims) {
    text += (first ? "" : ", ") + std::to_string(d);
    first = false;
  }
  return text + "]";
}

// Fetches a float tensor of exactly this shape.
Result<TensorView> expect(const io::Checkpoint& checkpoint, const std::filesystem::path& dir,
                          const std::string& name, std::initializer_list<std::int64_t> dims) {
  Result<TensorView> tensor = checkpoint.tensor(name);
  if (!tensor.ok()) {
    const bool quantized = checkpoint.contains(name + ".absmax") ||
                           checkpoint.contains(name.substr(0, name.rfind('.')) + ".SCB");
    if (quantized) {
      return unimplemented(dir.string() + ": tensor '" + name +
                           "' is stored quantized by bitsandbytes; kbit's f32 Llama needs a float "
                           "checkpoint");
    }
    return not_found(dir.string() + ": tensor '" + name + "' is missing from the checkpoint; " +
                     "config.json implies it (is the folder complete?)");
  }
  if (!is_floating(tensor->dtype())) {
    return unimplemented(dir.string() + ": tensor '" + name + "' has dtype " +
                         std::string(dtype_name(tensor->dtype())) +
                         "; kbit's f32 Llama reads f32, f16 or bf16 weights (a quantized "
                         "checkpoint is not supported here)");
  }
  const Shape want(dims);
  if (!(tensor->shape() == want)) {
    return invalid_argument(dir.string() + ": tensor '" + name + "' has shape " +
                            tensor->shape().to_string() + " but config.json implies " +
                            shape_text(dims) + "; the config and the weights do not match");
  }
  return tensor;
}

std::vector<float> to_f32_vector(const TensorView& tensor) {
  std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
  k::visit_float_dtype(tensor.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* data = tensor.data_as<const T>();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = k::to_f32(data[i]);
  });
  return out;
}

Result<std::vector<float>> load_vector(const io::Checkpoint& checkpoint,
                                       const std::filesystem::path& dir, const std::string& name,
                                       std::int64_t size) {
  KBIT_ASSIGN_OR_RETURN(const TensorView tensor, expect(checkpoint, dir, name, {size}));
  return to_f32_vector(tensor);
}

Result<Linear> load_linear(const io::Checkpoint& checkpoint, const std::filesystem::path& dir,
                           const std::string& prefix, std::int64_t out, std::int64_t in,
                           bool has_bias) {
  Linear linear;
  KBIT_ASSIGN_OR_RETURN(linear.weight, expect(checkpoint, dir, prefix + ".weight", {out, in}));
  if (has_bias) {
    KBIT_ASSIGN_OR_RETURN(linear.bias, load_vector(checkpoint, dir, prefix + ".bias", out));
  }
  return linear;
}

// Activations of one forward call.
struct Scratch {
  std::vector<float> hidden, normed, q, k, v, attn, proj, gate, up;
};

}  // namespace

struct LlamaModel::Impl {
  LlamaConfig config;
  ExecutionOptions execution;
  io::Checkpoint checkpoint;
  TensorView embed;    // [vocab, hidden]
  TensorView lm_head;  // [vocab, hidden]; the embedding when tied
  std::vector<float> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // for types that do not depend on the sequence length
  bool round_bf16 = false;      // activation_dtype kBF16: round activations to bf16
  // With bf16 activations, weights not stored in bf16 are rounded into these; views point here.
  std::vector<std::vector<kbit::bf16>> bf16_weights;

  void linear(const Linear& layer, const float* x, std::int64_t rows, float* y) const {
    const k::LinearJob job{x,
                           layer.weight.data(),
                           layer.weight.dtype(),
                           layer.bias.empty() ? nullptr : layer.bias.data(),
                           rows,
                           layer.weight.shape()[1],
                           layer.weight.shape()[0],
                           y,
                           round_bf16};
    k::linear_op(job, execution);
  }

  void rms_norm(const float* x, const std::vector<float>& weight, std::int64_t rows,
                float* y) const {
    const k::RmsNormJob job{
        x, weight.data(), rows, config.hidden_size, static_cast<float>(config.rms_norm_eps),
        y, round_bf16};
    k::rms_norm_op(job, execution);
  }

  // hidden += delta, rounded to bf16 with bf16 activations (a bf16 residual add).
  void add_residual(std::vector<float>& hidden, const std::vector<float>& delta) const {
    for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] += delta[i];
    if (round_bf16) k::round_to_bf16(hidden.data(), static_cast<std::int64_t>(hidden.size()));
  }

  // transformers' model.to(torch.bfloat16): weights rounded to bf16 once, at load.
  void weight_to_bf16(TensorView& weight) {
    if (weight.dtype() == DType::kBF16) return;
    std::vector<kbit::bf16> rounded(static_cast<std::size_t>(weight.numel()));
    k::visit_float_dtype(weight.dtype(), [&](auto type_tag) {
      using T = decltype(type_tag);
      const T* data = weight.data_as<const T>();
      for (std::size_t i = 0; i < rounded.size(); ++i) rounded[i] = f32_to_bf16(k::to_f32(data[i]));
    });
    weight = TensorView(rounded.data(), DType::kBF16, weight.shape());
    bf16_weights.push_back(std::move(rounded));
  }
  static void vector_to_bf16(std::vector<float>& values) {
    k::round_to_bf16(values.data(), static_cast<std::int64_t>(values.size()));
  }
  void weights_to_bf16() {
    const bool tied = lm_head.data() == embed.data();
    weight_to_bf16(embed);
    lm_head = tied ? embed : lm_head;
    if (!tied) weight_to_bf16(lm_head);
    vector_to_bf16(final_norm);
    for (Layer& layer : layers) {
      vector_to_bf16(layer.input_norm);
      vector_to_bf16(layer.post_attention_norm);
      for (Linear* linear :
           {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
        weight_to_bf16(linear->weight);
        vector_to_bf16(linear->bias);
      }
    }
  }

  Impl(LlamaConfig c, ExecutionOptions e, io::Checkpoint ck)
      : config(std::move(c)), execution(e), checkpoint(std::move(ck)) {}
};

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::LlamaModel(LlamaModel&&) noexcept = default;
LlamaModel& LlamaModel::operator=(LlamaModel&&) noexcept = default;
LlamaModel::~LlamaModel() = default;

const LlamaConfig& LlamaModel::config() const {
  return impl_->config;
}

Result<LlamaModel> LlamaModel::load(const std::filesystem::path& model_dir,
                                    const LlamaLoadOptions& options) {
  if (options.activation_dtype != DType::kF32 && options.activation_dtype != DType::kBF16) {
    return invalid_argument("LlamaModel::load: activation dtype " +
                            std::string(dtype_name(options.activation_dtype)) +
                            " is not supported; use f32 or bf16");
  }
  KBIT_ASSIGN_OR_RETURN(LlamaConfig config, load_llama_config(model_dir / "config.json"));
  KBIT_ASSIGN_OR_RETURN(io::Checkpoint checkpoint, io::Checkpoint::open(model_dir));
  auto impl = std::make_unique<Impl>(std::move(config), options.execution, std::move(checkpoint));
  const LlamaConfig& c = impl->config;
  const io::Checkpoint& ck = impl->checkpoint;
  const std::int64_t e = c.hidden_size;
  const std::int64_t q_out = c.num_attention_heads * c.head_dim;
  const std::int64_t kv_out = c.num_key_value_heads * c.head_dim;
  KBIT_ASSIGN_OR_RETURN(impl->embed,
                        expect(ck, model_dir, "model.embed_tokens.weight", {c.vocab_size, e}));
  // Tied, transformers points lm_head at the embedding and ignores any lm_head.weight stored.
  if (c.tie_word_embeddings) {
    impl->lm_head = impl->embed;
  } else {
    KBIT_ASSIGN_OR_RETURN(impl->lm_head,
                          expect(ck, model_dir, "lm_head.weight", {c.vocab_size, e}));
  }
  KBIT_ASSIGN_OR_RETURN(impl->final_norm, load_vector(ck, model_dir, "model.norm.weight", e));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer layer;
    KBIT_ASSIGN_OR_RETURN(layer.input_norm,
                          load_vector(ck, model_dir, p + "input_layernorm.weight", e));
    KBIT_ASSIGN_OR_RETURN(layer.post_attention_norm,
                          load_vector(ck, model_dir, p + "post_attention_layernorm.weight", e));
    const bool ab = c.attention_bias;
    const bool mb = c.mlp_bias;
    KBIT_ASSIGN_OR_RETURN(layer.q,
                          load_linear(ck, model_dir, p + "self_attn.q_proj", q_out, e, ab));
    KBIT_ASSIGN_OR_RETURN(layer.k,
                          load_linear(ck, model_dir, p + "self_attn.k_proj", kv_out, e, ab));
    KBIT_ASSIGN_OR_RETURN(layer.v,
                          load_linear(ck, model_dir, p + "self_attn.v_proj", kv_out, e, ab));
    KBIT_ASSIGN_OR_RETURN(layer.o,
                          load_linear(ck, model_dir, p + "self_attn.o_proj", e, q_out, ab));
    const std::int64_t i = c.intermediate_size;
    KBIT_ASSIGN_OR_RETURN(layer.gate, load_linear(ck, model_dir, p + "mlp.gate_proj", i, e, mb));
    KBIT_ASSIGN_OR_RETURN(layer.up, load_linear(ck, model_dir, p + "mlp.up_proj", i, e, mb));
    KBIT_ASSIGN_OR_RETURN(layer.down, load_linear(ck, model_dir, p + "mlp.down_proj", e, i, mb));
    impl->layers.push_back(std::move(layer));
  }
  if (c.rope.type != RopeType::kDynamic) {
    impl->inv_freq = rope_inv_freq(c.rope, c.head_dim, c.max_position_embeddings, 0);
  }
  if (options.activation_dtype == DType::kBF16) {
    impl->round_bf16 = true;
    impl->weights_to_bf16();
  }
  return LlamaModel(std::move(impl));
}

Result<KvCache> LlamaModel::new_cache(std::int64_t max_tokens) const {
  const LlamaConfig& c = impl_->config;
  if (max_tokens < 1) {
    return invalid_argument("new_cache: max_tokens must be at least 1, got " +
                            std::to_string(max_tokens));
  }
  KvCache cache;
  cache.layers_ = c.num_hidden_layers;
  cache.kv_heads_ = c.num_key_value_heads;
  cache.head_dim_ = c.head_dim;
  cache.capacity_ = max_tokens;
  const auto per_layer = static_cast<std::size_t>(max_tokens * c.num_key_value_heads * c.head_dim);
  try {
    cache.keys_.assign(static_cast<std::size_t>(c.num_hidden_layers),
                       std::vector<float>(per_layer));
    cache.values_.assign(static_cast<std::size_t>(c.num_hidden_layers),
                         std::vector<float>(per_layer));
  } catch (const std::bad_alloc&) {
    return out_of_memory("new_cache: cannot allocate a KV cache of " + std::to_string(max_tokens) +
                         " tokens (" +
                         std::to_string(2 * per_layer * sizeof(float) *
                                        static_cast<std::size_t>(c.num_hidden_layers)) +
                         " bytes); ask for fewer tokens");
  }
  return cache;
}

Status LlamaModel::forward(std::span<const std::int32_t> tokens, KvCache& cache, TensorView logits,
                           bool all_positions) const {
  const Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  const auto t_count = static_cast<std::int64_t>(tokens.size());
  if (t_count == 0) return invalid_argument("forward: no tokens given; pass at least one");
  if (cache.layers_ != c.num_hidden_layers || cache.kv_heads_ != c.num_key_value_heads ||
      cache.head_dim_ != c.head_dim) {
    return invalid_argument(
        "forward: the KV cache was made for a model of another shape; make "
        "it with this model's new_cache()");
  }
  if (cache.size_ + t_count > cache.capacity_) {
    return invalid_argument("forward: the KV cache holds " + std::to_string(cache.size_) + " of " +
                            std::to_string(cache.capacity_) + " positions; " +
                            std::to_string(t_count) + " more do not fit (make a larger cache)");
  }
  for (std::int64_t t = 0; t < t_count; ++t) {
    const std::int32_t id = tokens[static_cast<std::size_t>(t)];
    if (id < 0 || id >= c.vocab_size) {
      return invalid_argument("forward: token id " + std::to_string(id) + " at index " +
                              std::to_string(t) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  const std::int64_t out_rows = all_positions ? t_count : 1;
  const Shape want{out_rows, c.vocab_size};
  if (logits.dtype() != DType::kF32 || !(logits.shape() == want) || !logits.is_contiguous() ||
      !logits.device().is_cpu()) {
    return invalid_argument("forward: logits must be contiguous host f32 " + want.to_string() +
                            ", got " + logits.describe());
  }

  const std::int64_t e = c.hidden_size;
  const std::int64_t h = c.num_attention_heads;
  const std::int64_t kvh = c.num_key_value_heads;
  const std::int64_t d = c.head_dim;
  const std::int64_t inter = c.intermediate_size;
  const std::int64_t start = cache.size_;
  const auto sz = [](std::int64_t n) { return static_cast<std::size_t>(n); };
  Scratch s;
  s.hidden.resize(sz(t_count * e));
  s.normed.resize(sz(t_count * e));
  s.q.resize(sz(t_count * h * d));
  s.k.resize(sz(t_count * kvh * d));
  s.v.resize(sz(t_count * kvh * d));
  s.attn.resize(sz(t_count * h * d));
  s.proj.resize(sz(t_count * e));
  s.gate.resize(sz(t_count * inter));
  s.up.resize(sz(t_count * inter));

  // Embedding rows, widened to f32.
  k::visit_float_dtype(m.embed.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* table = m.embed.data_as<const T>();
    for (std::int64_t t = 0; t < t_count; ++t) {
      const T* row = table + tokens[sz(t)] * e;
      float* out = s.hidden.data() + t * e;
      for (std::int64_t i = 0; i < e; ++i) out[i] = k::to_f32(row[i]);
    }
  });  // with bf16 activations the table is bf16, so these are bf16 values already

  std::vector<float> dynamic_inv_freq;
  const float* inv_freq = m.inv_freq.data();
  if (c.rope.type == RopeType::kDynamic) {
    dynamic_inv_freq = rope_inv_freq(c.rope, d, c.max_position_embeddings, start + t_count);
    inv_freq = dynamic_inv_freq.data();
  }
  const std::int64_t window = c.sliding_window.value_or(0);

  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const Layer& layer = m.layers[l];
    m.rms_norm(s.hidden.data(), layer.input_norm, t_count, s.normed.data());
    m.linear(layer.q, s.normed.data(), t_count, s.q.data());
    m.linear(layer.k, s.normed.data(), t_count, s.k.data());
    m.linear(layer.v, s.normed.data(), t_count, s.v.data());
    k::rope_op(k::RopeJob{s.q.data(), t_count, h, d, start, inv_freq, m.round_bf16}, m.execution);
    k::rope_op(k::RopeJob{s.k.data(), t_count, kvh, d, start, inv_freq, m.round_bf16}, m.execution);
    float* keys = cache.keys_[l].data();
    float* values = cache.values_[l].data();
    std::memcpy(keys + start * kvh * d, s.k.data(), s.k.size() * sizeof(float));
    std::memcpy(values + start * kvh * d, s.v.data(), s.v.size() * sizeof(float));
    const k::AttentionJob attention{
        s.q.data(),    keys,        values, t_count, h,
        kvh,           d,           start,  window,  1.0f / std::sqrt(static_cast<float>(d)),
        s.attn.data(), m.round_bf16};
    k::attention_op(attention, m.execution);
    m.linear(layer.o, s.attn.data(), t_count, s.proj.data());
    m.add_residual(s.hidden, s.proj);

    m.rms_norm(s.hidden.data(), layer.post_attention_norm, t_count, s.normed.data());
    m.linear(layer.gate, s.normed.data(), t_count, s.gate.data());
    m.linear(layer.up, s.normed.data(), t_count, s.up.data());
    k::silu_mul_op(s.gate.data(), s.up.data(), t_count * inter, m.execution, m.round_bf16);
    m.linear(layer.down, s.gate.data(), t_count, s.proj.data());
    m.add_residual(s.hidden, s.proj);
  }

  const float* last = s.hidden.data() + (t_count - out_rows) * e;
  m.rms_norm(last, m.final_norm, out_rows, s.normed.data());
  m.linear(Linear{m.lm_head, {}}, s.normed.data(), out_rows, logits.data_as<float>());
  cache.size_ = start + t_count;
  return ok_status();
}

}  // namespace kbit::model
