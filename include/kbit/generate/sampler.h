// Choosing the next token from logits, with the processors of transformers' generate() applied
// in its order: repetition penalty, temperature, top-k, top-p, min-p, then a draw from the
// softmax (or the argmax, for greedy decoding).
//
// Each processor follows transformers' definition, ties included: top-k keeps every token whose
// logit equals the k-th largest; top-p keeps the smallest set of most likely tokens whose
// probability reaches p; min-p keeps tokens with probability >= min_p * the largest; each keeps
// at least one token. Draws come from a generator seeded by `seed`, so a seed reproduces a run.
// A Sampler is not thread safe (it owns its random state).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "kbit/core/status.h"

namespace kbit::generate {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  std::int64_t top_k = 0;           // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off; > 1 discourages tokens seen before
  std::uint64_t seed = 0;

  bool greedy() const { return temperature == 0.0f; }
  // Fails naming the field and its allowed range.
  Status validate() const;
};

class Sampler {
 public:
  // Requires params.validate().ok().
  explicit Sampler(const SamplingParams& params);

  // The next token. `logits` [vocab] is modified in place (the processed scores); `history`
  // is every token so far (prompt and generated), which the repetition penalty reads.
  std::int32_t sample(std::span<float> logits, std::span<const std::int32_t> history);

 private:
  void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history);
  void keep_top_k(std::span<float> logits);
  void keep_top_p_and_min_p(std::span<float> logits);

  SamplingParams params_;
  std::mt19937_64 random_;
  std::vector<std::int32_t> order_;  // scratch: token ids sorted by score
  std::vector<std::uint8_t> seen_;   // scratch: tokens of the history
  std::vector<float> scores_;        // scratch: a copy of the scores for top-k
};

// The index of the largest value; the first one on ties (as torch.argmax).
std::int32_t argmax(std::span<const float> logits);

}  // namespace kbit::generate
