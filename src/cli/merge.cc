// kbit merge: LoRA adapters merged into a float model's weights, written as a new model folder.
#include <fmt/core.h>

#include "cli/commands.h"
#include "kbit/model/merge_adapters.h"

namespace kbit::cli {
namespace {

struct MergeFlags {
  std::filesystem::path model_dir;
  std::vector<std::filesystem::path> adapters;
  std::filesystem::path output;
};

Status run(const MergeFlags& flags) {
  KBIT_RETURN_IF_ERROR(model::merge_adapters(flags.model_dir, flags.adapters, flags.output));
  fmt::print("merged {} adapter(s) into {}\n", flags.adapters.size(), flags.output.string());
  return ok_status();
}

}  // namespace

Action add_merge_command(CLI::App& app) {
  auto flags = std::make_shared<MergeFlags>();
  CLI::App* command = app.add_subcommand(
      "merge", "Merge PEFT LoRA adapters into a float model's weights (PEFT's merge_and_unload)");
  command->add_option("-m,--model", flags->model_dir, "the float model folder")->required();
  command->add_option("--adapter", flags->adapters, "a PEFT adapter folder (repeatable)")
      ->required();
  command->add_option("-o,--output", flags->output, "the new model folder")->required();
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
