// The trainable state of LoRA fine-tuning: for each Linear of a Llama model that a PEFT
// LoraConfig targets (spec 9.3), lora_A [r, in] and lora_B [out, r] in f32 — the dtype PEFT
// trains adapters in on any base, float or quantized (spec 9.4) — and their gradients.
//
// A fresh state is initialised as PEFT's default init_lora_weights=True (spec 9.5):
//   A ~ kaiming_uniform_(a = sqrt(5)) on [r, in], i.e. U(−1/√in, 1/√in);  B = 0
// so a fresh adapter changes nothing. The samples come from kbit's counter-based normal stream
// (kbit/core/random.h) mapped through the normal CDF: uniform, reproducible from the seed, the
// same for any thread count — the distribution of torch's, not its bits.
//
// A value type; not safe to modify concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/io/peft_adapter.h"
#include "kbit/model/llama_config.h"

namespace kbit::train {

// The LoRA of one Linear. Callers may change the values (an optimizer step, weights read from an
// adapter) but not the sizes.
struct LoraModule {
  std::string
      name;  // the Linear's module name in the base model, e.g. "model.layers.0.mlp.up_proj"
  std::int64_t rank = 0;
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;
  std::vector<float> a;       // lora_A [rank, in_features]
  std::vector<float> b;       // lora_B [out_features, rank]
  std::vector<float> grad_a;  // dLoss/dA [rank, in_features]
  std::vector<float> grad_b;  // dLoss/dB [out_features, rank]
};

class LoraState {
 public:
  // One module per Linear of model::linear_modules(model) that config.targets(), in that order
  // (layer by layer: q, k, v, o, gate, up, down), initialised as above from `seed`, gradients 0.
  // kInvalidArgument if config.r < 1 or it targets no Linear of the model (or a regex fails);
  // kUnimplemented if it targets lm_head (LoRA on the output layer is not trained yet).
  static Result<LoraState> create(const model::LlamaConfig& model, const io::PeftLoraConfig& config,
                                  std::uint64_t seed);

  const io::PeftLoraConfig& config() const { return config_; }
  // The factor of every LoRA term: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
  float scaling() const { return static_cast<float>(config_.scaling()); }

  std::span<LoraModule> modules() { return modules_; }
  std::span<const LoraModule> modules() const { return modules_; }
  // The module named `name`, or nullptr if the config does not target that Linear.
  LoraModule* find(std::string_view name);
  const LoraModule* find(std::string_view name) const;

  // Sets every gradient to 0 (before accumulating those of a new step).
  void zero_gradients();

  // Writes the adapter folder `dir` as PEFT saves it (kbit/io/peft_adapter_writer.h): the config
  // and every module's A and B, which PEFT and LlamaLoadOptions::adapters load.
  Status save(const std::filesystem::path& dir) const;

 private:
  io::PeftLoraConfig config_;
  std::vector<LoraModule> modules_;
};

}  // namespace kbit::train
