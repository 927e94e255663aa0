// GPU token sampling (kernels/cuda/sampling_launchers.h) against the CPU Sampler
// (kbit/generate/sampler.h), the definition it follows, on fresh random logits:
//   - the processed logits equal the CPU's bit for bit: the GPU does the same float operations on
//     each element (the penalty's multiply or divide, the division by the temperature) and writes
//     -inf wherever the CPU removes a token;
//   - the token equals the CPU's, given the uniform number behind the CPU Sampler's draw.
// Tolerance: none. The choices rest on double sums that the GPU adds in another order, with an
// exp that may differ in the last bit, so the two sums differ by about 1e-13 relative at most
// here (sequential sums of at most 2.5M terms). A choice can differ only when a threshold (top-p's
// 1 - p, the draw's uniform · total) falls that close to a cumulative sum; for these random
// logits that chance is far below one in a million per case, so every case must agree.
//
// Logits are normal(0, σ) for σ in {1, 3, 8}; half the cases round them to multiples of 0.25, for
// ties (at top-k's k-th score, across top-p's cut, at the argmax) and for -0 beside +0. The token
// and the workspace are poisoned (0xAB bytes) before each run, so that a token left unwritten or
// scratch read before it is written shows up as a difference.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit/core/random.h"
#include "kbit/generate/sampler.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/sampling_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels::cuda {
namespace {

using generate::Sampler;
using generate::SamplingParams;

void check(cudaError_t error) {
  if (error != cudaSuccess) throw std::runtime_error(cudaGetErrorString(error));
}

// An array in device memory, copied in and out whole.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t count) : count_(count) {
    void* data = nullptr;
    check(cudaMalloc(&data, std::max<std::size_t>(count, 1) * sizeof(T)));
    data_ = static_cast<T*>(data);
  }
  explicit DeviceArray(const std::vector<T>& values) : DeviceArray(values.size()) {
    check(cudaMemcpy(data_, values.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* data() const { return data_; }
  void fill_bytes(int byte) const { check(cudaMemset(data_, byte, count_ * sizeof(T))); }
  std::vector<T> to_host() const {
    std::vector<T> values(count_);
    check(cudaMemcpy(values.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return values;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_;
};

// The uniform number behind the CPU Sampler's draw for `seed` (its first one): libstdc++'s
// uniform_real_distribution<double>(0, total) returns generate_canonical<double, 53>() · total;
// SamplerUniform.IsTheSamplersDraw checks this.
double sampler_uniform(std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(engine);
}

struct Logits {
  float sigma = 1.0f;
  bool quantised = false;     // rounded to multiples of 0.25: ties, and -0 beside +0
  double masked_share = 0.0;  // the share of ids set to -inf beforehand
  bool all_equal = false;     // every logit 1.5
};

std::vector<float> random_logits(std::int64_t vocab, const Logits& shape, std::uint64_t seed) {
  std::vector<float> logits(static_cast<std::size_t>(vocab));
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<double> share(0.0, 1.0);
  for (std::size_t i = 0; i < logits.size(); ++i) {
    float value = static_cast<float>(shape.sigma * normal_sample(seed, i));
    if (shape.quantised) value = std::round(value * 4.0f) / 4.0f;
    if (shape.all_equal) value = 1.5f;
    if (share(engine) < shape.masked_share) value = -std::numeric_limits<float>::infinity();
    logits[i] = value;
  }
  return logits;
}

// Tokens of a generation so far, with repeats; 1.5 times as many as the vocabulary at most.
std::vector<std::int32_t> random_history(std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 engine(seed ^ 0x5eedull);
  std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> history(
      static_cast<std::size_t>(std::min<std::int64_t>(200, vocab + vocab / 2)));
  for (std::int32_t& token : history) token = id(engine);
  return history;
}

DeviceSamplingParams device_params(const SamplingParams& params) {
  return {params.temperature, params.top_k, params.top_p, params.min_p, params.repetition_penalty};
}

std::string describe(const SamplingParams& params) {
  return "temperature " + std::to_string(params.temperature) + " top_k " +
         std::to_string(params.top_k) + " top_p " + std::to_string(params.top_p) + " min_p " +
         std::to_string(params.min_p) + " penalty " + std::to_string(params.repetition_penalty) +
         " seed " + std::to_string(params.seed);
}

std::string describe(std::int64_t vocab, const Logits& shape) {
  return "vocab " + std::to_string(vocab) + " sigma " + std::to_string(shape.sigma) +
         (shape.quantised ? " quantised" : "") +
         (shape.masked_share > 0 ? " masked " + std::to_string(shape.masked_share) : "") +
         (shape.all_equal ? " all equal" : "");
}

// Tallies the cases where the GPU and the CPU Sampler disagree; each is a failure.
struct Disagreements {
  int cases = 0;
  int tokens = 0;  // cases whose token differs
  int logits = 0;  // cases whose processed logits differ

  bool any() const { return tokens + logits > 0; }
  void report(const char* what) const {
    std::cout << "[ info     ] " << what << ": " << cases << " cases, " << tokens
              << " with another token, " << logits << " with other logits\n";
  }
};

// Samples one token from `logits` on the CPU and on the GPU, with the same uniform number, and
// compares the tokens and the processed logits, reporting the first differences.
std::int32_t compare_with_sampler(const std::vector<float>& logits,
                                  const std::vector<std::int32_t>& history,
                                  const SamplingParams& params, Disagreements& tally,
                                  cudaStream_t stream = nullptr) {
  const auto vocab = static_cast<std::int64_t>(logits.size());
  std::vector<float> cpu_logits = logits;
  Sampler sampler(params);
  const std::int32_t cpu_token = sampler.sample(cpu_logits, history);

  const DeviceArray<float> device_logits(logits);
  const DeviceArray<std::int32_t> device_history(history);
  const DeviceArray<std::uint8_t> seen(static_cast<std::size_t>(vocab));
  seen.fill_bytes(0);
  const std::size_t bytes = sampling_workspace_bytes(vocab);
  if (bytes == 0) throw std::runtime_error("sampling_workspace_bytes failed");
  const DeviceArray<std::uint8_t> workspace(bytes);
  workspace.fill_bytes(0xAB);
  const DeviceArray<std::int32_t> token(1);
  token.fill_bytes(0xAB);
  // The copies and fills above ran on the default stream, which `stream` need not wait for.
  check(cudaDeviceSynchronize());
  check(mark_seen(seen.data(), device_history.data(), static_cast<std::int64_t>(history.size()),
                  stream));
  check(sample_token(device_logits.data(), vocab, seen.data(), device_params(params),
                     sampler_uniform(params.seed), workspace.data(), token.data(), stream));
  check(cudaStreamSynchronize(stream));
  const std::int32_t gpu_token = token.to_host()[0];
  const std::vector<float> gpu_logits = device_logits.to_host();

  ++tally.cases;
  if (gpu_token != cpu_token && ++tally.tokens <= 5) {
    ADD_FAILURE() << "token: CPU " << cpu_token << ", GPU " << gpu_token;
  }
  int differences = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const auto cpu_bits = std::bit_cast<std::uint32_t>(cpu_logits[i]);
    const auto gpu_bits = std::bit_cast<std::uint32_t>(gpu_logits[i]);
    if (cpu_bits != gpu_bits && ++differences <= 3 && tally.logits < 5) {
      ADD_FAILURE() << "logit " << i << " (input " << logits[i] << "): CPU " << cpu_logits[i]
                    << " (0x" << std::hex << cpu_bits << "), GPU " << gpu_logits[i] << " (0x"
                    << gpu_bits << std::dec << ")";
    }
  }
  if (differences > 0) ++tally.logits;
  return gpu_token;
}

// A row of the parameter table; top_k -1 stands for vocab - 1.
struct NamedParams {
  const char* name;
  SamplingParams params;
};

constexpr std::int64_t kVocabMinusOne = -1;

const std::vector<NamedParams> kGreedy = {
    {"greedy", {.temperature = 0.0f}},
    {"greedy, penalty 1.3", {.temperature = 0.0f, .repetition_penalty = 1.3f}},
};
const std::vector<NamedParams> kTemperature = {
    {"temperature 1", {}},
    {"temperature 0.7", {.temperature = 0.7f}},
    {"temperature 0.7, penalty 1.3", {.temperature = 0.7f, .repetition_penalty = 1.3f}},
    {"temperature 1.5, penalty 0.8", {.temperature = 1.5f, .repetition_penalty = 0.8f}},
};
const std::vector<NamedParams> kTopK = {
    {"top-k 1", {.top_k = 1}},
    {"top-k 40", {.temperature = 0.7f, .top_k = 40}},
    {"top-k vocab - 1", {.top_k = kVocabMinusOne}},
};
const std::vector<NamedParams> kTopP = {
    {"top-p 0.9", {.top_p = 0.9f}},
    {"top-p 0.5", {.temperature = 0.7f, .top_p = 0.5f}},
    {"top-p 1e-6", {.top_p = 1e-6f}},
};
const std::vector<NamedParams> kMinP = {
    {"min-p 0.05", {.min_p = 0.05f}},
    {"min-p 0.5", {.temperature = 0.7f, .min_p = 0.5f}},
};
const std::vector<NamedParams> kCombined = {
    {"top-k 40, top-p 0.9", {.top_k = 40, .top_p = 0.9f}},
    {"top-p 0.9, min-p 0.05", {.top_p = 0.9f, .min_p = 0.05f}},
    {"all",
     {.temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f, .repetition_penalty = 1.3f}},
    {"top-k vocab - 1, top-p 0.5, penalty 1.3",
     {.top_k = kVocabMinusOne, .top_p = 0.5f, .repetition_penalty = 1.3f}},
    {"top-k 1000, top-p 1e-6, min-p 0.5",
     {.temperature = 1.5f, .top_k = 1000, .top_p = 1e-6f, .min_p = 0.5f}},
};

SamplingParams resolved(SamplingParams params, std::int64_t vocab, std::uint64_t seed) {
  if (params.top_k == kVocabMinusOne) params.top_k = vocab - 1;
  params.seed = seed;
  return params;
}

// Every row of `table` on every vocabulary size, σ and rounding: one fresh logit vector, history
// and seed per case.
void compare_table(const std::vector<NamedParams>& table, const char* what,
                   std::uint64_t first_seed) {
  Disagreements tally;
  std::uint64_t seed = first_seed;
  for (std::int64_t vocab : {1, 2, 1000, 32000, 128256, 151936}) {
    for (float sigma : {1.0f, 3.0f, 8.0f}) {
      for (bool quantised : {false, true}) {
        for (const NamedParams& row : table) {
          const Logits shape{sigma, quantised};
          const SamplingParams params = resolved(row.params, vocab, ++seed);
          SCOPED_TRACE(std::string(row.name) + ", " + describe(vocab, shape) + ": " +
                       describe(params));
          compare_with_sampler(random_logits(vocab, shape, seed), random_history(vocab, seed),
                               params, tally);
          if (tally.tokens + tally.logits >= 10) {
            tally.report(what);
            FAIL() << "stopping after 10 disagreements";
          }
        }
      }
    }
  }
  tally.report(what);
  EXPECT_FALSE(tally.any());
}

TEST(SamplerUniform, IsTheSamplersDraw) {
  KBIT_REQUIRE_CUDA();
  // On the CPU alone: the draw the Sampler makes is total · sampler_uniform(seed), bit for bit.
  for (std::uint64_t seed = 0; seed < 2000; ++seed) {
    for (double total : {1.0, 0.37, 3.75, 1234.5678, 151936.0, 1e-200, 1e200}) {
      std::mt19937_64 engine(seed);
      const double draw = std::uniform_real_distribution<double>(0.0, total)(engine);
      ASSERT_EQ(std::bit_cast<std::uint64_t>(draw),
                std::bit_cast<std::uint64_t>(sampler_uniform(seed) * total))
          << "seed " << seed << " total " << total;
    }
  }
}

TEST(SampleToken, GreedyMatchesSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kGreedy, "greedy", 1000);
}

TEST(SampleToken, TemperatureAndPenaltyMatchSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kTemperature, "temperature and penalty", 2000);
}

TEST(SampleToken, TopKMatchesSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kTopK, "top-k", 3000);
}

TEST(SampleToken, TopPMatchesSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kTopP, "top-p", 4000);
}

TEST(SampleToken, MinPMatchesSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kMinP, "min-p", 5000);
}

TEST(SampleToken, CombinedFiltersMatchSampler) {
  KBIT_REQUIRE_CUDA();
  compare_table(kCombined, "combined", 6000);
}

// Many draws from one distribution, so that the draw is checked across it and not at one point.
TEST(SampleToken, ManyDrawsMatchSampler) {
  KBIT_REQUIRE_CUDA();
  for (std::int64_t vocab : {1000, 151936}) {
    for (const NamedParams& row :
         {NamedParams{"temperature 1", {}}, NamedParams{"top-p 0.9", {.top_p = 0.9f}}}) {
      SCOPED_TRACE(std::string(row.name) + ", vocab " + std::to_string(vocab));
      const std::vector<float> logits = random_logits(vocab, Logits{1.0f, true}, 7);
      Disagreements tally;
      std::vector<std::int32_t> tokens;
      for (std::uint64_t seed = 0; seed < 200; ++seed) {
        tokens.push_back(
            compare_with_sampler(logits, {}, resolved(row.params, vocab, seed), tally));
      }
      tally.report(row.name);
      EXPECT_FALSE(tally.any());
      std::sort(tokens.begin(), tokens.end());
      const auto distinct = std::unique(tokens.begin(), tokens.end()) - tokens.begin();
      EXPECT_GT(distinct, 100) << "the draws should spread over a flat distribution";
    }
  }
}

// All logits equal: every filter meets a tie at once. The sizes keep top-p's cut off the exact
// boundary cumulative == 1 - top_p, where the CPU's sum of rounded 1/vocab terms drifts and
// decides by its rounding (1000 equal logits and top-p 0.5: the CPU keeps 501, the exact sum 500),
// or make every sum exact (powers of two).
TEST(SampleToken, AllEqualLogitsMatchSampler) {
  KBIT_REQUIRE_CUDA();
  Disagreements tally;
  std::uint64_t seed = 7000;
  for (std::int64_t vocab : {1, 2, 3, 4, 10, 999, 4096, 131072, 151935}) {
    for (const NamedParams& row :
         std::vector<NamedParams>{{"greedy", {.temperature = 0.0f}},
                                  {"top-k 3", {.top_k = 3}},
                                  {"top-p 0.5", {.top_p = 0.5f}},
                                  {"top-p 0.75", {.top_p = 0.75f}},
                                  {"min-p 1", {.min_p = 1.0f}},
                                  {"top-k 2, top-p 0.5", {.top_k = 2, .top_p = 0.5f}}}) {
      const Logits shape{.all_equal = true};
      const SamplingParams params = resolved(row.params, vocab, ++seed);
      SCOPED_TRACE(std::string(row.name) + ", " + describe(vocab, shape) + ": " + describe(params));
      compare_with_sampler(random_logits(vocab, shape, seed), {}, params, tally);
    }
  }
  tally.report("all equal");
  EXPECT_FALSE(tally.any());
}

// Logits already -inf (masked tokens) beside the filters.
TEST(SampleToken, MaskedLogitsMatchSampler) {
  KBIT_REQUIRE_CUDA();
  Disagreements tally;
  std::uint64_t seed = 8000;
  for (std::int64_t vocab : {2, 1000, 151936}) {
    for (double masked_share : {0.3, 0.999}) {
      for (const NamedParams& row :
           {kGreedy[1], kTemperature[1], kTopK[1], kTopK[2], kTopP[0], kMinP[0], kCombined[2]}) {
        const Logits shape{.sigma = 3.0f, .quantised = true, .masked_share = masked_share};
        const SamplingParams params = resolved(row.params, vocab, ++seed);
        SCOPED_TRACE(std::string(row.name) + ", " + describe(vocab, shape) + ": " +
                     describe(params));
        std::vector<float> logits = random_logits(vocab, shape, seed);
        logits[static_cast<std::size_t>(vocab / 2)] = 2.0f;  // at least one token left
        compare_with_sampler(logits, random_history(vocab, seed), params, tally);
      }
    }
  }
  tally.report("masked");
  EXPECT_FALSE(tally.any());
}

// Vocabularies past 2^20 ids take chunks longer than the shortest (1024 ids), and the largest
// real vocabularies (262144) the most chunks of that length; on a stream of its own.
TEST(SampleToken, LargeVocabulariesMatchSampler) {
  KBIT_REQUIRE_CUDA();
  const cuda_test::NonBlockingStream stream;
  Disagreements tally;
  std::uint64_t seed = 9000;
  for (std::int64_t vocab : {262144, 2500001}) {
    for (const NamedParams& row : {kGreedy[1], kTopP[0], kCombined[2], kCombined[3]}) {
      for (bool quantised : {false, true}) {
        const Logits shape{.sigma = 3.0f, .quantised = quantised};
        const SamplingParams params = resolved(row.params, vocab, ++seed);
        SCOPED_TRACE(std::string(row.name) + ", " + describe(vocab, shape) + ": " +
                     describe(params));
        compare_with_sampler(random_logits(vocab, shape, seed), random_history(vocab, seed), params,
                             tally, stream.get());
      }
    }
  }
  tally.report("large vocabularies");
  EXPECT_FALSE(tally.any());
}

TEST(SampleToken, RejectsInvalidArguments) {
  KBIT_REQUIRE_CUDA();
  constexpr std::int64_t kVocab = 100;
  EXPECT_EQ(sampling_workspace_bytes(0), 0u);
  EXPECT_EQ(sampling_workspace_bytes(-5), 0u);
  const std::size_t bytes = sampling_workspace_bytes(kVocab);
  ASSERT_GT(bytes, 0u);
  const DeviceArray<float> logits(random_logits(kVocab, Logits{}, 1));
  const DeviceArray<std::uint8_t> seen(kVocab);
  const DeviceArray<std::uint8_t> workspace(bytes);
  const DeviceArray<std::int32_t> token(1);
  const auto sample = [&](std::int64_t vocab, const std::uint8_t* seen_ids,
                          const DeviceSamplingParams& params, double uniform, void* scratch) {
    return sample_token(logits.data(), vocab, seen_ids, params, uniform, scratch, token.data(),
                        nullptr);
  };
  const DeviceSamplingParams plain{};
  EXPECT_EQ(sample(0, nullptr, plain, 0.5, workspace.data()), cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, nullptr, plain, 0.5, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, nullptr, plain, 1.0, workspace.data()), cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, nullptr, plain, -0.5, workspace.data()), cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, nullptr, {.repetition_penalty = 1.3f}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, seen.data(), {.temperature = -1.0f}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, seen.data(), {.top_k = -1}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, seen.data(), {.top_p = 0.0f}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, seen.data(), {.min_p = 1.5f}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  EXPECT_EQ(sample(kVocab, seen.data(), {.repetition_penalty = 0.0f}, 0.5, workspace.data()),
            cudaErrorInvalidValue);
  // Greedy draws nothing, so the uniform number is not looked at.
  EXPECT_EQ(sample(kVocab, nullptr, {.temperature = 0.0f}, 7.0, workspace.data()), cudaSuccess);
  check(cudaDeviceSynchronize());
  EXPECT_EQ(mark_seen(seen.data(), nullptr, 3, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(mark_seen(seen.data(), nullptr, -1, nullptr), cudaErrorInvalidValue);
}

TEST(MarkSeen, SetsEveryTokenOfTheHistory) {
  KBIT_REQUIRE_CUDA();
  for (std::int64_t vocab : {1, 1000, 151936}) {
    for (std::int64_t count : {0, 1, 37, 100000}) {
      SCOPED_TRACE("vocab " + std::to_string(vocab) + ", " + std::to_string(count) + " tokens");
      std::mt19937_64 engine(static_cast<std::uint64_t>(vocab * 31 + count));
      std::uniform_int_distribution<std::int32_t> id(0, static_cast<std::int32_t>(vocab - 1));
      std::vector<std::int32_t> tokens(static_cast<std::size_t>(count));
      for (std::int32_t& token : tokens) token = id(engine);
      // Marks from before (random, never zero everywhere) stay; the new ones are added.
      std::vector<std::uint8_t> expected(static_cast<std::size_t>(vocab));
      for (std::uint8_t& mark : expected) mark = engine() % 4 == 0 ? 1 : 0;
      const DeviceArray<std::uint8_t> seen(expected);
      const DeviceArray<std::int32_t> device_tokens(tokens);
      for (std::int32_t token : tokens) expected[static_cast<std::size_t>(token)] = 1;
      check(mark_seen(seen.data(), device_tokens.data(), count, nullptr));
      check(cudaDeviceSynchronize());
      EXPECT_EQ(seen.to_host(), expected);
    }
  }
}

}  // namespace
}  // namespace kbit::kernels::cuda
