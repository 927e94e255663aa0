#include "kbit/train/lora_state.h"

#include <algorithm>
#include <cmath>

#include "kbit/core/random.h"
#include "kbit/io/peft_adapter_writer.h"

namespace kbit::train {
namespace {

// PEFT's reset_lora_parameters: nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5)). Its bound is
// gain · sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a²)) = sqrt(1/3): 1 / sqrt(in_features).
double kaiming_uniform_bound(std::int64_t in_features) {
  return 1.0 / std::sqrt(static_cast<double>(in_features));
}

// U(−bound, bound) samples number [first, first + count) of stream `seed`: the standard normal
// samples mapped through the normal CDF Φ, which makes them uniform on (0, 1).
void fill_uniform(std::vector<float>& values, double bound, std::uint64_t seed,
                  std::uint64_t first) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double normal = normal_sample(seed, first + i);
    const double uniform = 0.5 * std::erfc(-normal / std::sqrt(2.0));
    values[i] = static_cast<float>(bound * (2.0 * uniform - 1.0));
  }
}

// The element of `modules` (const or not) named `name`, or nullptr.
template <typename Modules>
auto* find_module(Modules& modules, std::string_view name) {
  const auto found = std::find_if(modules.begin(), modules.end(),
                                  [&](const LoraModule& module) { return module.name == name; });
  return found == modules.end() ? nullptr : &*found;
}

}  // namespace

Result<LoraState> LoraState::create(const model::LlamaConfig& model,
                                    const io::PeftLoraConfig& config, std::uint64_t seed) {
  if (config.r < 1) {
    return invalid_argument("LoRA rank r must be at least 1, got " + std::to_string(config.r));
  }
  LoraState state;
  state.config_ = config;
  std::uint64_t samples = 0;  // drawn so far: each module takes the next part of the stream
  for (const model::LinearModule& linear : model::linear_modules(model)) {
    KBIT_ASSIGN_OR_RETURN(const bool targeted, config.targets(linear.name));
    if (!targeted) continue;
    if (linear.name == "lm_head") {
      return unimplemented(
          "the LoRA config targets lm_head; LoRA on the output layer is not trained yet (target "
          "the decoder layers' Linears, e.g. \"all-linear\")");
    }
    const std::size_t a_size = static_cast<std::size_t>(config.r * linear.in_features);
    const std::size_t b_size = static_cast<std::size_t>(linear.out_features * config.r);
    LoraModule module{linear.name,
                      config.r,
                      linear.in_features,
                      linear.out_features,
                      std::vector<float>(a_size),
                      std::vector<float>(b_size, 0.0f),
                      std::vector<float>(a_size, 0.0f),
                      std::vector<float>(b_size, 0.0f)};
    fill_uniform(module.a, kaiming_uniform_bound(linear.in_features), seed, samples);
    samples += module.a.size();
    state.modules_.push_back(std::move(module));
  }
  if (state.modules_.empty()) {
    return invalid_argument(
        "the LoRA config targets none of the model's Linear layers; name some in "
        "target_modules (e.g. [\"q_proj\", \"v_proj\"] or \"all-linear\")");
  }
  return state;
}

LoraModule* LoraState::find(std::string_view name) {
  return find_module(modules_, name);
}

const LoraModule* LoraState::find(std::string_view name) const {
  return find_module(modules_, name);
}

Status LoraState::save(const std::filesystem::path& dir) const {
  std::vector<io::LoraWeightsToSave> weights;
  for (const LoraModule& module : modules_) {
    // The writer reads the values only; views of the vectors serve it.
    auto* a = const_cast<float*>(module.a.data());
    auto* b = const_cast<float*>(module.b.data());
    weights.push_back({module.name, TensorView(a, DType::kF32, {module.rank, module.in_features}),
                       TensorView(b, DType::kF32, {module.out_features, module.rank})});
  }
  return io::write_peft_adapter(dir, config_, weights);
}

void LoraState::zero_gradients() {
  for (LoraModule& module : modules_) {
    std::fill(module.grad_a.begin(), module.grad_a.end(), 0.0f);
    std::fill(module.grad_b.begin(), module.grad_b.end(), 0.0f);
  }
}

}  // namespace kbit::train
