// The optimizer-state memory of full fine-tuning: AdamW's 32-bit states against AdamW8bit's for
// every parameter of a Llama model, allocated as kbit's trainer allocates them and stepped once.
//
//   kbit_optimizer_memory_bench CONFIG.json --optim adamw|adamw_8bit [--json FILE]
//
// The parameters of full fine-tuning, from config.json: embed_tokens, each layer's seven Linear
// weights (and biases, where the config has them) and two norm weights, the final norm, and
// lm_head unless tie_word_embeddings. Each is an f32 buffer of random values. One gradient buffer
// of the largest parameter's size, random and non-zero, serves every parameter in turn (the step
// only reads it): training would hold a gradient per parameter, but gradients are not what is
// measured, and sharing one keeps a 1.24 B-parameter model's 32-bit run under 16 GB.
//
// Measured, after the parameters and the gradient exist: each parameter's state allocated and
// zero-filled as kbit's trainer keeps it (optim::AdamWParameterState), then ONE AdamW step over
// every parameter, so every page of the states is written. Reported: the state bytes counted
// from the tensors (codes + absmax, or the two f32 moments), bytes per parameter, the counted
// saving against 32-bit states, and the growth of the process's resident memory across
// allocation and step (VmRSS after − VmRSS before; peak: VmHWM after − VmRSS before). Run each
// optimizer in its own process, so that neither inherits the other's pages.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kbit/core/memory_stats.h"
#include "kbit/core/random.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/model/llama_config.h"
#include "kbit/optim/adamw.h"
#include "kbit/optim/adamw_parameter_state.h"
#include "kbit/train/trainer.h"

namespace {

using kbit::DType;
using kbit::Shape;
using kbit::TensorView;
namespace optim = kbit::optim;

constexpr const char* kUsage =
    "usage: kbit_optimizer_memory_bench CONFIG.json --optim adamw|adamw_8bit [--json FILE]\n"
    "  CONFIG.json  a Llama model's config.json, e.g. bench/configs/llama-3.2-1b.json\n"
    "  --optim      the optimizer whose states are measured (one per process)\n"
    "  --json FILE  also write the results to FILE\n";

struct Arguments {
  std::string config_path;
  std::string optimizer_name;
  std::string json_path;
};

// The arguments, or a message naming the one at fault.
kbit::Result<Arguments> parse_arguments(int argc, char** argv) {
  Arguments arguments;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    const bool has_value = i + 1 < argc;
    if (argument == "--optim" || argument == "--json") {
      if (!has_value) return kbit::invalid_argument(argument + " needs a value");
      (argument == "--optim" ? arguments.optimizer_name : arguments.json_path) = argv[++i];
    } else if (argument.starts_with("-")) {
      return kbit::invalid_argument("unknown flag '" + argument +
                                    "'; the flags are --optim and --json");
    } else if (arguments.config_path.empty()) {
      arguments.config_path = argument;
    } else {
      return kbit::invalid_argument("a second config '" + argument +
                                    "'; measure one model per run");
    }
  }
  if (arguments.config_path.empty()) {
    return kbit::invalid_argument("no config.json given; pass a Llama model's, e.g. " +
                                  std::string("bench/configs/llama-3.2-1b.json"));
  }
  if (arguments.optimizer_name.empty()) {
    return kbit::invalid_argument("no optimizer given; pass --optim adamw or --optim adamw_8bit");
  }
  return arguments;
}

struct Parameter {
  std::string name;
  std::int64_t elements = 0;
};

// Every trainable parameter of full fine-tuning, in the order of the model's state dict.
std::vector<Parameter> trainable_parameters(const kbit::model::LlamaConfig& config) {
  const std::vector<kbit::model::LinearModule> linears = kbit::model::linear_modules(config);
  std::vector<Parameter> parameters;
  const auto add_linear = [&](const kbit::model::LinearModule& linear) {
    parameters.push_back({linear.name + ".weight", linear.out_features * linear.in_features});
    if (linear.has_bias) parameters.push_back({linear.name + ".bias", linear.out_features});
  };
  parameters.push_back({"model.embed_tokens.weight", config.vocab_size * config.hidden_size});
  for (std::int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (int j = 0; j < kbit::model::kLinearsPerLayer; ++j) {
      add_linear(linears[static_cast<std::size_t>(layer * kbit::model::kLinearsPerLayer + j)]);
    }
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    parameters.push_back({prefix + "input_layernorm.weight", config.hidden_size});
    parameters.push_back({prefix + "post_attention_layernorm.weight", config.hidden_size});
  }
  parameters.push_back({"model.norm.weight", config.hidden_size});
  if (!config.tie_word_embeddings) add_linear(linears.back());  // lm_head
  return parameters;
}

TensorView view_of(std::vector<float>& values) {
  return TensorView(values.data(), DType::kF32, Shape{static_cast<std::int64_t>(values.size())});
}

kbit::Result<std::int64_t> resident(std::optional<std::int64_t> (*read)(), const char* field) {
  const std::optional<std::int64_t> bytes = read();
  if (bytes) return *bytes;
  return kbit::unimplemented(std::string("cannot read ") + field +
                             " from /proc/self/status; this benchmark needs Linux");
}

struct Measurement {
  std::int64_t parameters = 0;
  std::int64_t tensors_8bit = 0;
  std::int64_t state_bytes = 0;        // counted from the state tensors
  std::int64_t state_bytes_32bit = 0;  // what 32-bit states of the same parameters take
  std::int64_t rss_before = 0;
  std::int64_t rss_after = 0;
  std::int64_t peak_after = 0;
};

kbit::Result<Measurement> measure(const std::vector<Parameter>& parameters,
                                  bool eight_bit_optimizer) {
  Measurement result;
  std::int64_t largest = 0;
  std::vector<std::vector<float>> values;
  for (std::size_t p = 0; p < parameters.size(); ++p) {
    values.emplace_back(static_cast<std::size_t>(parameters[p].elements));
    KBIT_RETURN_IF_ERROR(kbit::fill_normal(view_of(values.back()), p, 0.0f, 0.02f));
    largest = std::max(largest, parameters[p].elements);
  }
  std::vector<float> gradient(static_cast<std::size_t>(largest));
  KBIT_RETURN_IF_ERROR(kbit::fill_normal(view_of(gradient), parameters.size(), 0.0f, 1e-3f));

  KBIT_ASSIGN_OR_RETURN(result.rss_before, resident(kbit::resident_bytes, "VmRSS"));
  std::vector<optim::AdamWParameterState> states;
  states.reserve(parameters.size());
  for (std::size_t p = 0; p < parameters.size(); ++p) {
    KBIT_ASSIGN_OR_RETURN(
        optim::AdamWParameterState state,
        optim::AdamWParameterState::create(parameters[p].elements, eight_bit_optimizer));
    states.push_back(std::move(state));
    const TensorView grad(gradient.data(), DType::kF32, Shape{parameters[p].elements});
    KBIT_RETURN_IF_ERROR(
        states.back().apply(optim::AdamWHyperparameters{}, view_of(values[p]), grad));
  }
  KBIT_ASSIGN_OR_RETURN(result.rss_after, resident(kbit::resident_bytes, "VmRSS"));
  KBIT_ASSIGN_OR_RETURN(result.peak_after, resident(kbit::peak_resident_bytes, "VmHWM"));

  for (std::size_t p = 0; p < parameters.size(); ++p) {
    const std::int64_t n = parameters[p].elements;
    result.parameters += n;
    result.tensors_8bit += states[p].eight_bit() ? 1 : 0;
    result.state_bytes += states[p].bytes();
    result.state_bytes_32bit += optim::adamw_state_bytes(n, /*eight_bit_optimizer=*/false);
  }
  return result;
}

double gigabytes(std::int64_t bytes) {
  return static_cast<double>(bytes) / 1e9;
}

int fail(const std::string& message) {
  std::fprintf(stderr, "kbit_optimizer_memory_bench: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  kbit::Result<Arguments> arguments = parse_arguments(argc, argv);
  if (!arguments.ok()) return fail(arguments.status().message() + "\n" + kUsage);
  kbit::Result<kbit::train::OptimizerKind> optimizer =
      kbit::train::parse_optimizer(arguments->optimizer_name);
  if (!optimizer.ok()) return fail("--optim: " + optimizer.status().message());
  const bool eight_bit_optimizer = *optimizer != kbit::train::OptimizerKind::kAdamW;
  kbit::Result<kbit::model::LlamaConfig> config =
      kbit::model::load_llama_config(arguments->config_path);
  if (!config.ok()) {
    return fail(config.status().message() +
                " (pass a Llama model's config.json, e.g. bench/configs/llama-3.2-1b.json)");
  }
  std::ofstream json_file;
  if (!arguments->json_path.empty()) {
    json_file.open(arguments->json_path);
    if (!json_file) {
      return fail("--json " + arguments->json_path +
                  ": cannot open for writing; pass a path in a writable folder");
    }
  }

  const std::vector<Parameter> parameters = trainable_parameters(*config);
  const kbit::Result<Measurement> measured = measure(parameters, eight_bit_optimizer);
  if (!measured.ok()) return fail(measured.status().to_string());
  const Measurement& m = *measured;
  const double bytes_per_parameter =
      static_cast<double>(m.state_bytes) / static_cast<double>(m.parameters);
  const double counted_saving =
      1.0 - static_cast<double>(m.state_bytes) / static_cast<double>(m.state_bytes_32bit);

  std::printf("config: %s (%lld layers, hidden %lld, vocabulary %lld, %s embedding)\n",
              arguments->config_path.c_str(), static_cast<long long>(config->num_hidden_layers),
              static_cast<long long>(config->hidden_size),
              static_cast<long long>(config->vocab_size),
              config->tie_word_embeddings ? "tied" : "untied");
  std::printf(
      "full fine-tuning: %lld parameters in %zu f32 tensors (%lld with 8-bit state); one "
      "shared random gradient buffer\n",
      static_cast<long long>(m.parameters), parameters.size(),
      static_cast<long long>(m.tensors_8bit));
  std::printf("%-12s %15s %17s %12s %15s %15s %19s\n", "optimizer", "parameters", "state bytes",
              "bytes/param", "RSS growth", "peak growth", "saving vs 32-bit");
  std::printf("%-12s %15lld %17lld %12.4f %12.3f GB %12.3f GB %18.2f%%\n",
              arguments->optimizer_name.c_str(), static_cast<long long>(m.parameters),
              static_cast<long long>(m.state_bytes), bytes_per_parameter,
              gigabytes(m.rss_after - m.rss_before), gigabytes(m.peak_after - m.rss_before),
              100.0 * counted_saving);
  std::printf(
      "(state bytes and saving counted from the state tensors; growth from VmRSS before "
      "allocating the states to VmRSS / VmHWM after one step)\n");

  if (json_file.is_open()) {
    json_file << nlohmann::json{{"config", arguments->config_path},
                                {"optimizer", arguments->optimizer_name},
                                {"parameters", m.parameters},
                                {"tensors", parameters.size()},
                                {"tensors_8bit_state", m.tensors_8bit},
                                {"state_bytes", m.state_bytes},
                                {"state_bytes_32bit", m.state_bytes_32bit},
                                {"bytes_per_parameter", bytes_per_parameter},
                                {"counted_saving_vs_32bit", counted_saving},
                                {"rss_before_bytes", m.rss_before},
                                {"rss_after_bytes", m.rss_after},
                                {"peak_after_bytes", m.peak_after},
                                {"rss_growth_bytes", m.rss_after - m.rss_before},
                                {"peak_growth_bytes", m.peak_after - m.rss_before}}
                     .dump(2)
              << "\n";
  }
  return 0;
}
