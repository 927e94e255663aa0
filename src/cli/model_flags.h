// Flags shared by the subcommands that run a model: the model folder, threads, dtype, the
// quantization options (as transformers' BitsAndBytesConfig), and sampling.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kbit/generate/sampler.h"
#include "kbit/model/llama.h"
#include "kbit/model/quantize_options.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::cli {

// --load-in-4bit [--quant-type] [--double-quant [--lean-double-quant]] [--blocksize],
// --load-in-8bit
// [--int8-threshold], --compute-dtype, --skip-modules.
struct QuantFlags {
  bool load_in_4bit = false;
  bool load_in_8bit = false;
  std::optional<std::string> quant_type;  // default nf4 (bitsandbytes' default is fp4)
  bool double_quant = false;
  bool lean_double_quant = false;            // LlamaLoadOptions::rounded_absmax off
  std::optional<std::int64_t> block_size;    // default 64
  std::optional<double> int8_threshold;      // default 6.0
  std::optional<std::string> compute_dtype;  // "f32", "bf16", "f16"
  std::optional<std::vector<std::string>> skip_modules;
};

void add_quant_flags(CLI::App& command, QuantFlags& flags);

// The quantization the flags ask for, nullopt without --load-in-4bit/--load-in-8bit. The compute
// dtype defaults to `default_compute_dtype`. Fails naming a flag that does not fit the mode
// (e.g. --blocksize with --load-in-8bit) or a value kbit cannot use.
Result<std::optional<model::QuantizeOptions>> quantize_options(const QuantFlags& flags,
                                                               DType default_compute_dtype);

// --device: "auto" (the default) is the first CUDA GPU where one is usable, else the CPU.
void add_device_flag(CLI::App& command, std::string& device);
// The device --device names; fails naming the flag for an unknown or unusable device.
Result<Device> resolve_device(const std::string& device);

struct ModelFlags {
  std::filesystem::path model_dir;
  std::string device = "auto";
  int threads = 0;
  // Activation dtype: "f32" or "bf16"; "auto": f32 on the CPU, bf16 on a GPU.
  std::string dtype = "auto";
  QuantFlags quant;
  // --adapter DIR (repeatable): PEFT LoRA adapter folders, summed.
  std::vector<std::filesystem::path> adapters;
};

// --lora-dtype auto|f32|bf16 (into `lora_dtype`): the precision of LoRA terms trained on a GPU.
CLI::Option* add_lora_dtype_flag(CLI::App& command, std::string& lora_dtype);

// The dtype --lora-dtype asks for on a base with `activations` on `device`: auto is bf16 with
// bf16 activations on a GPU (what transformers' Trainer with bf16=True runs: PEFT under
// autocast), f32 otherwise; kInvalidArgument for bf16 where it does not run (the CPU, f32
// activations).
Result<DType> resolve_lora_dtype(const std::string& lora_dtype, Device device, DType activations);

// -m/--model (required), --device, --threads, --dtype, --adapter and the quantization flags.
void add_model_flags(CLI::App& command, ModelFlags& flags);

// The load options the flags ask for (device, threads, activation dtype, quantization,
// adapters).
Result<model::LlamaLoadOptions> model_load_options(const ModelFlags& flags);

// The model of a benchmark: a checkpoint (-m) or random weights of a config's shape
// (--random-weights), so that shapes can be measured without their weights.
struct BenchModelFlags {
  ModelFlags model;  // model.model_dir stays empty with --random-weights
  std::filesystem::path random_config;
};

// -m/--model, --random-weights, --device, --dtype and the quantization flags.
void add_bench_model_flags(CLI::App& command, BenchModelFlags& flags);

// The model the flags name, loaded with `options` (random weights from `seed`); kInvalidArgument
// unless exactly one of -m and --random-weights is given.
Result<model::LlamaModel> load_bench_model(const BenchModelFlags& flags,
                                           const model::LlamaLoadOptions& options,
                                           std::uint64_t seed);

// How reports name that model: the folder, or "CONFIG (random weights)".
std::string bench_model_source(const BenchModelFlags& flags);

struct LoadedModel {
  model::LlamaModel model;
  tokenizer::Tokenizer tokenizer;
};

// The model and its tokenizer (tokenizer.json in the same folder). for_training: without what
// only decoding uses (LlamaLoadOptions::rounded_absmax).
Result<LoadedModel> load_model(const ModelFlags& flags, bool for_training = false);

// --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed.
void add_sampling_flags(CLI::App& command, generate::SamplingParams& params);

}  // namespace kbit::cli
