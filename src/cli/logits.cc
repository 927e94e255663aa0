// kbit logits: run a model over a prompt on the CPU and write its f32 logits to a safetensors file
// (keys `logits` F32 [tokens, vocab] and `input_ids` I64 [tokens]), for comparison with
// transformers.
#include <fmt/core.h>

#include <charconv>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/llama.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::cli {
namespace {

struct LogitsFlags {
  ModelFlags model;  // -m, --threads, --dtype
  std::optional<std::string> prompt;
  std::optional<std::string> ids;
  std::filesystem::path output;
  bool reference = false;
};

// "1,2,3" -> {1, 2, 3}
Result<std::vector<std::int32_t>> parse_ids(const std::string& text) {
  std::vector<std::int32_t> ids;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    std::size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    std::int32_t id = 0;
    const char* first = text.data() + begin;
    const char* last = text.data() + end;
    const auto [ptr, error] = std::from_chars(first, last, id);
    if (error != std::errc() || ptr != last || first == last || id < 0) {
      return invalid_argument("--ids '" + text + "': '" + std::string(first, last) +
                              "' is not a non-negative token id; pass ids like 1,415,2");
    }
    ids.push_back(id);
    begin = end + 1;
  }
  return ids;
}

Status run(const LogitsFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(model::LlamaLoadOptions options, model_load_options(flags.model));
  options.execution.cpu_kernel = flags.reference ? CpuKernel::kReference : CpuKernel::kFast;
  KBIT_ASSIGN_OR_RETURN(const model::LlamaModel model,
                        model::LlamaModel::load(flags.model.model_dir, options));
  std::vector<std::int32_t> ids;
  if (flags.ids) {
    KBIT_ASSIGN_OR_RETURN(ids, parse_ids(*flags.ids));
  } else {
    KBIT_ASSIGN_OR_RETURN(const tokenizer::Tokenizer tokenizer,
                          tokenizer::Tokenizer::load(flags.model.model_dir / "tokenizer.json"));
    KBIT_ASSIGN_OR_RETURN(ids, tokenizer.encode(*flags.prompt, /*add_special_tokens=*/true));
  }
  if (ids.empty()) return invalid_argument("-p: the prompt has no tokens; pass some text");
  const auto tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t vocab = model.config().vocab_size;
  KBIT_ASSIGN_OR_RETURN(model::KvCache cache, model.new_cache(tokens));
  KBIT_ASSIGN_OR_RETURN(Tensor logits, Tensor::empty(Shape{tokens, vocab}, DType::kF32));
  KBIT_RETURN_IF_ERROR(model.forward(ids, cache, logits.view(), /*all_positions=*/true));
  std::vector<std::int64_t> ids64(ids.begin(), ids.end());
  const TensorView ids_view(ids64.data(), DType::kI64, Shape{tokens});
  KBIT_RETURN_IF_ERROR(
      io::write_safetensors(flags.output, {{"logits", logits.view()}, {"input_ids", ids_view}}));
  fmt::print("kbit logits: {} tokens x {} vocab written to {}\n", tokens, vocab,
             flags.output.string());
  return ok_status();
}

}  // namespace

Action add_logits_command(CLI::App& app) {
  auto flags = std::make_shared<LogitsFlags>();
  CLI::App* command = app.add_subcommand(
      "logits", "Run a model over a prompt on the CPU and save its f32 logits as safetensors");
  add_model_flags(*command, flags->model);
  CLI::Option* prompt =
      command->add_option("-p,--prompt", flags->prompt, "text, encoded with special tokens (BOS)");
  CLI::Option* ids =
      command->add_option("--ids", flags->ids, "comma-separated token ids instead of -p");
  prompt->excludes(ids);
  ids->excludes(prompt);
  command
      ->add_option("-o,--output", flags->output,
                   "output .safetensors (logits F32 [tokens, vocab], input_ids I64)")
      ->required();
  command->add_flag("--reference", flags->reference, "use the scalar one-thread reference kernels");
  return [flags]() -> Status {
    if (!flags->prompt && !flags->ids) {
      return invalid_argument("give the input as -p TEXT or --ids 1,2,3");
    }
    return run(*flags);
  };
}

}  // namespace kbit::cli
