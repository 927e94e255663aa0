#include "model/lora.h"

#include <set>

#include "kernels/cpu/llama_ops.h"

namespace kbit::model {

namespace k = kbit::kernels::cpu;

Result<std::vector<io::PeftAdapter>> open_adapters(const std::vector<std::filesystem::path>& dirs) {
  std::vector<io::PeftAdapter> adapters;
  for (const std::filesystem::path& dir : dirs) {
    KBIT_ASSIGN_OR_RETURN(io::PeftAdapter adapter, io::PeftAdapter::open(dir));
    adapters.push_back(std::move(adapter));
  }
  return adapters;
}

Result<std::vector<LoraTerm>> lora_terms(std::span<const io::PeftAdapter> adapters,
                                         const LinearModule& module) {
  std::vector<LoraTerm> terms;
  for (const io::PeftAdapter& adapter : adapters) {
    KBIT_ASSIGN_OR_RETURN(const bool targeted, adapter.config().targets(module.name));
    if (!targeted) continue;
    KBIT_ASSIGN_OR_RETURN(io::LoraWeights weights,
                          adapter.weights(module.name, module.out_features, module.in_features));
    terms.push_back({weights.a, weights.b, static_cast<float>(adapter.config().scaling())});
  }
  return terms;
}

Status check_adapters_fit(std::span<const io::PeftAdapter> adapters,
                          const std::vector<LinearModule>& modules) {
  std::set<std::string> names;
  for (const LinearModule& module : modules) names.insert(module.name);
  for (const io::PeftAdapter& adapter : adapters) {
    for (const std::string& module : adapter.modules()) {
      if (names.count(module) == 0) {
        return invalid_argument(adapter.dir().string() + ": the adapter has LoRA weights for '" +
                                module +
                                "', which is not a Linear layer of this model; the adapter was "
                                "made for another base model");
      }
    }
  }
  return ok_status();
}

void add_lora_terms(std::span<const LoraTerm> terms, const float* x, std::int64_t rows,
                    bool round_bf16, bool quantized_base, float* y,
                    const ExecutionOptions& execution) {
  if (terms.empty()) return;
  const std::int64_t out = terms.front().b.shape()[0];
  const auto count = static_cast<std::size_t>(rows * out);
  std::vector<float> hidden, delta(count), dropped;
  for (const LoraTerm& term : terms) {
    const std::int64_t rank = term.a.shape()[0];
    const std::int64_t in = term.a.shape()[1];
    hidden.resize(static_cast<std::size_t>(rows * rank));
    const float* input = x;
    if (term.keep != nullptr) {
      dropped.resize(static_cast<std::size_t>(rows * in));
      for (std::size_t i = 0; i < dropped.size(); ++i) dropped[i] = term.keep[i] * x[i];
      input = dropped.data();
    }
    // f32 matmuls on the activation's values (lora_A then lora_B in the adapter's f32).
    k::linear_op({input, term.a.data(), term.a.dtype(), nullptr, rows, in, rank, hidden.data()},
                 execution);
    k::linear_op(
        {hidden.data(), term.b.data(), term.b.dtype(), nullptr, rows, rank, out, delta.data()},
        execution);
    for (std::size_t i = 0; i < count; ++i) {
      const float value = delta[i] * term.scaling;
      if (round_bf16 && quantized_base) {
        y[i] = k::round_to_bf16(y[i] + k::round_to_bf16(value));
      } else {
        y[i] += value;
      }
    }
  }
  if (round_bf16 && !quantized_base) k::round_to_bf16(y, static_cast<std::int64_t>(count));
}

}  // namespace kbit::model
