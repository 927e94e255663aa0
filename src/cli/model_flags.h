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
};

// -m/--model (required) and --threads.
void add_model_flags(CLI::App& command, ModelFlags& flags);

struct LoadedModel {
  model::LlamaModel model;
  tokenizer::Tokenizer tokenizer;
};

// The model and its tokenizer (tokenizer.json in the same folder).
Result<LoadedModel> load_model(const ModelFlags& flags);

// --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed.
void add_sampling_flags(CLI::App& command, generate::SamplingParams& params);

}  // namespace kbit::cli
