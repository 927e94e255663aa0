#include "kbit/generate/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include <gtest/gtest.h>

namespace kbit::generate {
namespace {

// Logits whose softmax is exactly `probabilities`.
std::vector<float> logits_of(const std::vector<double>& probabilities) {
  std::vector<float> logits;
  for (double p : probabilities) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

// How often each token is drawn in `draws` samples.
std::map<std::int32_t, int> histogram(const SamplingParams& params,
                                      const std::vector<float>& logits, int draws) {
  Sampler sampler(params);
  std::map<std::int32_t, int> counts;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> scores = logits;
    counts[sampler.sample(scores, {})]++;
  }
  return counts;
}

TEST(SamplerTest, ArgmaxTakesTheFirstOfTies) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, -2.0f};
  EXPECT_EQ(argmax(logits), 1);
}

TEST(SamplerTest, GreedyIsArgmaxAfterRepetitionPenalty) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.repetition_penalty = 2.0f;
  Sampler sampler(params);
  std::vector<float> logits = {2.0f, -2.0f, 1.5f};
  const std::vector<std::int32_t> history = {0, 1, 0};
  EXPECT_EQ(sampler.sample(logits, history), 2);
  // Seen tokens: positive scores halved, negative doubled, each once.
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -4.0f, 1.5f}));
}

TEST(SamplerTest, TopKKeepsTiesWithTheKthScore) {
  SamplingParams params;
  params.top_k = 2;
  const auto counts = histogram(params, {0.0f, 5.0f, 4.0f, 4.0f, -1.0f}, 3000);
  EXPECT_EQ(counts.count(0), 0u);
  EXPECT_EQ(counts.count(4), 0u);
  EXPECT_GT(counts.at(2), 0);
  EXPECT_GT(counts.at(3), 0);  // tied with the 2nd largest: kept, as transformers does
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  // Ascending cumulative: 0.05, 0.20, 0.50, 1.0; with top_p 0.75 everything up to 1 - 0.75 =
  // 0.25 is removed, leaving the tokens of probability 0.5 and 0.3.
  SamplingParams params;
  params.top_p = 0.75f;
  const auto counts = histogram(params, logits_of({0.5, 0.3, 0.15, 0.05}), 20000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts.at(0) / 20000.0, 0.625, 0.015);
  EXPECT_NEAR(counts.at(1) / 20000.0, 0.375, 0.015);
}

TEST(SamplerTest, MinPKeepsTokensAboveAFractionOfTheLargest) {
  SamplingParams params;
  params.min_p = 0.5f;  // threshold 0.25
  const auto counts = histogram(params, logits_of({0.5, 0.3, 0.15, 0.05}), 5000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts.count(2), 0u);
}

TEST(SamplerTest, TemperatureDrawsFromTheScaledSoftmax) {
  SamplingParams params;
  params.temperature = 0.5f;  // squares the probabilities before renormalising
  const auto counts = histogram(params, logits_of({0.6, 0.3, 0.1}), 40000);
  const double total = 0.36 + 0.09 + 0.01;
  EXPECT_NEAR(counts.at(0) / 40000.0, 0.36 / total, 0.01);
  EXPECT_NEAR(counts.at(1) / 40000.0, 0.09 / total, 0.01);
  EXPECT_NEAR(counts.at(2) / 40000.0, 0.01 / total, 0.005);
}

TEST(SamplerTest, ASeedReproducesADraw) {
  SamplingParams params;
  params.seed = 1234;
  const std::vector<float> logits = logits_of({0.2, 0.2, 0.2, 0.2, 0.2});
  std::vector<std::int32_t> first, second, other;
  for (std::uint64_t seed : {1234u, 1234u, 99u}) {
    params.seed = seed;
    Sampler sampler(params);
    auto& out = seed == 99u ? other : (first.empty() ? first : second);
    for (int i = 0; i < 50; ++i) {
      std::vector<float> scores = logits;
      out.push_back(sampler.sample(scores, {}));
    }
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, other);
}

TEST(SamplerTest, ValidationNamesTheFlag) {
  SamplingParams params;
  params.top_p = 0.0f;
  EXPECT_NE(params.validate().message().find("--top-p"), std::string::npos);
  params = {};
  params.temperature = -1.0f;
  EXPECT_NE(params.validate().message().find("--temperature"), std::string::npos);
  params = {};
  params.repetition_penalty = 0.0f;
  EXPECT_FALSE(params.validate().ok());
  params = {};
  params.top_k = -3;
  EXPECT_FALSE(params.validate().ok());
  EXPECT_TRUE(SamplingParams{}.validate().ok());
}

}  // namespace
}  // namespace kbit::generate
