// merge_adapters: the golden QLoRA adapter (r 8, α 16 on every Linear of shakespeare-llama3's
// decoder layers) merged into the bf16 model. Measured: the merged model's f32 logits lie within
// 4.7e-4 of the largest logit from the base with the adapter applied (the merged weights rounded
// to bf16 is the difference), the base's alone 9.1e-2 away.
#include "kbit/model/merge_adapters.h"

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

#include "kbit/io/checkpoint.h"
#include "kbit/io/peft_adapter.h"
#include "kbit/model/llama.h"
#include "model/llama_test_support.h"
#include "testing/shared_data.h"
#include "testing/temp_dir.h"

namespace kbit::model {
namespace {

namespace fs = std::filesystem;

const char* kAdapter = "golden/checkpoints/shakespeare-llama3-qlora-adapter";
const char* kBase = "models/shakespeare-llama3";

std::vector<float> logits_of(const fs::path& dir, std::vector<fs::path> adapters) {
  LlamaLoadOptions options;
  options.adapters = std::move(adapters);
  const LlamaModel model = LlamaModel::load(dir, options).value();
  return forward_all(model, {0, 17, 300, 1234, 99, 4000, 5});
}

double largest_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double largest = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    largest = std::max(largest, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return largest / scale;
}

class MergeAdaptersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KBIT_REQUIRE_SHARED_DIR();
    base_ = kbit::testing::shared_file(kBase);
    adapter_ = kbit::testing::shared_file(kAdapter);
  }
  fs::path base_, adapter_;
  kbit::testing::TempDir dir_;
};

TEST_F(MergeAdaptersTest, MergedModelComputesWhatTheAdapterDoes) {
  const fs::path merged = dir_ / "merged";
  const Status status = merge_adapters(base_, {adapter_}, merged);
  ASSERT_TRUE(status.ok()) << status.to_string();
  const std::vector<float> with_adapter = logits_of(base_, {adapter_});
  const double merged_error = largest_difference(logits_of(merged, {}), with_adapter);
  const double base_error = largest_difference(logits_of(base_, {}), with_adapter);
  EXPECT_LT(merged_error, 2e-3);
  EXPECT_GT(base_error, 20 * merged_error);
  EXPECT_TRUE(fs::exists(merged / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(merged / "config.json"));
}

// One merged weight against bf16(W + 2 · B · A) computed here in double: at most one bf16 step
// apart (the f32 sum's order), and the tensors no adapter touches unchanged, byte for byte.
TEST_F(MergeAdaptersTest, WeightsAreTheBasePlusTheDelta) {
  const fs::path merged = dir_ / "merged";
  ASSERT_TRUE(merge_adapters(base_, {adapter_}, merged).ok());
  const io::Checkpoint before = io::Checkpoint::open(base_).value();
  const io::Checkpoint after = io::Checkpoint::open(merged).value();
  const io::PeftAdapter adapter = io::PeftAdapter::open(adapter_).value();
  const std::string module = "model.layers.2.mlp.down_proj";
  const TensorView w = before.tensor(module + ".weight").value();
  const TensorView m = after.tensor(module + ".weight").value();
  const io::LoraWeights lora = adapter.weights(module, w.shape()[0], w.shape()[1]).value();
  ASSERT_EQ(m.dtype(), DType::kBF16);
  const std::int64_t out = w.shape()[0], in = w.shape()[1], rank = lora.a.shape()[0];
  int steps_apart = 0;
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t i = 0; i < in; ++i) {
      double delta = 0;
      for (std::int64_t r = 0; r < rank; ++r) {
        delta += static_cast<double>(lora.b.data_as<const float>()[o * rank + r]) *
                 lora.a.data_as<const float>()[r * in + i];
      }
      const float original = bf16_to_f32(w.data_as<const bf16>()[o * in + i]);
      const float want = bf16_to_f32(f32_to_bf16(static_cast<float>(original + 2.0 * delta)));
      const float got = bf16_to_f32(m.data_as<const bf16>()[o * in + i]);
      if (got != want) {
        ++steps_apart;
        EXPECT_LE(std::fabs(got - want), std::ldexp(std::fabs(want), -7)) << o << ", " << i;
      }
    }
  }
  EXPECT_LT(steps_apart, out * in / 1000);
  const TensorView embed_before = before.tensor("model.embed_tokens.weight").value();
  const TensorView embed_after = after.tensor("model.embed_tokens.weight").value();
  EXPECT_EQ(std::memcmp(embed_before.data(), embed_after.data(), embed_before.nbytes()), 0);
}

TEST_F(MergeAdaptersTest, RefusesWhatItCannotMerge) {
  const fs::path merged = dir_ / "merged";
  fs::create_directories(merged);
  EXPECT_EQ(merge_adapters(base_, {adapter_}, merged).code(), StatusCode::kInvalidArgument);
  fs::remove(merged);
  EXPECT_EQ(merge_adapters(base_, {}, merged).code(), StatusCode::kInvalidArgument);
  // An adapter made for another model: named, and nothing written.
  const fs::path other = kbit::testing::shared_file("models/shakespeare-llama2");
  Status status = merge_adapters(other, {adapter_}, merged);
  EXPECT_NE(status.message().find(adapter_.string()), std::string::npos) << status.to_string();
  // A bitsandbytes checkpoint: merge into the float model instead.
  status =
      merge_adapters(kbit::testing::shared_file("golden/checkpoints/shakespeare-llama2-bnb-nf4"),
                     {adapter_}, merged);
  EXPECT_NE(status.message().find("quantization_config"), std::string::npos) << status.to_string();
  EXPECT_FALSE(fs::exists(merged));
  for (const auto& entry : fs::directory_iterator(dir_.path())) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

}  // namespace
}  // namespace kbit::model
