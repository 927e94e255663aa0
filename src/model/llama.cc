#include "kbit/model/llama.h"

#include <cstring>
#include <new>
#include <optional>
#include <string>

#include "kbit/core/convert.h"
#include "kbit/io/bnb_quantization_config.h"
#include "kbit/io/checkpoint.h"
#include "kbit/model/rope.h"
#include "kernels/cpu/llama_ops.h"
#include "model/cpu_llama.h"
#include "model/cuda/llama_cuda.h"
#include "model/device_weights.h"
#include "model/linear_weight.h"
#include "model/llama_checkpoint.h"
#include "model/lora.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

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
  // The weights and forward steps on the CPU; on a GPU only its config, execution and numerics
  // are set.
  CpuLlama cpu;
  std::optional<io::Checkpoint> checkpoint;  // none for random weights
  std::vector<io::PeftAdapter> adapters;     // the mappings behind the Linear layers' LoRA terms
  Device device;
  // On a GPU: the weights there and the forward pass.
  std::unique_ptr<cuda::CudaLlama> gpu;
  std::optional<io::BnbQuantizationConfig> quantization;

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
    const bool tied = cpu.lm_head_is_embedding();
    if (cpu.embed.dtype() != DType::kBF16) {
      KBIT_ASSIGN_OR_RETURN(cpu.bf16_embed, Tensor::empty(cpu.embed.shape(), DType::kBF16));
      KBIT_RETURN_IF_ERROR(convert_tensor(cpu.embed, cpu.bf16_embed.view()));
      cpu.embed = cpu.bf16_embed.view();
    }
    if (tied) {
      cpu.lm_head.weight = LinearWeight::float_view(cpu.embed);
    } else {
      KBIT_RETURN_IF_ERROR(linear_to_bf16(cpu.lm_head));
    }
    vector_to_bf16(cpu.final_norm);
    for (Layer& layer : cpu.layers) {
      vector_to_bf16(layer.input_norm);
      vector_to_bf16(layer.post_attention_norm);
      for (Linear* linear :
           {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
        KBIT_RETURN_IF_ERROR(linear_to_bf16(*linear));
      }
    }
    return ok_status();
  }

  // The GPU side: the weights loaded onto `device` (from the checkpoint, or random ones made
  // with random_seed when there is none) and the CudaLlama computing with them.
  Status load_on_device(const std::filesystem::path& dir,
                        const std::optional<QuantizeOptions>& quantize, bool prequantized,
                        const LlamaLoadOptions& options, std::uint64_t random_seed);
  void set_numerics(const std::optional<QuantizeOptions>& quantize,
                    const LlamaLoadOptions& options);

  Impl(LlamaConfig c, ExecutionOptions e, std::optional<io::Checkpoint> ck)
      : checkpoint(std::move(ck)) {
    cpu.config = std::move(c);
    cpu.execution = e;
  }
};

LlamaModel::LlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LlamaModel::LlamaModel(LlamaModel&&) noexcept = default;
LlamaModel& LlamaModel::operator=(LlamaModel&&) noexcept = default;
LlamaModel::~LlamaModel() = default;

const LlamaConfig& LlamaModel::config() const {
  return impl_->cpu.config;
}

const std::optional<io::BnbQuantizationConfig>& LlamaModel::quantization() const {
  return impl_->quantization;
}

Device LlamaModel::device() const {
  return impl_->device;
}

DType LlamaModel::activation_dtype() const {
  return impl_->cpu.numerics.activation_dtype;
}

std::size_t LlamaModel::weight_bytes() const {
  if (impl_->gpu) return impl_->gpu->weight_bytes();
  const CpuLlama& m = impl_->cpu;
  const auto floats = [](const std::vector<float>& v) { return v.size() * sizeof(float); };
  const auto linear_bytes = [&](const Linear& linear) {
    return linear.weight.nbytes() + floats(linear.bias);
  };
  std::size_t total = m.embed.nbytes() + floats(m.final_norm);
  if (!m.lm_head_is_embedding()) total += linear_bytes(m.lm_head);
  for (const Layer& layer : m.layers) {
    total += floats(layer.input_norm) + floats(layer.post_attention_norm);
    for (const Linear* linear : layer.linears()) {
      total += linear_bytes(*linear);
    }
  }
  return total;
}

namespace {

Status check_load_options(const LlamaLoadOptions& options) {
  if (options.activation_dtype != DType::kF32 && options.activation_dtype != DType::kBF16) {
    return invalid_argument("LlamaModel::load: activation dtype " +
                            std::string(dtype_name(options.activation_dtype)) +
                            " is not supported; use f32 or bf16");
  }
  if (options.quantize) KBIT_RETURN_IF_ERROR(validate_quantize_options(*options.quantize));
  if (options.compute_dtype && !is_floating(*options.compute_dtype)) {
    return invalid_argument("LlamaModel::load: compute dtype " +
                            std::string(dtype_name(*options.compute_dtype)) +
                            " is not one of f32, f16, bf16");
  }
  if (options.device.is_cuda() && !cuda_available()) {
    return unimplemented("device " + options.device.to_string() +
                         " is not usable: this build of kbit has no CUDA support or no CUDA GPU "
                         "is visible; run on the CPU with --device cpu");
  }
  return ok_status();
}

}  // namespace

Status LlamaModel::Impl::load_on_device(const std::filesystem::path& dir,
                                        const std::optional<QuantizeOptions>& quantize,
                                        bool prequantized, const LlamaLoadOptions& options,
                                        std::uint64_t random_seed) {
  KBIT_ASSIGN_OR_RETURN(std::unique_ptr<cuda::DeviceLoader> loader,
                        cuda::DeviceLoader::create(device));
  const DeviceLoadPlan plan{cpu.config,
                            checkpoint ? &*checkpoint : nullptr,
                            dir,
                            quantize,
                            prequantized,
                            options.activation_dtype,
                            options.execution,
                            random_seed,
                            cpu.config.dtype.value_or(DType::kBF16),
                            adapters};
  Result<cuda::DeviceWeights> weights = load_device_weights(plan, *loader);
  if (weights.status().code() == StatusCode::kOutOfMemory) {
    return weights.status().with_context(
        "loading " + dir.string() + " onto " + device.to_string() +
        ": the weights do not fit (`kbit info -m DIR` shows each mode's size); try "
        "--load-in-4bit (about a quarter of bf16), --load-in-8bit, or a GPU with more memory");
  }
  KBIT_RETURN_IF_ERROR(weights.status());
  KBIT_ASSIGN_OR_RETURN(
      gpu, cuda::CudaLlama::create(cpu.config, device, cpu.numerics, std::move(weights).value(),
                                   options.rounded_absmax));
  return ok_status();
}

void LlamaModel::Impl::set_numerics(const std::optional<QuantizeOptions>& quantize,
                                    const LlamaLoadOptions& options) {
  LinearNumerics& numerics = cpu.numerics;
  numerics.activation_dtype = options.activation_dtype;
  if (quantize) {
    quantization = quantize->config;
    numerics.compute_dtype = options.compute_dtype.value_or(quantize->config.compute_dtype);
    numerics.int8_threshold = static_cast<float>(quantize->config.int8_threshold);
  }
}

Result<LlamaModel> LlamaModel::random(const std::filesystem::path& config_path,
                                      const LlamaLoadOptions& options, std::uint64_t seed) {
  KBIT_RETURN_IF_ERROR(check_load_options(options));
  if (!options.device.is_cuda()) {
    return unimplemented(
        "random weights are made on a GPU (--device cuda); for the CPU, write a random "
        "checkpoint with scripts/bench/make_random_llama.py and load that");
  }
  KBIT_ASSIGN_OR_RETURN(LlamaConfig config, load_llama_config(config_path));
  KBIT_ASSIGN_OR_RETURN(std::optional<io::BnbQuantizationConfig> stored,
                        io::read_bnb_quantization_config(config_path));
  if (stored) {
    return invalid_argument(config_path.string() +
                            " has a quantization_config; random weights take their "
                            "quantization from the options (--load-in-4bit, --load-in-8bit)");
  }
  if (!options.adapters.empty()) {
    return invalid_argument(
        "random weights take no LoRA adapters: an adapter is trained for "
        "the weights of one model; load that model instead");
  }
  auto impl = std::make_unique<Impl>(std::move(config), options.execution, std::nullopt);
  impl->device = options.device;
  impl->set_numerics(options.quantize, options);
  KBIT_RETURN_IF_ERROR(
      impl->load_on_device(config_path.parent_path(), options.quantize, false, options, seed));
  return LlamaModel(std::move(impl));
}

Result<LlamaModel> LlamaModel::load(const std::filesystem::path& model_dir,
                                    const LlamaLoadOptions& options) {
  KBIT_RETURN_IF_ERROR(check_load_options(options));
  const std::filesystem::path config_path = model_dir / "config.json";
  KBIT_ASSIGN_OR_RETURN(LlamaConfig config, load_llama_config(config_path));
  KBIT_ASSIGN_OR_RETURN(std::optional<io::BnbQuantizationConfig> stored,
                        io::read_bnb_quantization_config(config_path));
  if (stored && options.quantize) {
    return invalid_argument(model_dir.string() +
                            " is already quantized by bitsandbytes (config.json has a "
                            "quantization_config); load it without --load-in-4bit/--load-in-8bit, "
                            "or quantize the original float model");
  }
  KBIT_ASSIGN_OR_RETURN(io::Checkpoint checkpoint, io::Checkpoint::open(model_dir));
  auto impl = std::make_unique<Impl>(std::move(config), options.execution, std::move(checkpoint));
  impl->device = options.device;
  // What quantizes the Linear layers: the checkpoint's config, or the options'.
  const std::optional<QuantizeOptions> quantization =
      stored ? std::optional<QuantizeOptions>(QuantizeOptions{*stored, 0}) : options.quantize;
  impl->set_numerics(quantization, options);
  const std::vector<LinearModule> modules = linear_modules(impl->cpu.config);
  KBIT_ASSIGN_OR_RETURN(impl->adapters, open_adapters(options.adapters));
  KBIT_RETURN_IF_ERROR(check_adapters_fit(impl->adapters, modules));
  if (options.device.is_cuda()) {
    KBIT_RETURN_IF_ERROR(
        impl->load_on_device(model_dir, quantization, stored.has_value(), options, 0));
    return LlamaModel(std::move(impl));
  }
  const bool round_bf16 = options.activation_dtype == DType::kBF16;
  const LinearPlan plan{*impl->checkpoint,  model_dir,  quantization,
                        stored.has_value(), round_bf16, options.execution};
  CpuLlama& m = impl->cpu;
  const LlamaConfig& c = m.config;
  const io::Checkpoint& ck = *impl->checkpoint;
  const std::int64_t e = c.hidden_size;
  KBIT_ASSIGN_OR_RETURN(
      m.embed, expect_float_tensor(ck, model_dir, "model.embed_tokens.weight", {c.vocab_size, e}));
  // Tied, transformers points lm_head at the embedding and ignores any lm_head.weight stored.
  const std::string lm_head_source =
      c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  KBIT_ASSIGN_OR_RETURN(m.lm_head.weight,
                        load_linear_weight(plan, "lm_head", lm_head_source, c.vocab_size, e));
  KBIT_ASSIGN_OR_RETURN(m.lm_head.lora, lora_terms(impl->adapters, modules.back()));
  KBIT_ASSIGN_OR_RETURN(m.final_norm, load_vector(ck, model_dir, "model.norm.weight", e));
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
      KBIT_ASSIGN_OR_RETURN(linears[j]->lora, lora_terms(impl->adapters, module));
    }
    m.layers.push_back(std::move(layer));
  }
  if (c.rope.type != RopeType::kDynamic) {
    m.inv_freq = rope_inv_freq(c.rope, c.head_dim, c.max_position_embeddings, 0);
  }
  if (round_bf16) {
    m.round_bf16 = true;
    KBIT_RETURN_IF_ERROR(impl->weights_to_bf16());
  }
  return LlamaModel(std::move(impl));
}

Result<KvCache> LlamaModel::new_cache(std::int64_t max_tokens, std::int64_t batch) const {
  const LlamaConfig& c = impl_->cpu.config;
  if (max_tokens < 1) {
    return invalid_argument("new_cache: max_tokens must be at least 1, got " +
                            std::to_string(max_tokens));
  }
  if (batch < 1 || (batch > 1 && !impl_->gpu)) {
    return invalid_argument("new_cache: batch " + std::to_string(batch) +
                            " is not possible; batches of sequences run on a GPU only, and hold "
                            "at least one sequence");
  }
  KvCache cache;
  cache.layers_ = c.num_hidden_layers;
  cache.kv_heads_ = c.num_key_value_heads;
  cache.head_dim_ = c.head_dim;
  cache.capacity_ = max_tokens;
  cache.batch_ = batch;
  if (impl_->gpu) {
    KBIT_ASSIGN_OR_RETURN(cache.device_state_, impl_->gpu->new_cache_state(max_tokens, batch));
    return cache;
  }
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
  const Impl& impl = *impl_;
  const CpuLlama& m = impl.cpu;
  const LlamaConfig& c = m.config;
  if (tokens.empty()) return invalid_argument("forward: no tokens given; pass at least one");
  if (cache.layers_ != c.num_hidden_layers || cache.kv_heads_ != c.num_key_value_heads ||
      cache.head_dim_ != c.head_dim || (cache.device_state_ != nullptr) != (impl.gpu != nullptr)) {
    return invalid_argument(
        "forward: the KV cache was made for a model of another shape or device; make "
        "it with this model's new_cache()");
  }
  if (static_cast<std::int64_t>(tokens.size()) % cache.batch_ != 0) {
    return invalid_argument("forward: " + std::to_string(tokens.size()) +
                            " tokens do not split evenly over the cache's " +
                            std::to_string(cache.batch_) + " sequences");
  }
  // Tokens per sequence from here on.
  const auto t_count = static_cast<std::int64_t>(tokens.size()) / cache.batch_;
  if (cache.size_ + t_count > cache.capacity_) {
    return invalid_argument("forward: the KV cache holds " + std::to_string(cache.size_) + " of " +
                            std::to_string(cache.capacity_) + " positions; " +
                            std::to_string(t_count) + " more do not fit (make a larger cache)");
  }
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const std::int32_t id = tokens[t];
    if (id < 0 || id >= c.vocab_size) {
      return invalid_argument("forward: token id " + std::to_string(id) + " at index " +
                              std::to_string(t) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
    }
  }
  const std::int64_t out_rows = cache.batch_ * (all_positions ? t_count : 1);
  const Shape want{out_rows, c.vocab_size};
  if (logits.dtype() != DType::kF32 || !(logits.shape() == want) || !logits.is_contiguous() ||
      !(logits.device().is_cpu() || logits.device() == impl.device)) {
    return invalid_argument("forward: logits must be contiguous f32 " + want.to_string() +
                            " on the host or the model's device, got " + logits.describe());
  }
  if (impl.gpu) {
    KBIT_RETURN_IF_ERROR(impl.gpu->forward(tokens, cache.batch_, *cache.device_state_, cache.size_,
                                           logits, all_positions));
    cache.size_ += t_count;
    return ok_status();
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

  m.embed_tokens(tokens, s.hidden.data());
  std::vector<float> dynamic_inv_freq;
  const float* inv_freq = m.rope_frequencies(start + t_count, dynamic_inv_freq);
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const Layer& layer = m.layers[l];
    const LayerLora lora = loaded_lora(layer);
    m.attention_inputs(layer, lora, s.hidden.data(), t_count, start, inv_freq, s.normed.data(),
                       s.q.data(), s.k.data(), s.v.data());
    float* keys = cache.keys_[l].data();
    float* values = cache.values_[l].data();
    std::memcpy(keys + start * kvh * d, s.k.data(), s.k.size() * sizeof(float));
    std::memcpy(values + start * kvh * d, s.v.data(), s.v.size() * sizeof(float));
    m.attention(s.q.data(), keys, values, t_count, start, s.attn.data());
    m.attention_output(layer, lora, s.attn.data(), t_count, s.proj.data(), s.hidden.data());
    m.mlp_inputs(layer, lora, s.hidden.data(), t_count, s.normed.data(), s.gate.data(),
                 s.up.data());
    m.mlp_activation(s.gate.data(), s.up.data(), t_count);
    m.mlp_output(layer, lora, s.gate.data(), t_count, s.proj.data(), s.hidden.data());
  }

  const float* last = s.hidden.data() + (t_count - out_rows) * e;
  m.rms_norm(last, m.final_norm, out_rows, s.normed.data());
  m.linear(m.lm_head, m.lm_head.lora, s.normed.data(), out_rows, logits.data_as<float>());
  cache.size_ = start + t_count;
  return ok_status();
}

const CpuLlama* cpu_llama(const LlamaModel& model) {
  return model.impl_->gpu ? nullptr : &model.impl_->cpu;
}

const cuda::CudaLlama* cuda_llama(const LlamaModel& model) {
  return model.impl_->gpu.get();
}

}  // namespace kbit::model
