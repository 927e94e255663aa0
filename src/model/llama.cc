#include "kbit/model/llama.h"

#include <cmath>
#include <cstring>
#include <new>
#include <optional>
#include <string>

#include "kbit/core/convert.h"
#include "kbit/io/bnb_quantization_config.h"
#include "kbit/io/checkpoint.h"
#include "kbit/model/rope.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"
#include "model/linear_weight.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

// A Linear layer: its weight [out, in] in any format and an optional f32 bias.
struct Linear {
  LinearWeight weight;
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
      return invalid_argument(dir.string() + ": tensor '" + name +
                              "' is stored quantized by bitsandbytes, but config.json has no "
                              "quantization_config, or its llm_int8_skip_modules names this "
                              "module; the config and the weights do not match");
    }
    return not_found(dir.string() + ": tensor '" + name + "' is missing from the checkpoint; " +
                     "config.json implies it (is the folder complete?)");
  }
  if (!is_floating(tensor->dtype())) {
    return invalid_argument(dir.string() + ": tensor '" + name + "' has dtype " +
                            std::string(dtype_name(tensor->dtype())) +
                            " where a float weight (f32, f16 or bf16) belongs; is config.json's "
                            "quantization_config missing or its skip list wrong?");
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

// How each Linear module of the checkpoint is to be loaded.
struct LinearPlan {
  const io::Checkpoint& checkpoint;
  const std::filesystem::path& dir;
  // The quantization in effect (the checkpoint's or the options'), nullopt for none.
  const std::optional<QuantizeOptions>& quantization;
  bool prequantized;  // the checkpoint stores the quantized layers
  bool round_bf16;    // float weights to bf16 before quantizing (bf16 activations)
  ExecutionOptions execution;
};

Result<bool> is_quantized_module(const LinearPlan& plan, const std::string& module) {
  if (!plan.quantization) return false;
  return quantizes_module(plan.quantization->config, module);
}

// Quantizes the float weight `source` (named `name`) as the plan says.
Result<LinearWeight> quantize_weight(const LinearPlan& plan, const TensorView& source,
                                     const std::string& name) {
  if (!plan.round_bf16 || source.dtype() == DType::kBF16) {
    return LinearWeight::quantize(source, *plan.quantization, name, plan.execution);
  }
  KBIT_ASSIGN_OR_RETURN(Tensor rounded, Tensor::empty(source.shape(), DType::kBF16));
  KBIT_RETURN_IF_ERROR(convert_tensor(source, rounded.view()));
  return LinearWeight::quantize(rounded.view(), *plan.quantization, name, plan.execution);
}

// The weight of Linear `module` [out, in]: as stored (float or bitsandbytes' format), or
// quantized from the float tensor `source_name` (normally module + ".weight").
Result<LinearWeight> load_linear_weight(const LinearPlan& plan, const std::string& module,
                                        const std::string& source_name, std::int64_t out,
                                        std::int64_t in) {
  KBIT_ASSIGN_OR_RETURN(const bool quantized, is_quantized_module(plan, module));
  if (quantized && plan.prequantized) {
    const io::BnbQuantizationConfig& q = plan.quantization->config;
    Result<LinearWeight> weight =
        q.mode == io::BnbQuantMode::kInt8
            ? LinearWeight::read_int8(plan.checkpoint, module, out, in)
            : LinearWeight::read_4bit(plan.checkpoint, module, out, in,
                                      FourBitFormat{q.four_bit_type, q.double_quant, 0});
    if (!weight.ok()) return weight.status().with_context(plan.dir.string());
    return weight;
  }
  KBIT_ASSIGN_OR_RETURN(const TensorView source,
                        expect(plan.checkpoint, plan.dir, source_name, {out, in}));
  if (!quantized) return LinearWeight::float_view(source);
  Result<LinearWeight> weight = quantize_weight(plan, source, source_name);
  if (!weight.ok()) return weight.status().with_context(plan.dir.string());
  return weight;
}

Result<Linear> load_linear(const LinearPlan& plan, const LinearModule& module) {
  Linear linear;
  const std::string weight_name = module.name + ".weight";
  KBIT_ASSIGN_OR_RETURN(linear.weight, load_linear_weight(plan, module.name, weight_name,
                                                          module.out_features, module.in_features));
  // A weight quantized here was read once; its float pages need not stay resident.
  if (linear.weight.format() != LinearFormat::kFloat && !plan.prequantized) {
    plan.checkpoint.release(weight_name);
  }
  if (module.has_bias) {
    KBIT_ASSIGN_OR_RETURN(linear.bias, load_vector(plan.checkpoint, plan.dir, module.name + ".bias",
                                                   module.out_features));
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
  std::optional<io::BnbQuantizationConfig> quantization;
  LinearNumerics numerics;
  TensorView embed;  // [vocab, hidden]
  Linear lm_head;    // [vocab, hidden]; a view of the embedding when tied and not quantized
  std::vector<float> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // for types that do not depend on the sequence length
  bool round_bf16 = false;      // activation_dtype kBF16: round activations to bf16
  // With bf16 activations, an embedding not stored in bf16 is rounded into this.
  Tensor bf16_embed;

  void linear(const Linear& layer, const float* x, std::int64_t rows, float* y) const {
    layer.weight.forward(x, rows, layer.bias.empty() ? nullptr : layer.bias.data(), numerics, y,
                         execution);
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

  // transformers' model.to(torch.bfloat16): float weights rounded to bf16 once, at load.
  static Status linear_to_bf16(Linear& linear) {
    k::round_to_bf16(linear.bias.data(), static_cast<std::int64_t>(linear.bias.size()));
    const LinearWeight& weight = linear.weight;
    if (weight.format() != LinearFormat::kFloat || weight.float_weight().dtype() == DType::kBF16) {
      return ok_status();
    }
    KBIT_ASSIGN_OR_RETURN(linear.weight,
                          LinearWeight::float_rounded_to_bf16(weight.float_weight()));
    return ok_status();
  }
  static void vector_to_bf16(std::vector<float>& values) {
    k::round_to_bf16(values.data(), static_cast<std::int64_t>(values.size()));
  }
  Status weights_to_bf16() {
    const bool tied = lm_head.weight.format() == LinearFormat::kFloat &&
                      lm_head.weight.float_weight().data() == embed.data();
    if (embed.dtype() != DType::kBF16) {
      KBIT_ASSIGN_OR_RETURN(bf16_embed, Tensor::empty(embed.shape(), DType::kBF16));
      KBIT_RETURN_IF_ERROR(convert_tensor(embed, bf16_embed.view()));
      embed = bf16_embed.view();
    }
    if (tied) {
      lm_head.weight = LinearWeight::float_view(embed);
    } else {
      KBIT_RETURN_IF_ERROR(linear_to_bf16(lm_head));
    }
    vector_to_bf16(final_norm);
    for (Layer& layer : layers) {
      vector_to_bf16(layer.input_norm);
      vector_to_bf16(layer.post_attention_norm);
      for (Linear* linear :
           {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
        KBIT_RETURN_IF_ERROR(linear_to_bf16(*linear));
      }
    }
    return ok_status();
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

const std::optional<io::BnbQuantizationConfig>& LlamaModel::quantization() const {
  return impl_->quantization;
}

std::size_t LlamaModel::weight_bytes() const {
  const Impl& m = *impl_;
  const auto floats = [](const std::vector<float>& v) { return v.size() * sizeof(float); };
  const auto linear_bytes = [&](const Linear& linear) {
    return linear.weight.nbytes() + floats(linear.bias);
  };
  std::size_t total = m.embed.nbytes() + floats(m.final_norm);
  const bool tied = m.lm_head.weight.format() == LinearFormat::kFloat &&
                    m.lm_head.weight.float_weight().data() == m.embed.data();
  if (!tied) total += linear_bytes(m.lm_head);
  for (const Layer& layer : m.layers) {
    total += floats(layer.input_norm) + floats(layer.post_attention_norm);
    for (const Linear* linear :
         {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
      total += linear_bytes(*linear);
    }
  }
  return total;
}

Result<LlamaModel> LlamaModel::load(const std::filesystem::path& model_dir,
                                    const LlamaLoadOptions& options) {
  if (options.activation_dtype != DType::kF32 && options.activation_dtype != DType::kBF16) {
    return invalid_argument("LlamaModel::load: activation dtype " +
                            std::string(dtype_name(options.activation_dtype)) +
                            " is not supported; use f32 or bf16");
  }
  const std::filesystem::path config_path = model_dir / "config.json";
  KBIT_ASSIGN_OR_RETURN(LlamaConfig config, load_llama_config(config_path));
  KBIT_ASSIGN_OR_RETURN(std::optional<io::BnbQuantizationConfig> stored,
                        io::read_bnb_quantization_config(config_path));
  if (options.quantize) KBIT_RETURN_IF_ERROR(validate_quantize_options(*options.quantize));
  if (options.compute_dtype && !is_floating(*options.compute_dtype)) {
    return invalid_argument("LlamaModel::load: compute dtype " +
                            std::string(dtype_name(*options.compute_dtype)) +
                            " is not one of f32, f16, bf16");
  }
  if (stored && options.quantize) {
    return invalid_argument(model_dir.string() +
                            " is already quantized by bitsandbytes (config.json has a "
                            "quantization_config); load it without --load-in-4bit/--load-in-8bit, "
                            "or quantize the original float model");
  }
  KBIT_ASSIGN_OR_RETURN(io::Checkpoint checkpoint, io::Checkpoint::open(model_dir));
  auto impl = std::make_unique<Impl>(std::move(config), options.execution, std::move(checkpoint));
  // What quantizes the Linear layers: the checkpoint's config, or the options'.
  const std::optional<QuantizeOptions> quantization =
      stored ? std::optional<QuantizeOptions>(QuantizeOptions{*stored, 0}) : options.quantize;
  impl->numerics.activation_dtype = options.activation_dtype;
  if (quantization) {
    impl->quantization = quantization->config;
    impl->numerics.compute_dtype =
        options.compute_dtype.value_or(quantization->config.compute_dtype);
    impl->numerics.int8_threshold = static_cast<float>(quantization->config.int8_threshold);
  }
  const bool round_bf16 = options.activation_dtype == DType::kBF16;
  const LinearPlan plan{impl->checkpoint,   model_dir,  quantization,
                        stored.has_value(), round_bf16, options.execution};
  const LlamaConfig& c = impl->config;
  const io::Checkpoint& ck = impl->checkpoint;
  const std::int64_t e = c.hidden_size;
  const std::vector<LinearModule> modules = linear_modules(c);
  KBIT_ASSIGN_OR_RETURN(impl->embed,
                        expect(ck, model_dir, "model.embed_tokens.weight", {c.vocab_size, e}));
  // Tied, transformers points lm_head at the embedding and ignores any lm_head.weight stored.
  const std::string lm_head_source =
      c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  KBIT_ASSIGN_OR_RETURN(impl->lm_head.weight,
                        load_linear_weight(plan, "lm_head", lm_head_source, c.vocab_size, e));
  KBIT_ASSIGN_OR_RETURN(impl->final_norm, load_vector(ck, model_dir, "model.norm.weight", e));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer layer;
    KBIT_ASSIGN_OR_RETURN(layer.input_norm,
                          load_vector(ck, model_dir, p + "input_layernorm.weight", e));
    KBIT_ASSIGN_OR_RETURN(layer.post_attention_norm,
                          load_vector(ck, model_dir, p + "post_attention_layernorm.weight", e));
    Linear* linears[kLinearsPerLayer] = {&layer.q,    &layer.k,  &layer.v,   &layer.o,
                                         &layer.gate, &layer.up, &layer.down};
    for (int j = 0; j < kLinearsPerLayer; ++j) {
      const LinearModule& module = modules[static_cast<std::size_t>(l * kLinearsPerLayer + j)];
      KBIT_ASSIGN_OR_RETURN(*linears[j], load_linear(plan, module));
    }
    impl->layers.push_back(std::move(layer));
  }
  if (c.rope.type != RopeType::kDynamic) {
    impl->inv_freq = rope_inv_freq(c.rope, c.head_dim, c.max_position_embeddings, 0);
  }
  if (round_bf16) {
    impl->round_bf16 = true;
    KBIT_RETURN_IF_ERROR(impl->weights_to_bf16());
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
  m.linear(m.lm_head, s.normed.data(), out_rows, logits.data_as<float>());
  cache.size_ = start + t_count;
  return ok_status();
}

}  // namespace kbit::model
