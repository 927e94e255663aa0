#include "cli/model_flags.h"

namespace kbit::cli {

void add_model_flags(CLI::App& command, ModelFlags& flags) {
  command
      .add_option("-m,--model", flags.model_dir,
                  "model folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  command.add_option("--threads", flags.threads, "CPU threads (0: all)")->capture_default_str();
  command
      .add_option("--dtype", flags.dtype,
                  "activation dtype: f32, or bf16 as transformers with torch.bfloat16")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
}

model::LlamaLoadOptions model_load_options(const ModelFlags& flags) {
  model::LlamaLoadOptions options;
  options.execution.threads = flags.threads;
  options.activation_dtype = flags.dtype == "bf16" ? DType::kBF16 : DType::kF32;
  return options;
}

Result<LoadedModel> load_model(const ModelFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(model::LlamaModel model,
                        model::LlamaModel::load(flags.model_dir, model_load_options(flags)));
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
