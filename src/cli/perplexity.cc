// kbit perplexity: how well a model predicts a text file.
#include <fstream>
#include <iterator>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "cli/progress_bar.h"
#include "kbit/generate/perplexity.h"

namespace kbit::cli {
namespace {

struct PerplexityFlags {
  ModelFlags model;
  std::filesystem::path file;
  std::int64_t context = 512;
  bool json = false;
};

Result<std::string> read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path.string() + ": cannot open the text file");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Status run(const PerplexityFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(flags.model));
  KBIT_ASSIGN_OR_RETURN(const std::string text, read_text(flags.file));
  Result<std::vector<std::int32_t>> ids = loaded.tokenizer.encode(text, false);
  if (!ids.ok()) return ids.status().with_context(flags.file.string());
  ProgressBar bar("perplexity", "windows");
  KBIT_ASSIGN_OR_RETURN(const generate::PerplexityResult result,
                        generate::perplexity(loaded.model, *ids, flags.context,
                                             [&](std::int64_t done, std::int64_t total) {
                                               bar.update(done, total);
                                             }));
  if (flags.json) {
    const nlohmann::json out = {{"perplexity", result.perplexity},
                                {"mean_nll", result.mean_nll},
                                {"tokens", result.tokens},
                                {"windows", result.windows}};
    fmt::print("{}\n", out.dump());
  } else {
    fmt::print("perplexity {:.4f}  (mean NLL {:.5f} nats over {} tokens in {} windows of {})\n",
               result.perplexity, result.mean_nll, result.tokens, result.windows, flags.context);
  }
  return ok_status();
}

}  // namespace

Action add_perplexity_command(CLI::App& app) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* command = app.add_subcommand(
      "perplexity", "Perplexity of a text file, scored in consecutive windows of --ctx tokens");
  add_model_flags(*command, flags->model);
  command->add_option("-f,--file", flags->file, "the text file")->required();
  command->add_option("--ctx", flags->context, "tokens per window")->capture_default_str();
  command->add_flag("--json", flags->json, "print one JSON object as the last line");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
