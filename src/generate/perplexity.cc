#include "kbit/generate/perplexity.h"

#include <algorithm>
#include <cmath>

namespace kbit::generate {
namespace {

// -log softmax(row)[target], in float64.
double negative_log_likelihood(const float* row, std::int64_t vocab, std::int32_t target) {
  const float max = *std::max_element(row, row + vocab);
  double sum = 0;
  for (std::int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - max));
  return std::log(sum) + max - row[target];
}

}  // namespace

Result<PerplexityResult> perplexity(const model::LlamaModel& model,
                                    std::span<const std::int32_t> ids, std::int64_t context,
                                    const WindowProgress& progress) {
  if (context < 2) return invalid_argument("--ctx " + std::to_string(context) + " must be >= 2");
  const auto count = static_cast<std::int64_t>(ids.size());
  const std::int64_t windows = count / context;
  if (windows == 0) {
    return invalid_argument("the text has " + std::to_string(count) +
                            " tokens, fewer than one window of --ctx " + std::to_string(context));
  }
  const std::int64_t vocab = model.config().vocab_size;
  KBIT_ASSIGN_OR_RETURN(Tensor logits, Tensor::empty(Shape{context, vocab}, DType::kF32));
  KBIT_ASSIGN_OR_RETURN(model::KvCache cache, model.new_cache(context));
  double total_nll = 0;
  for (std::int64_t w = 0; w < windows; ++w) {
    const std::span<const std::int32_t> window =
        ids.subspan(static_cast<std::size_t>(w * context), static_cast<std::size_t>(context));
    KBIT_RETURN_IF_ERROR(cache.truncate(0));
    KBIT_RETURN_IF_ERROR(model.forward(window, cache, logits.view(), /*all_positions=*/true));
    for (std::int64_t t = 0; t + 1 < context; ++t) {
      total_nll += negative_log_likelihood(logits.data_as<float>() + t * vocab, vocab,
                                           window[static_cast<std::size_t>(t + 1)]);
    }
    if (progress) progress(w + 1, windows);
  }
  PerplexityResult result;
  result.windows = windows;
  result.tokens = windows * (context - 1);
  result.mean_nll = total_nll / static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.mean_nll);
  return result;
}

}  // namespace kbit::generate
