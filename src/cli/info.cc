// kbit info: what a model is made of and what it needs in memory in each mode: the "how much
// memory do I need" arithmetic, done from config.json and the checkpoint headers.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/model/model_summary.h"

namespace kbit::cli {
namespace {

struct InfoFlags {
  std::filesystem::path model_dir;
  QuantFlags quant;
  std::optional<std::string> memory;
  std::optional<std::string> device;
  std::optional<std::int64_t> context;
  bool json = false;
};

// "24GiB", "24 GB", "800MiB", "1.5T", "123456" (bytes) -> bytes. Decimal units are powers of
// 1000, binary ones (KiB, MiB, GiB, TiB) powers of 1024.
Result<std::int64_t> parse_memory_size(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  std::string unit(end);
  std::erase(unit, ' ');
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::pair<const char*, double> units[] = {{"", 1},
                                                  {"b", 1},
                                                  {"k", 1e3},
                                                  {"kb", 1e3},
                                                  {"kib", 1024.0},
                                                  {"m", 1e6},
                                                  {"mb", 1e6},
                                                  {"mib", 1048576.0},
                                                  {"g", 1e9},
                                                  {"gb", 1e9},
                                                  {"gib", 1073741824.0},
                                                  {"t", 1e12},
                                                  {"tb", 1e12},
                                                  {"tib", 1099511627776.0}};
  for (const auto& [name, scale] : units) {
    if (unit == name && end != text.c_str() && std::isfinite(value) && value > 0) {
      return static_cast<std::int64_t>(value * scale);
    }
  }
  return invalid_argument("--memory '" + text +
                          "' is not a size; write it like 24GiB, 80GB or 512MiB");
}

std::string mib(std::int64_t bytes) {
  return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / 1048576.0);
}

std::string mode_description(const model::ModeFootprint& mode) {
  if (!mode.quantize) return mode.mode;
  const io::BnbQuantizationConfig& q = mode.quantize->config;
  if (q.mode == io::BnbQuantMode::kInt8) return mode.mode + " (int8)";
  const std::int64_t block_size = mode.quantize->block_size;  // 0: as stored, per weight
  return fmt::format("{} ({}{}{})", mode.mode, quant::four_bit_type_name(q.four_bit_type),
                     q.double_quant ? " + double quant" : "",
                     block_size > 0 ? fmt::format(", block {}", block_size) : "");
}

Status run(const InfoFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(const std::optional<model::QuantizeOptions> requested,
                        quantize_options(flags.quant, DType::kF32));
  KBIT_ASSIGN_OR_RETURN(const model::ModelSummary summary,
                        model::summarize_model(flags.model_dir, requested));
  std::optional<std::int64_t> memory;
  std::string memory_name = flags.memory.value_or("");
  if (flags.memory) {
    KBIT_ASSIGN_OR_RETURN(memory, parse_memory_size(*flags.memory));
  } else if (flags.device) {
    // The GPU's own memory is what the model must fit.
    KBIT_ASSIGN_OR_RETURN(const Device device, resolve_device(*flags.device));
    if (device.is_cuda()) {
      KBIT_ASSIGN_OR_RETURN(const DeviceMemory gpu, device_memory(device));
      memory = static_cast<std::int64_t>(gpu.total);
      memory_name = device.to_string();
    }
  }
  const model::LlamaConfig& c = summary.config;
  const std::int64_t context = flags.context.value_or(c.max_position_embeddings);
  if (context < 1) return invalid_argument("--context must be at least 1");
  const std::int64_t kv_bytes = summary.kv_cache_bytes_per_token * context;

  if (flags.json) {
    nlohmann::json out = {{"model", flags.model_dir.string()},
                          {"architecture", c.architecture},
                          {"parameters", summary.parameters},
                          {"kv_cache_bytes_per_token", summary.kv_cache_bytes_per_token},
                          {"context", context},
                          {"classes", nlohmann::json::array()},
                          {"modes", nlohmann::json::array()}};
    if (memory) out["memory_bytes"] = *memory;
    for (const model::TensorClass& t : summary.classes) {
      out["classes"].push_back({{"class", t.name},
                                {"tensors", t.tensors},
                                {"elements", t.elements},
                                {"stored_bytes", t.stored_bytes}});
    }
    for (const model::ModeFootprint& mode : summary.modes) {
      nlohmann::json entry = {{"mode", mode.mode},
                              {"footprint_bytes", mode.footprint_bytes},
                              {"kbit_bytes", mode.kbit_bytes},
                              {"kbit_bytes_with_kv_cache", mode.kbit_bytes + kv_bytes}};
      if (memory) entry["fits"] = mode.kbit_bytes + kv_bytes <= *memory;
      out["modes"].push_back(entry);
    }
    fmt::print("{}\n", out.dump());
    return ok_status();
  }

  fmt::print("{}: {}, {} layers, hidden {}, {} heads ({} KV), vocabulary {}\n",
             flags.model_dir.string(), c.architecture, c.num_hidden_layers, c.hidden_size,
             c.num_attention_heads, c.num_key_value_heads, c.vocab_size);
  fmt::print("{} parameters\n\n", summary.parameters);
  fmt::print("{:<10} {:>8} {:>14} {:>14}\n", "tensors", "count", "elements", "stored");
  for (const model::TensorClass& t : summary.classes) {
    fmt::print("{:<10} {:>8} {:>14} {:>14}\n", t.name, t.tensors, t.elements, mib(t.stored_bytes));
  }
  fmt::print(
      "\nmemory by mode: footprint = what transformers' get_memory_footprint() reports; "
      "kbit = kbit's weights; + KV = with kbit's KV cache for {} tokens ({})\n",
      context, mib(kv_bytes));
  fmt::print("{:<36} {:>14} {:>14} {:>14}{}\n", "mode", "footprint", "kbit", "kbit + KV",
             memory ? fmt::format(" {:>10}", "fits " + memory_name) : "");
  for (const model::ModeFootprint& mode : summary.modes) {
    const std::int64_t total = mode.kbit_bytes + kv_bytes;
    fmt::print("{:<36} {:>14} {:>14} {:>14}{}\n", mode_description(mode), mib(mode.footprint_bytes),
               mib(mode.kbit_bytes), mib(total),
               memory ? fmt::format(" {:>10}", total <= *memory ? "yes" : "no") : "");
  }
  return ok_status();
}

}  // namespace

Action add_info_command(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* command = app.add_subcommand(
      "info", "Parameters, tensor sizes and the memory each mode needs, without loading weights");
  command->add_option("-m,--model", flags->model_dir, "model folder")->required();
  add_quant_flags(*command, flags->quant);
  command->add_option("--memory", flags->memory, "a memory size to check each mode against");
  command->add_option("--device", flags->device,
                      "check each mode against this device's memory (cuda, cuda:N) unless "
                      "--memory is given");
  command->add_option("--context", flags->context,
                      "tokens of KV cache to count (default: max_position_embeddings)");
  command->add_flag("--json", flags->json, "print one JSON object");
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
