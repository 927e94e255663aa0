#include "kbit/generate/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "kbit/generate/device_sampler.h"

namespace kbit::generate {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Holds back streamed text that could still turn into a stop string, and finds stop strings.
class StopStringFilter {
 public:
  explicit StopStringFilter(const std::vector<std::string>& stop_strings)
      : stop_strings_(stop_strings) {}

  // Appends text; returns the part that is now final. Sets stopped() when a stop string
  // appears: the text before it is returned and the rest dropped.
  std::string push(std::string_view text) {
    pending_ += text;
    std::size_t stop_at = std::string::npos;
    for (const std::string& stop : stop_strings_) {
      if (!stop.empty()) stop_at = std::min(stop_at, pending_.find(stop));
    }
    if (stop_at != std::string::npos) {
      stopped_ = true;
      std::string final_text = pending_.substr(0, stop_at);
      pending_.clear();
      return final_text;
    }
    const std::size_t keep = longest_stop_prefix_suffix();
    std::string final_text = pending_.substr(0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    return final_text;
  }
  std::string finish() { return std::exchange(pending_, std::string()); }
  bool stopped() const { return stopped_; }

 private:
  // The length of the longest end of pending_ that begins some stop string.
  std::size_t longest_stop_prefix_suffix() const {
    std::size_t longest = 0;
    for (const std::string& stop : stop_strings_) {
      for (std::size_t length = std::min(stop.size() - 1, pending_.size()); length > longest;
           --length) {
        if (pending_.compare(pending_.size() - length, length, stop, 0, length) == 0) {
          longest = length;
          break;
        }
      }
    }
    return longest;
  }

  const std::vector<std::string>& stop_strings_;
  std::string pending_;
  bool stopped_ = false;
};

// Chooses each next token: on the CPU from host logits, or on the model's GPU, where the logits
// stay (only the chosen id comes back).
class TokenChooser {
 public:
  static Result<TokenChooser> create(const model::LlamaModel& model, const model::KvCache& cache,
                                     const SamplingParams& params) {
    TokenChooser chooser(params);
    const std::int64_t vocab = model.config().vocab_size;
    const Device device = model.device();
    KBIT_ASSIGN_OR_RETURN(chooser.logits_, Tensor::empty(Shape{1, vocab}, DType::kF32, device));
    if (device.is_cuda()) {
      KBIT_ASSIGN_OR_RETURN(chooser.device_sampler_,
                            DeviceSampler::create(params, vocab, device, cache.stream()));
    }
    return chooser;
  }

  // Where forward() writes the logits of the last position.
  TensorView logits() const { return logits_.view(); }

  Status observe(std::span<const std::int32_t> tokens) {
    return device_sampler_ ? device_sampler_->observe(tokens) : ok_status();
  }

  // The next token from logits(); `history` is every token so far.
  Result<std::int32_t> choose(std::span<const std::int32_t> history) {
    if (device_sampler_) return device_sampler_->sample(logits_.view());
    const std::span<float> scores(logits_.data_as<float>(),
                                  static_cast<std::size_t>(logits_.numel()));
    return sampler_.sample(scores, history);
  }

 private:
  explicit TokenChooser(const SamplingParams& params) : sampler_(params) {}
  Tensor logits_;  // f32 [1, vocab] on the model's device
  Sampler sampler_;
  std::unique_ptr<DeviceSampler> device_sampler_;
};

std::vector<std::int32_t> end_of_sequence_ids(const model::LlamaModel& model,
                                              const tokenizer::Tokenizer& tokenizer) {
  std::vector<std::int32_t> ids;
  for (std::int64_t id : model.config().eos_token_ids) ids.push_back(static_cast<std::int32_t>(id));
  if (tokenizer.eos_id()) ids.push_back(*tokenizer.eos_id());
  return ids;
}

}  // namespace

std::string_view stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::kEndOfSequence:
      return "end of sequence";
    case StopReason::kStopString:
      return "stop string";
    case StopReason::kTokenBudget:
      return "token budget";
    case StopReason::kContextFull:
      return "context full";
  }
  return "unknown";
}

Result<GenerationResult> generate(const model::LlamaModel& model,
                                  const tokenizer::Tokenizer& tokenizer, model::KvCache& cache,
                                  std::span<const std::int32_t> prompt,
                                  const GenerationParams& params, const TextCallback& on_text) {
  KBIT_RETURN_IF_ERROR(params.sampling.validate());
  if (prompt.empty()) return invalid_argument("the prompt has no tokens");
  if (params.max_new_tokens < 0) return invalid_argument("--max-new-tokens must be >= 0");
  if (cache.size() + static_cast<std::int64_t>(prompt.size()) >= cache.capacity()) {
    return invalid_argument(
        "the prompt has " + std::to_string(prompt.size()) +
        " tokens and the context already holds " + std::to_string(cache.size()) + " of " +
        std::to_string(cache.capacity()) + "; shorten the prompt or raise the context size");
  }
  KBIT_ASSIGN_OR_RETURN(TokenChooser chooser, TokenChooser::create(model, cache, params.sampling));
  const std::vector<std::int32_t> eos_ids = end_of_sequence_ids(model, tokenizer);
  std::vector<std::int32_t> history(prompt.begin(), prompt.end());
  KBIT_RETURN_IF_ERROR(chooser.observe(history));
  // Special tokens are kept: Llama-2-style vocabularies mark their byte-fallback tokens special,
  // and skipping them would drop every character they spell. The end-of-sequence token itself
  // is never decoded: generation stops before it.
  tokenizer::Tokenizer::StreamingDecoder decoder(tokenizer, /*skip_special_tokens=*/false);
  StopStringFilter filter(params.stop_strings);

  GenerationResult result;
  result.prompt_tokens = static_cast<std::int64_t>(prompt.size());
  const auto emit = [&](const std::string& text) {
    result.text += text;
    if (on_text && !text.empty()) on_text(text);
  };

  auto start = Clock::now();
  KBIT_RETURN_IF_ERROR(model.forward(prompt, cache, chooser.logits(), /*all_positions=*/false));
  KBIT_RETURN_IF_ERROR(synchronize(model.device()));
  result.prompt_seconds = seconds_since(start);
  start = Clock::now();
  while (true) {
    if (static_cast<std::int64_t>(result.tokens.size()) >= params.max_new_tokens) break;
    KBIT_ASSIGN_OR_RETURN(const std::int32_t token, chooser.choose(history));
    if (params.stop_at_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end()) {
      result.stop_reason = StopReason::kEndOfSequence;
      break;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    KBIT_RETURN_IF_ERROR(chooser.observe({&token, 1}));
    KBIT_ASSIGN_OR_RETURN(const std::string piece, decoder.push(token));
    emit(filter.push(piece));
    if (filter.stopped()) {
      result.stop_reason = StopReason::kStopString;
      break;
    }
    if (cache.size() + 1 >= cache.capacity()) {
      result.stop_reason = StopReason::kContextFull;
      break;
    }
    const std::int32_t next[] = {token};
    KBIT_RETURN_IF_ERROR(model.forward(next, cache, chooser.logits(), /*all_positions=*/false));
  }
  if (!filter.stopped()) emit(filter.push(decoder.finish()) + filter.finish());
  result.decode_seconds = seconds_since(start);
  return result;
}

}  // namespace kbit::generate
