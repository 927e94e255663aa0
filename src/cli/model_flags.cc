#include "cli/model_flags.h"

namespace kbit::cli {

void add_quant_flags(CLI::App& command, QuantFlags& flags) {
  const std::string group = "Quantization (as transformers' BitsAndBytesConfig)";
  CLI::Option* four_bit =
      command.add_flag("--load-in-4bit", flags.load_in_4bit, "quantize Linear layers to 4 bits")
          ->group(group);
  CLI::Option* eight_bit = command
                               .add_flag("--load-in-8bit", flags.load_in_8bit,
                                         "quantize Linear layers to int8 (LLM.int8)")
                               ->group(group);
  four_bit->excludes(eight_bit);
  command.add_option("--quant-type", flags.quant_type, "4-bit code: nf4 (default) or fp4")
      ->check(CLI::IsMember({"nf4", "fp4"}))
      ->group(group);
  command.add_flag("--double-quant", flags.double_quant, "quantize the 4-bit scales again (8-bit)")
      ->group(group);
  command
      .add_flag("--lean-double-quant", flags.lean_double_quant,
                "on a GPU, keep double-quantized scales only in their nested form: 0.03 bytes a "
                "weight less, decoding about 12% slower")
      ->group(group);
  command
      .add_option("--blocksize", flags.block_size,
                  "values per 4-bit scale: 32, 64 (default), ..., 4096")
      ->group(group);
  command
      .add_option("--int8-threshold", flags.int8_threshold,
                  "LLM.int8 outlier threshold (default 6.0; 0: no outlier decomposition)")
      ->group(group);
  command
      .add_option("--compute-dtype", flags.compute_dtype,
                  "4-bit matmul dtype: f32, bf16 or f16 (default: --dtype, or the checkpoint's)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->group(group);
  command
      .add_option("--skip-modules", flags.skip_modules,
                  "modules kept unquantized, comma-separated regexes (default: lm_head; "
                  "'none': quantize all)")
      ->delimiter(',')
      ->group(group);
}

Result<std::optional<model::QuantizeOptions>> quantize_options(const QuantFlags& flags,
                                                               DType default_compute_dtype) {
  if (!flags.load_in_4bit && !flags.load_in_8bit) {
    if (flags.quant_type || flags.double_quant || flags.block_size || flags.int8_threshold ||
        flags.skip_modules) {
      return invalid_argument(
          "--quant-type, --double-quant, --blocksize, --int8-threshold and --skip-modules "
          "refine a quantization: add --load-in-4bit or --load-in-8bit to choose one");
    }
    return std::optional<model::QuantizeOptions>();
  }
  if (flags.lean_double_quant && (flags.load_in_8bit || !flags.double_quant)) {
    return invalid_argument(
        "--lean-double-quant concerns double-quantized 4-bit weights: use it with --load-in-4bit "
        "--double-quant, or with a checkpoint bitsandbytes quantized so");
  }
  model::QuantizeOptions options;
  io::BnbQuantizationConfig& q = options.config;
  if (flags.load_in_8bit) {
    if (flags.quant_type || flags.double_quant || flags.block_size) {
      return invalid_argument(
          "--quant-type, --double-quant and --blocksize are 4-bit options; drop them with "
          "--load-in-8bit");
    }
    q.mode = io::BnbQuantMode::kInt8;
    q.int8_threshold = flags.int8_threshold.value_or(6.0);
  } else {
    if (flags.int8_threshold) {
      return invalid_argument("--int8-threshold is an 8-bit option; drop it with --load-in-4bit");
    }
    q.mode = io::BnbQuantMode::kFourBit;
    q.four_bit_type = *quant::parse_four_bit_type(flags.quant_type.value_or("nf4"));
    q.double_quant = flags.double_quant;
    options.block_size = flags.block_size.value_or(64);
  }
  q.compute_dtype =
      flags.compute_dtype ? *parse_dtype(*flags.compute_dtype) : default_compute_dtype;
  if (flags.skip_modules) {
    const std::vector<std::string>& skip = *flags.skip_modules;
    q.skip_modules = skip.size() == 1 && skip[0] == "none" ? std::vector<std::string>() : skip;
  }
  KBIT_RETURN_IF_ERROR(model::validate_quantize_options(options));
  return std::optional<model::QuantizeOptions>(options);
}

void add_device_flag(CLI::App& command, std::string& device) {
  command
      .add_option("--device", device,
                  "cpu, cuda or cuda:N; auto: the first GPU where one is usable, else the CPU")
      ->capture_default_str();
}

Result<Device> resolve_device(const std::string& device) {
  if (device == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  Result<Device> parsed = parse_device(device);
  if (!parsed.ok()) {
    return invalid_argument("--device '" + device + "' is not a device; use cpu, cuda or cuda:N");
  }
  if (parsed->is_cuda() && !cuda_available()) {
    return invalid_argument("--device " + device +
                            ": no CUDA GPU is usable here (or this build of kbit has no CUDA "
                            "support); use --device cpu");
  }
  return parsed;
}

namespace {

void add_dtype_flag(CLI::App& command, std::string& dtype) {
  command
      .add_option("--dtype", dtype,
                  "activation dtype: f32, or bf16 as transformers with torch.bfloat16; auto: f32 "
                  "on the CPU, bf16 on a GPU")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->capture_default_str();
}

}  // namespace

void add_model_flags(CLI::App& command, ModelFlags& flags) {
  command
      .add_option("-m,--model", flags.model_dir,
                  "model folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  add_device_flag(command, flags.device);
  command.add_option("--threads", flags.threads, "CPU threads (0: all)")->capture_default_str();
  add_dtype_flag(command, flags.dtype);
  command.add_option("--adapter", flags.adapters,
                     "PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors); "
                     "repeat to sum several");
  add_quant_flags(command, flags.quant);
}

CLI::Option* add_lora_dtype_flag(CLI::App& command, std::string& lora_dtype) {
  return command
      .add_option("--lora-dtype", lora_dtype,
                  "precision of the LoRA terms on a GPU: f32 (PEFT without autocast), or bf16 "
                  "(PEFT under autocast, as transformers' Trainer with bf16=True); auto: bf16 "
                  "with bf16 activations")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->capture_default_str();
}

Result<DType> resolve_lora_dtype(const std::string& lora_dtype, Device device, DType activations) {
  const bool bf16_runs = device.is_cuda() && activations == DType::kBF16;
  if (lora_dtype == "auto") return bf16_runs ? DType::kBF16 : DType::kF32;
  if (lora_dtype == "f32") return DType::kF32;
  if (lora_dtype == "bf16" && bf16_runs) return DType::kBF16;
  return invalid_argument("--lora-dtype " + lora_dtype +
                          ": bf16 LoRA runs on a GPU with bf16 activations (--dtype bf16); use "
                          "--lora-dtype f32 here");
}

void add_bench_model_flags(CLI::App& command, BenchModelFlags& flags) {
  command.add_option("-m,--model", flags.model.model_dir, "model folder");
  command.add_option("--random-weights", flags.random_config,
                     "a config.json: random weights of its shape (on a GPU)");
  add_device_flag(command, flags.model.device);
  add_dtype_flag(command, flags.model.dtype);
  add_quant_flags(command, flags.model.quant);
}

Result<model::LlamaModel> load_bench_model(const BenchModelFlags& flags,
                                           const model::LlamaLoadOptions& options,
                                           std::uint64_t seed) {
  const bool random_weights = !flags.random_config.empty();
  if (random_weights == !flags.model.model_dir.empty()) {
    return invalid_argument("give the model as -m DIR or as --random-weights CONFIG.json");
  }
  return random_weights ? model::LlamaModel::random(flags.random_config, options, seed)
                        : model::LlamaModel::load(flags.model.model_dir, options);
}

std::string bench_model_source(const BenchModelFlags& flags) {
  return flags.random_config.empty() ? flags.model.model_dir.string()
                                     : flags.random_config.string() + " (random weights)";
}

Result<model::LlamaLoadOptions> model_load_options(const ModelFlags& flags) {
  model::LlamaLoadOptions options;
  KBIT_ASSIGN_OR_RETURN(options.device, resolve_device(flags.device));
  options.execution.threads = flags.threads;
  const bool bf16 = flags.dtype == "bf16" || (flags.dtype == "auto" && options.device.is_cuda());
  options.activation_dtype = bf16 ? DType::kBF16 : DType::kF32;
  KBIT_ASSIGN_OR_RETURN(options.quantize, quantize_options(flags.quant, options.activation_dtype));
  if (flags.quant.compute_dtype) options.compute_dtype = parse_dtype(*flags.quant.compute_dtype);
  options.adapters = flags.adapters;
  options.rounded_absmax = !flags.quant.lean_double_quant;
  return options;
}

Result<LoadedModel> load_model(const ModelFlags& flags, bool for_training) {
  KBIT_ASSIGN_OR_RETURN(model::LlamaLoadOptions options, model_load_options(flags));
  if (for_training) options.rounded_absmax = false;
  KBIT_ASSIGN_OR_RETURN(model::LlamaModel model, model::LlamaModel::load(flags.model_dir, options));
  KBIT_ASSIGN_OR_RETURN(tokenizer::Tokenizer tokenizer,
                        tokenizer::Tokenizer::load(flags.model_dir / "tokenizer.json"));
  return LoadedModel{std::move(model), std::move(tokenizer)};
}

void add_sampling_flags(CLI::App& command, generate::SamplingParams& params) {
  command.add_option("--temperature", params.temperature, "0 = greedy")->capture_default_str();
  command.add_option("--top-k", params.top_k, "keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  command.add_option("--top-p", params.top_p, "keep the most likely tokens reaching p (1 = off)")
      ->capture_default_str();
  command.add_option("--min-p", params.min_p, "drop tokens below min_p x the top probability")
      ->capture_default_str();
  command.add_option("--repetition-penalty", params.repetition_penalty, "1 = off")
      ->capture_default_str();
  command.add_option("--seed", params.seed, "seed of the sampler")->capture_default_str();
}

}  // namespace kbit::cli
