// Perplexity of a text under a model, the way `kbit perplexity` reports it: the token ids are cut
// into consecutive windows of `context` tokens (the remainder is dropped), each window is scored
// alone from an empty cache with no BOS, and the loss of tokens 1 ... context-1 of every window
// (each predicted from the tokens before it in its window) is averaged.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "kbit/core/status.h"
#include "kbit/model/llama.h"

namespace kbit::generate {

struct PerplexityResult {
  double perplexity = 0;    // exp(mean_nll)
  double mean_nll = 0;      // nats per scored token
  std::int64_t tokens = 0;  // scored tokens: windows * (context - 1)
  std::int64_t windows = 0;
};

// Called after each window with (windows done, windows in all).
using WindowProgress = std::function<void(std::int64_t done, std::int64_t total)>;

// Requires context >= 2 and at least one whole window of ids; fails naming both counts.
Result<PerplexityResult> perplexity(const model::LlamaModel& model,
                                    std::span<const std::int32_t> ids, std::int64_t context,
                                    const WindowProgress& progress = nullptr);

}  // namespace kbit::generate
