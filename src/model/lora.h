// LoRA adapters on the CPU model's Linear layers (spec 9.5): each adapted Linear computes
//   y = base(x) + scaling · (x · Aᵀ) · Bᵀ        A [r, in], B [out, r]
// with one term per adapter, summed as PEFT sums its active adapters.
//
// Numerics, as PEFT's forward when not under autocast: x is cast to the LoRA weights' dtype, which
// is f32 (PEFT up-casts f16/bf16 adapters to f32 on load, autocast_adapter_dtype=True, and saves
// them in f32), so both matmuls and the scaling run in f32 on the activation's values. The term is
// then added to the base output in the activation dtype:
//   - a quantized base (bitsandbytes' Linear4bit / Linear8bitLt in peft/tuners/lora/bnb.py): the
//     term is cast to the output dtype first (bf16), then added (a bf16 add: rounded again);
//   - a float base (peft/tuners/lora/layer.py Linear): bf16 + f32 promotes to f32 and the sum is
//     cast back once.
// With f32 activations nothing is rounded. Adapters stored in f16/bf16 are widened to f32 the same
// way (their values are exact in f32).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/io/peft_adapter.h"
#include "kbit/model/llama_config.h"

namespace kbit::model {

// One adapter's LoRA on one Linear: views into the adapter's mapped file.
struct LoraTerm {
  TensorView a;  // [r, in], f32, f16 or bf16
  TensorView b;  // [out, r]
  float scaling = 1.0f;
  // Training only: the factors of PEFT's dropout on the term's input x [rows, in] (0 for a
  // dropped element, 1 / (1 − p) for a kept one), applied as keep ⊙ x; nullptr: none (inference).
  const float* keep = nullptr;
};

// Opens every adapter folder (see kbit/io/peft_adapter.h).
Result<std::vector<io::PeftAdapter>> open_adapters(const std::vector<std::filesystem::path>& dirs);

// The terms of Linear `module` [out, in]: one per adapter whose config targets it, checked for
// shape (the error names the adapter's and the model's shapes).
Result<std::vector<LoraTerm>> lora_terms(std::span<const io::PeftAdapter> adapters,
                                         const LinearModule& module);

// kInvalidArgument if an adapter has weights for a module that is not among `modules` (the
// model's Linear layers), naming it: such an adapter was made for another architecture.
Status check_adapters_fit(std::span<const io::PeftAdapter> adapters,
                          const std::vector<LinearModule>& modules);

// y [rows, out] = base(x) holds the base Linear's output (in the activation dtype); adds each
// term's scaling · (x · Aᵀ) · Bᵀ with the numerics above: round_bf16 for bf16 activations,
// quantized_base for a bitsandbytes base layer. x [rows, in].
void add_lora_terms(std::span<const LoraTerm> terms, const float* x, std::int64_t rows,
                    bool round_bf16, bool quantized_base, float* y,
                    const ExecutionOptions& execution);

}  // namespace kbit::model
