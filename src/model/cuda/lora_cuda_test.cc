// LoRA adapters on the GPU model: the golden QLoRA adapter (r 8, α 16 on every Linear of the
// decoder layers, golden/README.md) on shakespeare-llama3 quantized on load in nf4_dq, against
// PEFT's logits with the CPU model's bounds (model/lora_test.cc); the CPU and GPU models with
// adapters against each other, two adapters summed included; the captured one-token step against
// the prompt path. Label `cuda`: each test skips visibly without a GPU.
#include <gtest/gtest.h>

#include <iostream>

#include "kbit/model/llama.h"
#include "model/llama_test_support.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::model {
namespace {

const char* kAdapter = "golden/checkpoints/shakespeare-llama3-qlora-adapter";

// shakespeare-llama3 in nf4_dq with `dtype` activations and compute, and `adapters` (each a
// copy of the golden adapter).
LlamaModel load_nf4_dq(Device device, DType dtype, int adapters) {
  LlamaLoadOptions options;
  options.device = device;
  options.activation_dtype = dtype;
  options.quantize = golden_mode_options("nf4_dq", dtype);
  for (int i = 0; i < adapters; ++i) {
    options.adapters.push_back(kbit::testing::shared_file(kAdapter));
  }
  Result<LlamaModel> loaded =
      LlamaModel::load(kbit::testing::shared_file("models/shakespeare-llama3"), options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  return std::move(loaded).value();
}

std::vector<std::int32_t> golden_ids(int prompt) {
  const io::SafetensorsFile file =
      kbit::testing::open_golden("qlora-adapter-logits.safetensors").value();
  return to_ids(kbit::testing::golden_values<std::int64_t>(
      file, "prompt" + std::to_string(prompt) + ".input_ids"));
}

// The CPU model's bounds against PEFT (model/lora_test.cc): mean |Δ| <= 0.015, max <= 2 bf16
// ulps, argmax >= 90%, and much closer than the base without the adapter.
TEST(GpuLora, QloraAdapterMatchesPeft) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel adapted = load_nf4_dq(Device::cuda(0), DType::kBF16, 1);
  const LlamaModel base = load_nf4_dq(Device::cuda(0), DType::kBF16, 0);
  const io::SafetensorsFile file =
      kbit::testing::open_golden("qlora-adapter-logits.safetensors").value();
  const std::int64_t vocab = adapted.config().vocab_size;
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string key = "prompt" + std::to_string(prompt);
    const std::vector<std::int32_t> ids = golden_ids(prompt);
    const std::vector<float> golden = kbit::testing::golden_values<float>(file, key + ".logits");
    ASSERT_EQ(golden.size(), ids.size() * static_cast<std::size_t>(vocab));
    expect_close_to_peft(forward_all(adapted, ids), forward_all(base, ids), golden, vocab, key);
  }
}

// The CPU and GPU models with one adapter and with two (their terms summed), in f32 and bf16
// (expect_gpu_agrees_with_cpu's bounds).
TEST(GpuLora, CpuAndGpuAgree) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  const std::vector<std::int32_t> ids = golden_ids(0);
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const int adapters : {1, 2}) {
      const std::string name =
          "lora " + std::string(dtype_name(dtype)) + ", adapters " + std::to_string(adapters);
      const LlamaModel cpu = load_nf4_dq(Device::cpu(), dtype, adapters);
      const LlamaModel gpu = load_nf4_dq(Device::cuda(0), dtype, adapters);
      expect_gpu_agrees_with_cpu(forward_all(gpu, ids), forward_all(cpu, ids),
                                 cpu.config().vocab_size, dtype, name);
    }
  }
}

// The captured one-token step (GEMV kernels, the terms' GEMMs in the graph) gives the prompt
// path's logits, in f32 where the bound is tight.
TEST(GpuLora, DecodeMatchesPrompt) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  const LlamaModel adapted = load_nf4_dq(Device::cuda(0), DType::kF32, 1);
  const std::vector<std::int32_t> ids = golden_ids(1);
  const std::vector<float> whole = forward_all(adapted, ids);
  const Closeness c =
      closeness(forward_one_by_one(adapted, ids), whole, adapted.config().vocab_size);
  EXPECT_LE(c.max_abs_diff, 1e-4 * max_abs(whole));
}

TEST(GpuLora, RandomWeightsTakeNoAdapter) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  LlamaLoadOptions options;
  options.device = Device::cuda(0);
  options.adapters = {kbit::testing::shared_file(kAdapter)};
  const Status status =
      LlamaModel::random(kbit::testing::shared_file("models/shakespeare-llama3") / "config.json",
                         options, 1)
          .status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
}

}  // namespace
}  // namespace kbit::model
