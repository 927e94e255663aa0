#include "model/device_weights.h"

#include <string>
#include <utility>
#include <vector>

#include "kbit/core/random.h"
#include "kernels/cpu/llama_ops.h"
#include "model/llama_checkpoint.h"
#include "model/lora.h"

namespace kbit::model {
namespace {

constexpr float kRandomStddev = 0.02f;

// FNV-1a of the name, mixed with the seed: each tensor its own stream of samples.
std::uint64_t tensor_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (const char c : name) hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return hash ^ seed;
}

// The float tensor `name` [dims] on the device, in `dtype` (nullopt: as stored).
Result<Tensor> device_float(const DeviceLoadPlan& plan, cuda::DeviceLoader& loader,
                            const std::string& name, std::initializer_list<std::int64_t> dims,
                            std::optional<DType> dtype) {
  if (plan.checkpoint == nullptr) {
    return loader.random(Shape(dims), dtype.value_or(plan.random_dtype),
                         tensor_seed(plan.random_seed, name), 0.0f, kRandomStddev);
  }
  KBIT_ASSIGN_OR_RETURN(const TensorView source,
                        expect_float_tensor(*plan.checkpoint, plan.dir, name, dims));
  Result<Tensor> uploaded = loader.upload(source, dtype.value_or(source.dtype()));
  plan.checkpoint->release(name);
  return uploaded;
}

// A norm weight: f32 on the device, holding bf16 values in a bf16 model (as the CPU model).
Result<Tensor> device_norm(const DeviceLoadPlan& plan, cuda::DeviceLoader& loader,
                           const std::string& name, std::int64_t size) {
  std::vector<float> values(static_cast<std::size_t>(size));
  if (plan.checkpoint == nullptr) {
    const std::uint64_t seed = tensor_seed(plan.random_seed, name);
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = static_cast<float>(1.0 + kRandomStddev * normal_sample(seed, i));
    }
  } else {
    KBIT_ASSIGN_OR_RETURN(values, load_vector(*plan.checkpoint, plan.dir, name, size));
  }
  if (plan.activation_dtype == DType::kBF16) kernels::cpu::round_to_bf16(values.data(), size);
  return loader.upload(TensorView(values.data(), DType::kF32, {size}));
}

// `weight` in the decode tiles where it takes them (LinearWeight::to_decode_tiles), tiled on the
// loader's stream.
Result<LinearWeight> in_decode_tiles(LinearWeight weight, const DeviceLoadPlan& plan,
                                     const cuda::DeviceLoader& loader) {
  ExecutionOptions execution = plan.execution;
  execution.stream = loader.stream();
  KBIT_RETURN_IF_ERROR(weight.to_decode_tiles(execution));
  return weight;
}

Result<LinearWeight> device_linear_weight(const DeviceLoadPlan& plan, cuda::DeviceLoader& loader,
                                          const std::string& module, const std::string& source_name,
                                          std::int64_t out, std::int64_t in) {
  bool quantized = false;
  if (plan.quantization) {
    KBIT_ASSIGN_OR_RETURN(quantized, quantizes_module(plan.quantization->config, module));
  }
  if (quantized && plan.prequantized) {
    const LinearPlan host_plan{*plan.checkpoint, plan.dir, plan.quantization, true, false,
                               plan.execution};
    KBIT_ASSIGN_OR_RETURN(const LinearWeight stored,
                          load_linear_weight(host_plan, module, source_name, out, in));
    KBIT_ASSIGN_OR_RETURN(LinearWeight uploaded,
                          stored.to_device(loader.device(), [&](const TensorView& host) {
                            return loader.upload(host);
                          }));
    return in_decode_tiles(std::move(uploaded), plan, loader);
  }
  if (!quantized) {
    KBIT_ASSIGN_OR_RETURN(
        Tensor weight, device_float(plan, loader, source_name, {out, in}, plan.activation_dtype));
    return LinearWeight::float_owned(std::move(weight));
  }
  // As transformers with torch_dtype=bfloat16: the weight is rounded to bf16, then quantized.
  const std::optional<DType> dtype =
      plan.activation_dtype == DType::kBF16 ? std::optional(DType::kBF16) : std::nullopt;
  KBIT_ASSIGN_OR_RETURN(const Tensor source,
                        device_float(plan, loader, source_name, {out, in}, dtype));
  ExecutionOptions execution = plan.execution;
  execution.stream = loader.stream();
  Result<LinearWeight> weight =
      LinearWeight::quantize(source.view(), *plan.quantization, source_name, execution);
  KBIT_RETURN_IF_ERROR(loader.finish());  // before `source` returns to the cache
  if (!weight.ok()) return weight.status().with_context(plan.dir.string());
  return in_decode_tiles(std::move(*weight), plan, loader);
}

// The adapters' LoRA terms on `module`, widened to f32 on the device.
Result<std::vector<cuda::DeviceLoraTerm>> device_lora_terms(const DeviceLoadPlan& plan,
                                                            cuda::DeviceLoader& loader,
                                                            const LinearModule& module) {
  KBIT_ASSIGN_OR_RETURN(const std::vector<LoraTerm> terms, lora_terms(plan.adapters, module));
  std::vector<cuda::DeviceLoraTerm> device_terms;
  for (const LoraTerm& term : terms) {
    cuda::DeviceLoraTerm& uploaded = device_terms.emplace_back();
    KBIT_ASSIGN_OR_RETURN(uploaded.a, loader.upload(term.a, DType::kF32));
    KBIT_ASSIGN_OR_RETURN(uploaded.b, loader.upload(term.b, DType::kF32));
    uploaded.scaling = term.scaling;
  }
  return device_terms;
}

Result<cuda::DeviceLinear> device_linear(const DeviceLoadPlan& plan, cuda::DeviceLoader& loader,
                                         const LinearModule& module) {
  cuda::DeviceLinear linear;
  KBIT_ASSIGN_OR_RETURN(linear.weight,
                        device_linear_weight(plan, loader, module.name, module.name + ".weight",
                                             module.out_features, module.in_features));
  if (module.has_bias) {
    KBIT_ASSIGN_OR_RETURN(linear.bias, device_float(plan, loader, module.name + ".bias",
                                                    {module.out_features}, plan.activation_dtype));
  }
  KBIT_ASSIGN_OR_RETURN(linear.lora, device_lora_terms(plan, loader, module));
  return linear;
}

}  // namespace

Result<cuda::DeviceWeights> load_device_weights(const DeviceLoadPlan& plan,
                                                cuda::DeviceLoader& loader) {
  const LlamaConfig& c = plan.config;
  const std::int64_t e = c.hidden_size;
  cuda::DeviceWeights w;
  const std::string embed_name = "model.embed_tokens.weight";
  KBIT_ASSIGN_OR_RETURN(
      w.embed, device_float(plan, loader, embed_name, {c.vocab_size, e}, plan.activation_dtype));
  bool quantized_head = false;
  if (plan.quantization) {
    KBIT_ASSIGN_OR_RETURN(quantized_head, quantizes_module(plan.quantization->config, "lm_head"));
  }
  if (c.tie_word_embeddings && !quantized_head) {
    w.lm_head.weight = LinearWeight::float_view(w.embed.view());  // one copy serves both
  } else {
    // Tied, transformers points lm_head at the embedding and ignores any lm_head.weight stored.
    const std::string source = c.tie_word_embeddings ? embed_name : "lm_head.weight";
    KBIT_ASSIGN_OR_RETURN(w.lm_head.weight,
                          device_linear_weight(plan, loader, "lm_head", source, c.vocab_size, e));
  }
  const std::vector<LinearModule> modules = linear_modules(c);
  KBIT_ASSIGN_OR_RETURN(w.lm_head.lora, device_lora_terms(plan, loader, modules.back()));
  KBIT_ASSIGN_OR_RETURN(w.final_norm, device_norm(plan, loader, "model.norm.weight", e));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    cuda::DeviceLayer layer;
    KBIT_ASSIGN_OR_RETURN(layer.input_norm,
                          device_norm(plan, loader, p + "input_layernorm.weight", e));
    KBIT_ASSIGN_OR_RETURN(layer.post_attention_norm,
                          device_norm(plan, loader, p + "post_attention_layernorm.weight", e));
    cuda::DeviceLinear* linears[kLinearsPerLayer] = {&layer.q,    &layer.k,  &layer.v,   &layer.o,
                                                     &layer.gate, &layer.up, &layer.down};
    for (int j = 0; j < kLinearsPerLayer; ++j) {
      const LinearModule& module = modules[static_cast<std::size_t>(l * kLinearsPerLayer + j)];
      KBIT_ASSIGN_OR_RETURN(*linears[j], device_linear(plan, loader, module));
    }
    w.layers.push_back(std::move(layer));
  }
  KBIT_RETURN_IF_ERROR(loader.finish());
  return w;
}

}  // namespace kbit::model
