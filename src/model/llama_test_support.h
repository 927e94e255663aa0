// Helpers of the model tests: golden logits, forward passes, greedy decoding, closeness.
#pragma once

#include <algorithm>
#include <cmath>
#include <iostream>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/model/llama.h"
#include "kbit/model/quantize_options.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::model {

struct Golden {
  std::vector<std::int32_t> ids;
  std::vector<float> logits;  // [ids.size(), vocab]
};

// The golden data's modes (golden/README.md): "f32" and "bf16" are the float model (nullopt);
// "nf4_dq", "nf4" and "fp4" bitsandbytes' 4-bit defaults, "int8" LLM.int8 (threshold 6.0); each
// with `compute_dtype` (the golden data use bf16).
inline std::optional<QuantizeOptions> golden_mode_options(const std::string& mode,
                                                          DType compute_dtype) {
  if (mode == "f32" || mode == "bf16") return std::nullopt;
  QuantizeOptions options;
  io::BnbQuantizationConfig& q = options.config;
  q.compute_dtype = compute_dtype;
  if (mode == "int8") {
    q.mode = io::BnbQuantMode::kInt8;
  } else {
    q.four_bit_type = mode == "fp4" ? quant::FourBitType::kFp4 : quant::FourBitType::kNf4;
    q.double_quant = mode == "nf4_dq";
  }
  return options;
}

inline std::vector<std::int32_t> to_ids(const std::vector<std::int64_t>& ids) {
  return std::vector<std::int32_t>(ids.begin(), ids.end());
}

inline Golden read_golden(const std::string& model, int prompt) {
  Result<io::SafetensorsFile> file = kbit::testing::open_golden("model-" + model + ".safetensors");
  EXPECT_TRUE(file.ok()) << file.status().to_string();
  if (!file.ok()) return {};
  // The f32 entries hold logits only; the prompt's ids are those of every mode (README.md).
  const std::string prompt_name = ".prompt" + std::to_string(prompt);
  return Golden{to_ids(kbit::testing::golden_values<std::int64_t>(
                    *file, "bf16" + prompt_name + ".input_ids")),
                kbit::testing::golden_values<float>(*file, "f32" + prompt_name + ".logits")};
}

inline LlamaModel load(const std::string& model, CpuKernel kernel = CpuKernel::kFast,
                       DType activation_dtype = DType::kF32) {
  LlamaLoadOptions options;
  options.execution.cpu_kernel = kernel;
  options.activation_dtype = activation_dtype;
  Result<LlamaModel> loaded =
      LlamaModel::load(kbit::testing::shared_file("models/" + model), options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  return std::move(loaded).value();
}

inline std::vector<float> forward_all(const LlamaModel& model,
                                      const std::vector<std::int32_t>& ids) {
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(vocab));
  KvCache cache = model.new_cache(static_cast<std::int64_t>(ids.size())).value();
  const Status status = model.forward(
      ids, cache,
      TensorView(logits.data(), DType::kF32, Shape{static_cast<std::int64_t>(ids.size()), vocab}),
      /*all_positions=*/true);
  EXPECT_TRUE(status.ok()) << status.to_string();
  EXPECT_EQ(cache.size(), static_cast<std::int64_t>(ids.size()));
  return logits;
}

inline std::vector<float> forward_one_by_one(const LlamaModel& model,
                                             const std::vector<std::int32_t>& ids) {
  const std::int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(vocab));
  KvCache cache = model.new_cache(static_cast<std::int64_t>(ids.size())).value();
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const Status status =
        model.forward(std::span<const std::int32_t>(&ids[t], 1), cache,
                      TensorView(logits.data() + t * static_cast<std::size_t>(vocab), DType::kF32,
                                 Shape{1, vocab}),
                      /*all_positions=*/false);
    EXPECT_TRUE(status.ok()) << status.to_string();
  }
  return logits;
}

// `prompt` followed by greedy tokens until the sequence holds `length` tokens, one token at a
// time through the cache.
inline std::vector<std::int32_t> greedy_sequence(const LlamaModel& model,
                                                 std::vector<std::int32_t> sequence,
                                                 std::size_t length) {
  const std::int64_t vocab = model.config().vocab_size;
  KvCache cache = model.new_cache(static_cast<std::int64_t>(length)).value();
  std::vector<float> logits(static_cast<std::size_t>(vocab));
  std::span<const std::int32_t> next(sequence);
  while (sequence.size() < length) {
    const Status status =
        model.forward(next, cache, TensorView(logits.data(), DType::kF32, Shape{1, vocab}),
                      /*all_positions=*/false);
    EXPECT_TRUE(status.ok()) << status.to_string();
    if (!status.ok()) break;
    sequence.push_back(
        static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    next = std::span<const std::int32_t>(&sequence.back(), 1);
  }
  return sequence;
}

struct Comparison {
  double max_abs_diff = 0.0;
  double max_abs_want = 0.0;
  int argmax_mismatches = 0;
};

inline Comparison compare(const std::vector<float>& got, const std::vector<float>& want,
                          std::int64_t vocab) {
  Comparison c;
  const auto v = static_cast<std::size_t>(vocab);
  for (std::size_t row = 0; row * v < want.size(); ++row) {
    const auto g = got.begin() + static_cast<std::ptrdiff_t>(row * v);
    const auto w = want.begin() + static_cast<std::ptrdiff_t>(row * v);
    if (std::max_element(g, g + vocab) - g != std::max_element(w, w + vocab) - w) {
      ++c.argmax_mismatches;
    }
  }
  for (std::size_t i = 0; i < want.size(); ++i) {
    c.max_abs_diff = std::max(c.max_abs_diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    c.max_abs_want = std::max(c.max_abs_want, std::fabs(static_cast<double>(want[i])));
  }
  return c;
}

// How close two sets of logits [rows, vocab] are: mean and max |Δ| over every logit, and the
// fraction of rows whose argmax agrees.
struct Closeness {
  double mean_abs_diff = 0.0;
  double max_abs_diff = 0.0;
  double argmax_agreement = 0.0;
};

inline Closeness closeness(const std::vector<float>& got, const std::vector<float>& want,
                           std::int64_t vocab) {
  const Comparison c = compare(got, want, vocab);
  double sum = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    sum += std::fabs(static_cast<double>(got[i]) - want[i]);
  }
  const double rows = static_cast<double>(want.size() / static_cast<std::size_t>(vocab));
  return Closeness{sum / static_cast<double>(want.size()), c.max_abs_diff,
                   1.0 - c.argmax_mismatches / rows};
}

inline double max_abs(const std::vector<float>& values) {
  double m = 0.0;
  for (const float v : values) m = std::max(m, std::fabs(static_cast<double>(v)));
  return m;
}

// The spacing of bf16 values (8 significant bits) at magnitude x > 0.
inline double bf16_ulp(double x) {
  return std::ldexp(1.0, std::ilogb(x) - 7);
}

inline std::ostream& operator<<(std::ostream& out, const Closeness& c) {
  return out << "mean |diff| " << c.mean_abs_diff << ", max |diff| " << c.max_abs_diff
             << ", argmax agreement " << c.argmax_agreement;
}

// The GPU model's logits agree with the CPU model's. With f32 activations (and f32 compute) they
// differ only in the order of f32 sums: max |Δ| <= 1e-4 · max |logit|. With bf16 activations a
// bf16 rounding that flips in one path spreads through the later layers, as between kbit and
// transformers: the bounds of the golden bf16 comparison apply (mean <= 0.015, max <= 2 bf16
// ulps, argmax >= 90%).
inline void expect_gpu_agrees_with_cpu(const std::vector<float>& gpu, const std::vector<float>& cpu,
                                       std::int64_t vocab, DType activations,
                                       const std::string& name) {
  const Closeness c = closeness(gpu, cpu, vocab);
  std::cout << "[ gpu      ] " << name << " GPU vs CPU: " << c << "\n";
  if (activations == DType::kF32) {
    EXPECT_LE(c.max_abs_diff, 1e-4 * max_abs(cpu)) << name;
    EXPECT_EQ(c.argmax_agreement, 1.0) << name;
  } else {
    EXPECT_LE(c.mean_abs_diff, 0.015) << name;
    EXPECT_LE(c.max_abs_diff, 2 * bf16_ulp(max_abs(cpu))) << name;
    EXPECT_GE(c.argmax_agreement, 0.9) << name;
  }
}

// A model with a LoRA adapter matches PEFT's logits `golden` (qlora-adapter-logits.safetensors,
// prompt `key`) within the bounds of the golden bf16 comparison, and the adapter matters: the
// same model without it (`without`) is at least 5 times further away on average.
inline void expect_close_to_peft(const std::vector<float>& ours, const std::vector<float>& without,
                                 const std::vector<float>& golden, std::int64_t vocab,
                                 const std::string& key) {
  const Closeness with_adapter = closeness(ours, golden, vocab);
  const Closeness without_adapter = closeness(without, golden, vocab);
  std::cout << "[ lora     ] " << key << " kbit + adapter vs PEFT: " << with_adapter
            << " | without the adapter: " << without_adapter << "\n";
  EXPECT_LE(with_adapter.mean_abs_diff, 0.015) << key;
  EXPECT_LE(with_adapter.max_abs_diff, 2 * bf16_ulp(max_abs(golden))) << key;
  EXPECT_GE(with_adapter.argmax_agreement, 0.9) << key;
  EXPECT_GT(without_adapter.mean_abs_diff, 5 * with_adapter.mean_abs_diff) << key;
}

}  // namespace kbit::model
