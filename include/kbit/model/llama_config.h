// The config.json of a Hugging Face Llama-family model (LlamaForCausalLM, MistralForCausalLM),
// read in both the transformers 4 form (top-level rope_theta, rope_scaling, torch_dtype) and the
// transformers 5 form (rope_parameters, dtype), with transformers' defaults (spec 11.1).
//
// The shape fields (vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads) are required: a default of Llama-7B's shape would only surface later as a
// confusing tensor-shape error. Other fields take transformers' defaults when absent. A field of
// the wrong type, an unsupported architecture, activation or RoPE type fails naming config.json,
// the field and the value found.
//
// Values; no shared state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"

namespace kbit::model {

enum class RopeType {
  kDefault,  // inv_freq[k] = 1 / theta^(2k/d)
  kLinear,   // inv_freq / factor
  kDynamic,  // dynamic NTK: theta grows once a call's positions pass max_position_embeddings
  kLlama3,   // Llama 3.1 frequency-band scaling
};

// "default", "linear", "dynamic", "llama3".
std::string_view rope_type_name(RopeType type);

struct RopeParameters {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;            // linear, dynamic, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3: the context length the model was trained at (defaults to max_position_embeddings).
  std::int64_t original_max_position_embeddings = 0;
};

struct LlamaConfig {
  std::string architecture;  // "LlamaForCausalLM" or "MistralForCausalLM"
  std::string model_type;    // "llama" or "mistral"
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // divides num_attention_heads
  std::int64_t head_dim = 0;             // even; default hidden_size / num_attention_heads
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeParameters rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  // Mistral: each query attends to at most this many most recent positions (itself included).
  std::optional<std::int64_t> sliding_window;
  std::optional<DType> dtype;  // torch_dtype / dtype: how the checkpoint is stored
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  // an int in the file becomes a list of one
  std::optional<std::int64_t> pad_token_id;
};

// A Linear layer of the model: its module name in the state dict (without ".weight") and shape.
struct LinearModule {
  std::string name;  // e.g. "model.layers.0.self_attn.q_proj", "lm_head"
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  bool has_bias = false;
};

// Number of Linear layers in each decoder layer: q, k, v, o, gate, up, down.
inline constexpr int kLinearsPerLayer = 7;

// Every Linear of the model: for each layer q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
// down_proj (kLinearsPerLayer entries per layer, in that order), then lm_head.
std::vector<LinearModule> linear_modules(const LlamaConfig& config);

// Parses the text of a config.json; `source` names it in errors (e.g. "models/x/config.json").
Result<LlamaConfig> parse_llama_config(std::string_view json_text, const std::string& source);

// Reads and parses `path` (a config.json).
Result<LlamaConfig> load_llama_config(const std::filesystem::path& path);

}  // namespace kbit::model
