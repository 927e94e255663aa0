// kbit generate: continue a prompt, streaming the text.
#include <chrono>
#include <cstdio>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/core/memory_stats.h"
#include "kbit/generate/generator.h"

namespace kbit::cli {
namespace {

struct GenerateFlags {
  ModelFlags model;
  std::string prompt;
  generate::GenerationParams generation;
  std::int64_t context = 0;  // 0: prompt + max new tokens
  bool json = false;
};

Status run(GenerateFlags flags) {
  KBIT_RETURN_IF_ERROR(flags.generation.sampling.validate());
  const std::int64_t rss_before_load = resident_bytes().value_or(-1);
  const auto load_start = std::chrono::steady_clock::now();
  KBIT_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(flags.model));
  const std::int64_t peak_rss_after_load = peak_resident_bytes().value_or(-1);
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  KBIT_ASSIGN_OR_RETURN(const std::vector<std::int32_t> prompt,
                        loaded.tokenizer.encode(flags.prompt, /*add_special_tokens=*/true));
  const std::int64_t context = flags.context > 0 ? flags.context
                                                 : static_cast<std::int64_t>(prompt.size()) +
                                                       flags.generation.max_new_tokens + 1;
  KBIT_ASSIGN_OR_RETURN(model::KvCache cache, loaded.model.new_cache(context));
  const generate::TextCallback stream = [&](std::string_view text) {
    if (flags.json) return;
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  if (!flags.json) stream(flags.prompt);
  KBIT_ASSIGN_OR_RETURN(
      const generate::GenerationResult result,
      generate::generate(loaded.model, loaded.tokenizer, cache, prompt, flags.generation, stream));
  const double decode_rate =
      result.tokens.size() > 1
          ? static_cast<double>(result.tokens.size() - 1) / result.decode_seconds
          : 0.0;
  const double prompt_rate = static_cast<double>(result.prompt_tokens) / result.prompt_seconds;
  if (flags.json) {
    nlohmann::json out = {{"prompt_ids", prompt},
                          {"generated_ids", result.tokens},
                          {"text", result.text},
                          {"stop_reason", generate::stop_reason_name(result.stop_reason)},
                          {"load_seconds", load_seconds},
                          {"rss_before_load_bytes", rss_before_load},
                          {"peak_rss_after_load_bytes", peak_rss_after_load},
                          {"weight_bytes", loaded.model.weight_bytes()},
                          {"peak_rss_bytes", peak_resident_bytes().value_or(-1)},
                          {"prompt_tokens_per_second", prompt_rate},
                          {"decode_tokens_per_second", decode_rate}};
    fmt::print("{}\n", out.dump());
    return ok_status();
  }
  fmt::print("\n");
  fmt::print(stderr,
             "kbit generate: prompt {} tokens at {:.1f} tok/s; {} new tokens at {:.1f} tok/s; "
             "stopped: {}\n",
             result.prompt_tokens, prompt_rate, result.tokens.size(), decode_rate,
             generate::stop_reason_name(result.stop_reason));
  return ok_status();
}

}  // namespace

Action add_generate_command(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* command = app.add_subcommand("generate", "Continue a prompt, streaming the text");
  add_model_flags(*command, flags->model);
  command->add_option("-p,--prompt", flags->prompt, "the text to continue")->required();
  command
      ->add_option("-n,--max-new-tokens", flags->generation.max_new_tokens,
                   "generate at most this many tokens")
      ->capture_default_str();
  add_sampling_flags(*command, flags->generation.sampling);
  command->add_option("--stop", flags->generation.stop_strings,
                      "stop when the text contains this string (repeatable)");
  command->add_flag("!--ignore-eos", flags->generation.stop_at_eos,
                    "keep going past the end-of-sequence token");
  command->add_option("--ctx", flags->context, "context size in tokens (0: what the run needs)")
      ->capture_default_str();
  command->add_flag("--json", flags->json,
                    "print one JSON object (ids, text, speed) instead of streaming text");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
