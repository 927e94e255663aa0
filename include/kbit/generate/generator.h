// Text generation: runs a prompt through the model, then draws one token at a time until the
// end-of-sequence token, a stop string, the token budget or the end of the context, streaming
// the text as it becomes final.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/generate/sampler.h"
#include "kbit/model/llama.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::generate {

struct GenerationParams {
  std::int64_t max_new_tokens = 128;
  SamplingParams sampling;
  // Generation stops when the text contains one of these; the stop string itself is not part of
  // the returned or streamed text.
  std::vector<std::string> stop_strings;
  bool stop_at_eos = true;  // the model's end-of-sequence ids (config.json and tokenizer)
};

enum class StopReason { kEndOfSequence, kStopString, kTokenBudget, kContextFull };
std::string_view stop_reason_name(StopReason reason);

struct GenerationResult {
  std::vector<std::int32_t> tokens;  // the generated tokens (a matched stop string's included)
  std::string text;                  // their text, up to a stop string
  StopReason stop_reason = StopReason::kTokenBudget;
  std::int64_t prompt_tokens = 0;
  double prompt_seconds = 0;  // the prompt's forward pass
  double decode_seconds = 0;  // every token after the first
};

// Called with each piece of text as soon as it is final.
using TextCallback = std::function<void(std::string_view text)>;

// Generates after `prompt` (non-empty ids), continuing `cache` (empty for a fresh prompt; a chat
// keeps it between turns so that earlier turns are not recomputed). Fails on invalid params, or
// when the prompt does not fit the cache, naming the sizes.
Result<GenerationResult> generate(const model::LlamaModel& model,
                                  const tokenizer::Tokenizer& tokenizer, model::KvCache& cache,
                                  std::span<const std::int32_t> prompt,
                                  const GenerationParams& params,
                                  const TextCallback& on_text = nullptr);

}  // namespace kbit::generate
