#include "kbit/io/peft_adapter_writer.h"

#include <cstdint>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "kbit/core/random.h"
#include "testing/shared_data.h"
#include "testing/temp_dir.h"

namespace kbit::io {
namespace {

using kbit::testing::TempDir;

constexpr const char* kGoldenAdapter = "golden/checkpoints/shakespeare-llama3-qlora-adapter";

std::string file_text(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

Tensor random_f32(Shape shape, std::uint64_t seed) {
  Tensor tensor = Tensor::empty(shape, DType::kF32).value();
  float* data = tensor.data_as<float>();
  for (std::int64_t i = 0; i < tensor.numel(); ++i) {
    data[i] = static_cast<float>(0.05 * normal_sample(seed, static_cast<std::uint64_t>(i)));
  }
  return tensor;
}

PeftLoraConfig q_v_config() {
  PeftLoraConfig config;
  config.r = 4;
  config.lora_alpha = 8;
  config.lora_dropout = 0.05;
  config.target_names = {"q_proj", "v_proj"};
  return config;
}

// The config PEFT 0.21 wrote, parsed and written again: the same bytes.
TEST(PeftAdapterWriter, ConfigIsThePeftFileByteForByte) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path path = kbit::testing::shared_file(kGoldenAdapter) / kPeftConfigFile;
  Result<PeftLoraConfig> config = read_peft_lora_config(path);
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  EXPECT_EQ(peft_lora_config_json(*config, {}), file_text(path));
}

// The adapter PEFT wrote, read and written again: the same weights file, byte for byte.
TEST(PeftAdapterWriter, WeightsAreThePeftFileByteForByte) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::filesystem::path golden = kbit::testing::shared_file(kGoldenAdapter);
  Result<PeftAdapter> adapter = PeftAdapter::open(golden);
  ASSERT_TRUE(adapter.ok()) << adapter.status().to_string();
  std::vector<LoraWeightsToSave> weights;
  for (const std::string& module : adapter->modules()) {
    // The shapes as stored: the reader checks them against these.
    const bool mlp_down = module.ends_with("down_proj");
    const bool kv = module.ends_with("k_proj") || module.ends_with("v_proj");
    const bool mlp_in = module.ends_with("gate_proj") || module.ends_with("up_proj");
    const std::int64_t out = mlp_in ? 1024 : kv ? 128 : 384;
    const std::int64_t in = mlp_down ? 1024 : 384;
    Result<LoraWeights> w = adapter->weights(module, out, in);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    weights.push_back({module, w->a, w->b});
  }
  const TempDir dir;
  ASSERT_TRUE(write_peft_adapter(dir.path(), adapter->config(), weights).ok());
  EXPECT_EQ(file_text(dir / kPeftWeightsFile), file_text(golden / kPeftWeightsFile));
  EXPECT_EQ(file_text(dir / kPeftConfigFile), file_text(golden / kPeftConfigFile));
}

TEST(PeftAdapterWriter, WhatItWritesReadsBack) {
  const PeftLoraConfig config = q_v_config();
  const Tensor a0 = random_f32({4, 32}, 1);
  const Tensor b0 = random_f32({48, 4}, 2);
  const Tensor a1 = random_f32({4, 32}, 3);
  const Tensor b1 = random_f32({16, 4}, 4);
  const TempDir dir;
  const std::filesystem::path folder = dir / "adapter";  // made by the writer
  ASSERT_TRUE(write_peft_adapter(folder, config,
                                 {{"model.layers.1.self_attn.v_proj", a1.view(), b1.view()},
                                  {"model.layers.0.self_attn.q_proj", a0.view(), b0.view()}})
                  .ok());
  Result<PeftAdapter> adapter = PeftAdapter::open(folder);
  ASSERT_TRUE(adapter.ok()) << adapter.status().to_string();
  EXPECT_EQ(adapter->config().r, 4);
  EXPECT_EQ(adapter->config().lora_alpha, 8);
  EXPECT_EQ(adapter->config().lora_dropout, 0.05);
  EXPECT_EQ(adapter->config().target_names, config.target_names);
  EXPECT_EQ(adapter->modules(), (std::vector<std::string>{"model.layers.0.self_attn.q_proj",
                                                          "model.layers.1.self_attn.v_proj"}));
  Result<LoraWeights> w = adapter->weights("model.layers.1.self_attn.v_proj", 16, 32);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  for (std::int64_t i = 0; i < a1.numel(); ++i) {
    ASSERT_EQ(w->a.data_as<const float>()[i], a1.data_as<const float>()[i]);
  }
  for (std::int64_t i = 0; i < b1.numel(); ++i) {
    ASSERT_EQ(w->b.data_as<const float>()[i], b1.data_as<const float>()[i]);
  }
  // all-linear is saved as the full names of the modules it expanded to, as PEFT >= 0.15 does.
  PeftLoraConfig all = config;
  all.target_names.clear();
  all.all_linear = true;
  EXPECT_NE(peft_lora_config_json(all, {"model.layers.0.self_attn.q_proj"})
                .find("\"target_modules\": [\n    \"model.layers.0.self_attn.q_proj\"\n  ]"),
            std::string::npos);
}

TEST(PeftAdapterWriter, RefusesWeightsThatDoNotFitAndWritesNothing) {
  const PeftLoraConfig config = q_v_config();
  const Tensor a = random_f32({4, 32}, 1);
  const Tensor b = random_f32({48, 4}, 2);
  const Tensor wrong_rank = random_f32({8, 32}, 3);
  const TempDir dir;
  const std::filesystem::path folder = dir / "adapter";
  const auto write = [&](std::vector<LoraWeightsToSave> weights) {
    return write_peft_adapter(folder, config, weights);
  };
  const std::string q = "model.layers.0.self_attn.q_proj";
  Status status = write({{q, wrong_rank.view(), b.view()}});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find(q), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("[8, 32]"), std::string::npos) << status.message();
  status = write({{"model.layers.0.mlp.up_proj", a.view(), b.view()}});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("target_modules"), std::string::npos) << status.message();
  EXPECT_EQ(write({{q, a.view(), b.view()}, {q, a.view(), b.view()}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(write({}).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(folder));
}

}  // namespace
}  // namespace kbit::io
