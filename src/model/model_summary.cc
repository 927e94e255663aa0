#include "kbit/model/model_summary.h"

#include <utility>

#include "kbit/io/checkpoint.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/nested_absmax.h"

namespace kbit::model {
namespace {

// The five classes `kbit info` reports, by tensor name.
std::string tensor_class(const std::string& name) {
  if (name.rfind("model.embed_tokens.", 0) == 0) return "embedding";
  if (name.rfind("lm_head.", 0) == 0) return "lm_head";
  if (name.find(".self_attn.") != std::string::npos) return "attention";
  if (name.find(".mlp.") != std::string::npos) return "mlp";
  if (name.find("norm") != std::string::npos) return "norms";
  return "other";
}

// The float tensors of the model besides the Linear weights: embedding, norms, biases.
struct OtherParameters {
  std::int64_t embedding = 0;
  std::int64_t norms = 0;
  std::int64_t biases = 0;
};

OtherParameters other_parameters(const LlamaConfig& c) {
  OtherParameters p;
  p.embedding = c.vocab_size * c.hidden_size;
  p.norms = (2 * c.num_hidden_layers + 1) * c.hidden_size;
  for (const LinearModule& module : linear_modules(c)) {
    if (module.has_bias) p.biases += module.out_features;
  }
  return p;
}

// Bytes one Linear weight [out, in] takes in kbit when quantized as `options` say: the same
// parts as LinearWeight::nbytes().
std::int64_t quantized_kbit_bytes(const LinearModule& module, const QuantizeOptions& options) {
  const std::int64_t n = module.out_features * module.in_features;
  if (options.config.mode == io::BnbQuantMode::kInt8) {
    return n + 2 * 4 * module.out_features;  // codes, row absmax, code row sums
  }
  const std::int64_t blocks = quant::block_count(n, options.block_size);
  const std::int64_t absmax = options.config.double_quant
                                  ? blocks + 4 * quant::block_count(blocks, quant::kNestedBlockSize)
                                  : 4 * blocks;
  return quant::packed_4bit_bytes(n) + absmax;
}

std::int64_t quantized_parameter_bytes(const LinearModule& module, const QuantizeOptions& options) {
  const std::int64_t n = module.out_features * module.in_features;
  return options.config.mode == io::BnbQuantMode::kInt8 ? n : quant::packed_4bit_bytes(n);
}

// One mode of a float checkpoint. float_bytes: bytes per float parameter in transformers
// (0: the mode is quantized, its float parameters in 16 bits) and kbit_float_bytes: in kbit.
Result<ModeFootprint> float_checkpoint_mode(const LlamaConfig& c, std::string mode,
                                            const std::optional<QuantizeOptions>& quantize,
                                            std::int64_t float_bytes,
                                            std::int64_t kbit_float_bytes) {
  const OtherParameters other = other_parameters(c);
  ModeFootprint result{std::move(mode), quantize, 0, 0};
  result.footprint_bytes = (other.embedding + other.norms + other.biases) * float_bytes +
                           c.head_dim * 4;  // inv_freq and original_inv_freq, f32
  result.kbit_bytes = other.embedding * kbit_float_bytes + (other.norms + other.biases) * 4;
  for (const LinearModule& module : linear_modules(c)) {
    const bool tied_head = module.name == "lm_head" && c.tie_word_embeddings;
    bool quantized = false;
    if (quantize) {
      KBIT_ASSIGN_OR_RETURN(quantized, quantizes_module(quantize->config, module.name));
    }
    const std::int64_t n = module.out_features * module.in_features;
    if (quantized) {
      result.footprint_bytes += quantized_parameter_bytes(module, *quantize);
      result.kbit_bytes += quantized_kbit_bytes(module, *quantize);
    } else if (!tied_head) {
      result.footprint_bytes += n * float_bytes;
      result.kbit_bytes += n * kbit_float_bytes;
    }
  }
  return result;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The one mode of a checkpoint quantized by bitsandbytes, from the stored tensor sizes.
Result<ModeFootprint> stored_mode(const LlamaConfig& c, const io::Checkpoint& checkpoint,
                                  const io::BnbQuantizationConfig& stored) {
  ModeFootprint result{"stored", QuantizeOptions{stored, 0}, c.head_dim * 4, 0};
  for (const std::string& name : checkpoint.names()) {
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;  // not loaded
    KBIT_ASSIGN_OR_RETURN(const io::SafetensorsEntry entry, checkpoint.entry(name));
    const auto bytes = static_cast<std::int64_t>(entry.end - entry.begin);
    if (ends_with(name, ".absmax") || ends_with(name, ".nested_absmax")) {
      result.kbit_bytes += bytes;
    } else if (ends_with(name, ".SCB")) {
      result.kbit_bytes += 2 * bytes;  // and the code row sums, one int32 per row too
    } else if (ends_with(name, "quant_map") || name.find(".quant_state.") != std::string::npos ||
               ends_with(name, ".weight_format")) {
      continue;  // code tables and descriptions: not counted (see LinearWeight::nbytes)
    } else if (is_floating(entry.dtype) &&
               (name.find("norm") != std::string::npos || ends_with(name, ".bias"))) {
      result.footprint_bytes += bytes;
      result.kbit_bytes += entry.shape.numel() * 4;  // kbit widens norms and biases to f32
    } else {
      result.footprint_bytes += bytes;
      result.kbit_bytes += bytes;
    }
  }
  return result;
}

}  // namespace

Result<ModelSummary> summarize_model(const std::filesystem::path& model_dir,
                                     const std::optional<QuantizeOptions>& requested) {
  const std::filesystem::path config_path = model_dir / "config.json";
  ModelSummary summary;
  KBIT_ASSIGN_OR_RETURN(summary.config, load_llama_config(config_path));
  KBIT_ASSIGN_OR_RETURN(summary.stored_quantization, io::read_bnb_quantization_config(config_path));
  if (requested) {
    KBIT_RETURN_IF_ERROR(validate_quantize_options(*requested));
    if (summary.stored_quantization) {
      return invalid_argument(model_dir.string() +
                              " is already quantized (config.json has a quantization_config); "
                              "its memory is reported without quantization options");
    }
  }
  KBIT_ASSIGN_OR_RETURN(const io::Checkpoint checkpoint, io::Checkpoint::open(model_dir));
  const LlamaConfig& c = summary.config;

  const OtherParameters other = other_parameters(c);
  summary.parameters = other.embedding + other.norms + other.biases;
  for (const LinearModule& module : linear_modules(c)) {
    if (module.name == "lm_head" && c.tie_word_embeddings) continue;
    summary.parameters += module.out_features * module.in_features;
  }
  for (const char* name : {"embedding", "lm_head", "attention", "mlp", "norms", "other"}) {
    summary.classes.push_back(TensorClass{name, 0, 0, 0});
  }
  for (const std::string& name : checkpoint.names()) {
    KBIT_ASSIGN_OR_RETURN(const io::SafetensorsEntry entry, checkpoint.entry(name));
    const std::string kind = tensor_class(name);
    for (TensorClass& tensor_class_entry : summary.classes) {
      if (tensor_class_entry.name != kind) continue;
      tensor_class_entry.tensors += 1;
      tensor_class_entry.elements += entry.shape.numel();
      tensor_class_entry.stored_bytes += static_cast<std::int64_t>(entry.end - entry.begin);
    }
  }
  std::erase_if(summary.classes, [](const TensorClass& t) { return t.tensors == 0; });

  if (summary.stored_quantization) {
    KBIT_ASSIGN_OR_RETURN(ModeFootprint stored,
                          stored_mode(c, checkpoint, *summary.stored_quantization));
    summary.modes.push_back(std::move(stored));
  } else {
    KBIT_ASSIGN_OR_RETURN(const io::SafetensorsEntry embedding,
                          checkpoint.entry("model.embed_tokens.weight"));
    const auto stored_size = static_cast<std::int64_t>(dtype_size(embedding.dtype));
    const auto four_bit = [](quant::FourBitType type, bool double_quant) {
      QuantizeOptions options;
      options.config.four_bit_type = type;
      options.config.double_quant = double_quant;
      return options;
    };
    QuantizeOptions int8;
    int8.config.mode = io::BnbQuantMode::kInt8;
    const std::vector<std::pair<std::string, std::optional<QuantizeOptions>>> modes = {
        {"nf4", four_bit(quant::FourBitType::kNf4, false)},
        {"nf4_dq", four_bit(quant::FourBitType::kNf4, true)},
        {"fp4", four_bit(quant::FourBitType::kFp4, false)},
        {"int8", int8},
        {"requested", requested}};
    KBIT_ASSIGN_OR_RETURN(ModeFootprint f32,
                          float_checkpoint_mode(c, "f32", std::nullopt, 4, stored_size));
    KBIT_ASSIGN_OR_RETURN(ModeFootprint bf16, float_checkpoint_mode(c, "bf16", std::nullopt, 2, 2));
    summary.modes.push_back(std::move(f32));
    summary.modes.push_back(std::move(bf16));
    for (const auto& [mode, options] : modes) {
      if (!options) continue;
      KBIT_ASSIGN_OR_RETURN(ModeFootprint footprint,
                            float_checkpoint_mode(c, mode, options, 2, stored_size));
      summary.modes.push_back(std::move(footprint));
    }
  }
  summary.kv_cache_bytes_per_token =
      2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
  return summary;
}

}  // namespace kbit::model
