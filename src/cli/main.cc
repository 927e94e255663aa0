// kbit: quantized LLM inference and fine-tuning from one native binary.
#include <cstdio>
#include <vector>

#include <fmt/core.h>

#include "cli/commands.h"
#include "kbit/version.h"

int main(int argc, char** argv) {
  CLI::App app("kbit: run and fine-tune large language models in 4-bit and 8-bit", "kbit");
  app.set_version_flag("--version", std::string("kbit ") + kbit::kVersion);
  app.require_subcommand(1);

  std::vector<kbit::cli::Action> actions;
  actions.push_back(kbit::cli::add_roundtrip_command(app));
  actions.push_back(kbit::cli::add_tokenize_command(app));
  actions.push_back(kbit::cli::add_logits_command(app));
  actions.push_back(kbit::cli::add_generate_command(app));
  actions.push_back(kbit::cli::add_chat_command(app));
  actions.push_back(kbit::cli::add_perplexity_command(app));
  actions.push_back(kbit::cli::add_quantize_command(app));
  actions.push_back(kbit::cli::add_info_command(app));
  actions.push_back(kbit::cli::add_bench_command(app));
  actions.push_back(kbit::cli::add_finetune_bench_command(app));
  actions.push_back(kbit::cli::add_finetune_command(app));
  actions.push_back(kbit::cli::add_merge_command(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  }
  const auto chosen = app.get_subcommands();
  for (std::size_t i = 0; i < app.get_subcommands({}).size(); ++i) {
    if (app.get_subcommands({})[i] != chosen.front()) continue;
    const kbit::Status status = actions[i]();
    if (!status.ok()) {
      fmt::print(stderr, "kbit {}: error: {}\n", chosen.front()->get_name(), status.to_string());
      return 1;
    }
  }
  return 0;
}
