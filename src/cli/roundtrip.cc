// kbit roundtrip: quantize and dequantize a generated tensor; print the error and throughput.
#include <fmt/core.h>

#include "cli/commands.h"
#include "kbit/quant/roundtrip.h"

namespace kbit::cli {
namespace {

struct RoundtripFlags {
  std::string format = "nf4";
  std::int64_t block_size = 64;
  bool double_quant = false;
  std::string dtype = "bf16";
  std::int64_t numel = std::int64_t{1} << 24;
  std::string device = "cpu";
  std::uint64_t seed = 0;
  int iterations = 5;
  int threads = 0;
  bool reference = false;
};

Result<quant::RoundtripConfig> to_config(const RoundtripFlags& flags) {
  quant::RoundtripConfig config;
  if (flags.format == "nf4") {
    config.format = quant::RoundtripFormat::kNf4;
  } else if (flags.format == "fp4") {
    config.format = quant::RoundtripFormat::kFp4;
  } else if (flags.format == "8bit") {
    config.format = quant::RoundtripFormat::kDynamic8bit;
  } else {
    return invalid_argument("--format '" + flags.format + "' is not one of nf4, fp4, 8bit");
  }
  const std::optional<DType> dtype = parse_dtype(flags.dtype);
  if (!dtype || !is_floating(*dtype)) {
    return invalid_argument("--dtype '" + flags.dtype + "' is not one of f32, f16, bf16");
  }
  KBIT_ASSIGN_OR_RETURN(config.device, parse_device(flags.device));
  config.block_size = flags.block_size;
  config.double_quant = flags.double_quant;
  config.dtype = *dtype;
  config.numel = flags.numel;
  config.seed = flags.seed;
  config.iterations = flags.iterations;
  config.execution.threads = flags.threads;
  config.execution.cpu_kernel = flags.reference ? CpuKernel::kReference : CpuKernel::kFast;
  return config;
}

Status run(const RoundtripFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(const quant::RoundtripConfig config, to_config(flags));
  KBIT_ASSIGN_OR_RETURN(const quant::RoundtripReport report, quant::measure_roundtrip(config));
  const std::string where =
      config.device.is_cpu() ? "cpu (" + report.cpu_kernel + ")" : config.device.to_string();
  fmt::print("kbit roundtrip: {}{}, block size {}, {} {} values on {}\n", flags.format,
             flags.double_quant ? " + double quant" : "", config.block_size, config.numel,
             flags.dtype, where);
  fmt::print("  relative RMS error  {:.5f}   (||dequantized - x|| / ||x||, float64)\n",
             report.relative_rms_error);
  fmt::print("  max |error|         {:.5f}\n", report.max_abs_error);
  fmt::print("  quantized size      {:.3f} bits per value\n",
             8.0 * static_cast<double>(report.quantized_bytes) / static_cast<double>(config.numel));
  fmt::print("  quantize            {:8.3f} ms  {:8.2f} GB/s of input   (median of {})\n",
             report.quantize_seconds * 1e3, report.quantize_gb_per_s, config.iterations);
  fmt::print("  dequantize          {:8.3f} ms  {:8.2f} GB/s of output  (median of {})\n",
             report.dequantize_seconds * 1e3, report.dequantize_gb_per_s, config.iterations);
  return ok_status();
}

}  // namespace

Action add_roundtrip_command(CLI::App& app) {
  auto flags = std::make_shared<RoundtripFlags>();
  CLI::App* command = app.add_subcommand(
      "roundtrip", "Quantize and dequantize a generated normal tensor; print error and speed");
  command->add_option("--format", flags->format, "nf4, fp4 or 8bit (dynamic signed map)")
      ->capture_default_str();
  command->add_option("--block-size", flags->block_size, "values per quantization block")
      ->capture_default_str();
  command->add_flag("--double-quant", flags->double_quant,
                    "also quantize the 4-bit absmax to 8 bits (QLoRA's double quantization)");
  command->add_option("--dtype", flags->dtype, "f32, f16 or bf16")->capture_default_str();
  command->add_option("--numel", flags->numel, "number of values")->capture_default_str();
  command->add_option("--device", flags->device, "cpu, cuda or cuda:N")->capture_default_str();
  command->add_option("--seed", flags->seed, "seed of the generated values")->capture_default_str();
  command->add_option("--iterations", flags->iterations, "timed repetitions (median reported)")
      ->capture_default_str();
  command->add_option("--threads", flags->threads, "CPU threads (0: all)")->capture_default_str();
  command->add_flag("--reference", flags->reference,
                    "use the scalar one-thread reference kernels on the CPU");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
