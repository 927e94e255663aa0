// kbit quantize: write a float checkpoint again with its Linear layers in 4-bit or int8, in the
// format transformers + bitsandbytes save, so that either loads it.
#include <chrono>
#include <memory>

#include <fmt/core.h>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/model/model_summary.h"
#include "kbit/model/quantize_checkpoint.h"

namespace kbit::cli {
namespace {

struct QuantizeFlags {
  std::filesystem::path model_dir;
  std::filesystem::path output_dir;
  std::string device = "auto";
  int threads = 0;
  QuantFlags quant;
};

Status run(const QuantizeFlags& flags) {
  // bitsandbytes' default compute dtype; a checkpoint records it for whoever loads it.
  KBIT_ASSIGN_OR_RETURN(const std::optional<model::QuantizeOptions> options,
                        quantize_options(flags.quant, DType::kF32));
  if (!options) {
    return invalid_argument(
        "say how to quantize: --load-in-4bit (with --quant-type, "
        "--double-quant, --blocksize) or --load-in-8bit");
  }
  KBIT_ASSIGN_OR_RETURN(const Device device, resolve_device(flags.device));
  ExecutionOptions execution;
  execution.threads = flags.threads;
  const auto start = std::chrono::steady_clock::now();
  KBIT_RETURN_IF_ERROR(
      model::quantize_checkpoint(flags.model_dir, flags.output_dir, *options, execution, device));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  KBIT_ASSIGN_OR_RETURN(const model::ModelSummary summary,
                        model::summarize_model(flags.output_dir, std::nullopt));
  const model::ModeFootprint& stored = summary.modes.front();
  fmt::print(
      "wrote {} in {:.1f} s: weights {:.1f} MiB in kbit ({:.1f} MiB as transformers "
      "counts it)\n",
      flags.output_dir.string(), seconds, static_cast<double>(stored.kbit_bytes) / 1048576.0,
      static_cast<double>(stored.footprint_bytes) / 1048576.0);
  return ok_status();
}

}  // namespace

Action add_quantize_command(CLI::App& app) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* command = app.add_subcommand(
      "quantize", "Write a 4-bit or int8 copy of a model that transformers + bitsandbytes load");
  command->add_option("-m,--model", flags->model_dir, "the float model folder")->required();
  command->add_option("-o,--output", flags->output_dir, "the new folder (must not exist)")
      ->required();
  add_device_flag(*command, flags->device);
  command->add_option("--threads", flags->threads, "CPU threads (0: all)")->capture_default_str();
  add_quant_flags(*command, flags->quant);
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
