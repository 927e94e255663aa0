// A tiny random Llama for the training tests: 2 layers, hidden 32, 4 heads over 2 kv heads
// (GQA), head_dim 8, intermediate 64, vocab 64, written as config.json + model.safetensors (f32)
// into a folder, to be loaded by LlamaModel::load like any checkpoint. Its weights are scaled so
// that every activation is of order one (Linear weights std 1/√in, norms around 1), which gives
// finite differences a strong signal; every in_features is a multiple of 32, so that 4-bit
// blocks of 32 or 64 fit every Linear.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/llama_config.h"

namespace kbit::train {

inline std::string tiny_llama_config_json(bool tied) {
  return std::string(R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 32,
  "intermediate_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 8,
  "max_position_embeddings": 128,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "vocab_size": 64,
  "torch_dtype": "float32",
  "tie_word_embeddings": )") +
         (tied ? "true" : "false") + "\n}\n";
}

inline model::LlamaConfig tiny_llama_config(bool tied = false) {
  return model::parse_llama_config(tiny_llama_config_json(tied), "tiny config.json").value();
}

// Writes the tiny model into `dir` (which exists), weights from `seed`.
inline void write_tiny_llama(const std::filesystem::path& dir, std::uint64_t seed,
                             bool tied = false) {
  const model::LlamaConfig config = tiny_llama_config(tied);
  std::vector<Tensor> storage;
  std::vector<io::NamedTensor> tensors;
  std::uint64_t stream = seed;
  const auto add = [&](const std::string& name, Shape shape, float mean, float stddev) {
    storage.push_back(Tensor::empty(shape, DType::kF32).value());
    ASSERT_TRUE(fill_normal(storage.back().view(), stream++, mean, stddev).ok());
    tensors.push_back({name, storage.back().view()});
  };
  const std::int64_t e = config.hidden_size;
  add("model.embed_tokens.weight", {config.vocab_size, e}, 0.0f, 1.0f);
  add("model.norm.weight", {e}, 1.0f, 0.1f);
  if (!tied) add("lm_head.weight", {config.vocab_size, e}, 0.0f, 1.0f / std::sqrt(32.0f));
  for (const model::LinearModule& linear : model::linear_modules(config)) {
    if (linear.name == "lm_head") continue;
    add(linear.name + ".weight", {linear.out_features, linear.in_features}, 0.0f,
        1.0f / std::sqrt(static_cast<float>(linear.in_features)));
  }
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    add(prefix + "input_layernorm.weight", {e}, 1.0f, 0.1f);
    add(prefix + "post_attention_layernorm.weight", {e}, 1.0f, 0.1f);
  }
  std::ofstream(dir / "config.json") << tiny_llama_config_json(tied);
  ASSERT_TRUE(io::write_safetensors(dir / "model.safetensors", tensors).ok());
}

}  // namespace kbit::train
