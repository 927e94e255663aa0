// Flags shared by the subcommands that run a model: the model folder, threads, and sampling.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kbit/generate/sampler.h"
#include "kbit/model/llama.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::cli {

struct ModelFlags {
  std::filesystem::path model_dir;
  int threads = 0;
  std::string dtype = "f32";  // activation dtype: "f32" or "bf16"
};

// -m/--model (required), --threads and --dtype.
void add_model_flags(CLI::App& command, ModelFlags& flags);

// The load options the flags ask for (threads, activation dtype).
model::LlamaLoadOptions model_load_options(const ModelFlags& flags);

struct LoadedModel {
  model::LlamaModel model;
  tokenizer::Tokenizer tokenizer;
};

// The model and its tokenizer (tokenizer.json in the same folder).
Result<LoadedModel> load_model(const ModelFlags& flags);

// --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed.
void add_sampling_flags(CLI::App& command, generate::SamplingParams& params);

}  // namespace kbit::cli
