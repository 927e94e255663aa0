#include "kbit/generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

namespace kbit::generate {
namespace {

constexpr float kRemoved = -std::numeric_limits<float>::infinity();

}  // namespace

Status SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return invalid_argument("--temperature " + std::to_string(temperature) +
                            " must be >= 0 (0 means greedy)");
  }
  if (top_k < 0) return invalid_argument("--top-k must be >= 0 (0 turns it off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return invalid_argument("--top-p " + std::to_string(top_p) + " must be in (0, 1]");
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return invalid_argument("--min-p " + std::to_string(min_p) + " must be in [0, 1]");
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return invalid_argument("--repetition-penalty " + std::to_string(repetition_penalty) +
                            " must be > 0 (1 turns it off)");
  }
  return ok_status();
}

std::int32_t argmax(std::span<const float> logits) {
  return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplingParams& params) : params_(params), random_(params.seed) {}

// transformers' RepetitionPenaltyLogitsProcessor: each distinct token seen so far has its score
// divided by the penalty if positive, multiplied if negative.
void Sampler::apply_repetition_penalty(std::span<float> logits,
                                       std::span<const std::int32_t> history) {
  seen_.assign(logits.size(), 0);
  for (std::int32_t token : history) {
    if (token < 0 || static_cast<std::size_t>(token) >= logits.size() || seen_[token]) continue;
    seen_[token] = 1;
    float& score = logits[static_cast<std::size_t>(token)];
    score = score < 0 ? score * params_.repetition_penalty : score / params_.repetition_penalty;
  }
}

// TopKLogitsWarper: remove scores below the k-th largest (so ties with it stay).
void Sampler::keep_top_k(std::span<float> logits) {
  const auto k = static_cast<std::size_t>(params_.top_k);
  if (k == 0 || k >= logits.size()) return;
  scores_.assign(logits.begin(), logits.end());
  std::nth_element(scores_.begin(), scores_.begin() + static_cast<std::ptrdiff_t>(k - 1),
                   scores_.end(), std::greater<float>());
  const float kth = scores_[k - 1];
  for (float& score : logits) {
    if (score < kth) score = kRemoved;
  }
}

// TopPLogitsWarper and MinPLogitsWarper, on the softmax of the current scores.
void Sampler::keep_top_p_and_min_p(std::span<float> logits) {
  if (params_.top_p >= 1.0f && params_.min_p <= 0.0f) return;
  order_.resize(logits.size());
  std::iota(order_.begin(), order_.end(), 0);
  // Ascending by score, as transformers sorts for top-p; stable so that ties keep id order.
  std::stable_sort(order_.begin(), order_.end(),
                   [&](std::int32_t a, std::int32_t b) { return logits[a] < logits[b]; });
  const float max_score = logits[static_cast<std::size_t>(order_.back())];
  double total = 0;
  for (float score : logits) total += std::exp(static_cast<double>(score - max_score));
  if (params_.top_p < 1.0f) {
    // Remove the least likely tokens while their cumulative probability stays <= 1 - top_p;
    // the most likely token always stays.
    double cumulative = 0;
    for (std::size_t i = 0; i + 1 < order_.size(); ++i) {
      float& score = logits[static_cast<std::size_t>(order_[i])];
      cumulative += std::exp(static_cast<double>(score - max_score)) / total;
      if (cumulative > 1.0 - params_.top_p) break;
      score = kRemoved;
    }
  }
  if (params_.min_p > 0.0f) {
    // Probabilities are taken after top-p, as the warpers run one after the other.
    double kept_total = 0;
    for (float score : logits) kept_total += std::exp(static_cast<double>(score - max_score));
    const double threshold = params_.min_p * (1.0 / kept_total);
    for (float& score : logits) {
      if (std::exp(static_cast<double>(score - max_score)) / kept_total < threshold) {
        score = kRemoved;
      }
    }
  }
}

std::int32_t Sampler::sample(std::span<float> logits, std::span<const std::int32_t> history) {
  if (params_.repetition_penalty != 1.0f) apply_repetition_penalty(logits, history);
  if (params_.greedy()) return argmax(logits);
  if (params_.temperature != 1.0f) {
    for (float& score : logits) score /= params_.temperature;
  }
  keep_top_k(logits);
  keep_top_p_and_min_p(logits);
  const float max_score = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (float score : logits) total += std::exp(static_cast<double>(score - max_score));
  // Inverse transform sampling on the cumulative distribution.
  const double target = std::uniform_real_distribution<double>(0.0, total)(random_);
  double cumulative = 0;
  std::int32_t last_kept = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] == kRemoved) continue;
    last_kept = static_cast<std::int32_t>(i);
    cumulative += std::exp(static_cast<double>(logits[i] - max_score));
    if (cumulative > target) return last_kept;
  }
  return last_kept;  // rounding left the target past the end: the last kept token
}

}  // namespace kbit::generate
