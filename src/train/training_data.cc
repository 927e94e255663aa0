#include "kbit/train/training_data.h"

#include <algorithm>
#include <string>
#include <utility>

#include "kbit/core/random.h"

namespace kbit::train {
namespace {

using tokenizer::TokenId;

std::string line_of(const io::TrainingExample& example) {
  return "line " + std::to_string(example.line);
}

// How many of the ids of `text` (a prefix of the text whose ids are `full`) come before the
// text's end: the length of the two encodings' common prefix, so that a token a merge carries
// across the boundary counts as after it.
Result<std::size_t> tokens_before(const tokenizer::Tokenizer& tokenizer, std::string_view text,
                                  bool add_special_tokens, const std::vector<TokenId>& full) {
  KBIT_ASSIGN_OR_RETURN(const std::vector<TokenId> prefix,
                        tokenizer.encode(text, add_special_tokens));
  const auto [prefix_end, full_end] =
      std::mismatch(prefix.begin(), prefix.end(), full.begin(), full.end());
  return static_cast<std::size_t>(prefix_end - prefix.begin());
}

// ids with labels: ids[t] for t in [first, end), kIgnoredLabel elsewhere.
void label_range(TokenizedExample& out, std::size_t first, std::size_t end) {
  out.labels.assign(out.ids.size(), kIgnoredLabel);
  for (std::size_t t = first; t < end && t < out.ids.size(); ++t) out.labels[t] = out.ids[t];
}

Result<TokenizedExample> tokenize_text(const io::TrainingExample& example, TokenId eos,
                                       const tokenizer::Tokenizer& tokenizer) {
  TokenizedExample out{example.line, {}, {}};
  KBIT_ASSIGN_OR_RETURN(out.ids, tokenizer.encode(example.text, true));
  out.ids.push_back(eos);
  out.labels = out.ids;
  return out;
}

Result<TokenizedExample> tokenize_prompt_completion(const io::TrainingExample& example, TokenId eos,
                                                    const tokenizer::Tokenizer& tokenizer) {
  TokenizedExample out{example.line, {}, {}};
  KBIT_ASSIGN_OR_RETURN(out.ids, tokenizer.encode(example.prompt + example.completion, true));
  KBIT_ASSIGN_OR_RETURN(const std::size_t prompt_tokens,
                        tokens_before(tokenizer, example.prompt, true, out.ids));
  out.ids.push_back(eos);
  label_range(out, prompt_tokens, out.ids.size());
  return out;
}

Result<TokenizedExample> tokenize_messages(const io::TrainingExample& example,
                                           const tokenizer::Tokenizer& tokenizer,
                                           const generate::ChatTemplate& chat_template) {
  const nlohmann::json context = generate::tokenizer_template_context(tokenizer);
  const std::vector<io::ChatMessage>& messages = example.messages;
  KBIT_ASSIGN_OR_RETURN(const std::string full, chat_template.render(messages, false, context));
  TokenizedExample out{example.line, {}, {}};
  // transformers tokenizes a rendered template without adding special tokens again.
  KBIT_ASSIGN_OR_RETURN(out.ids, tokenizer.encode(full, false));
  out.labels.assign(out.ids.size(), kIgnoredLabel);
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    const std::vector<io::ChatMessage> before(messages.begin(),
                                              messages.begin() + static_cast<std::ptrdiff_t>(i));
    const std::vector<io::ChatMessage> through(
        messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(i + 1));
    KBIT_ASSIGN_OR_RETURN(const std::string start, chat_template.render(before, true, context));
    KBIT_ASSIGN_OR_RETURN(const std::string end, chat_template.render(through, false, context));
    if (!end.starts_with(start) || !full.starts_with(end)) {
      return invalid_argument(
          "message " + std::to_string(i + 1) +
          ": the chat template does not render the conversation up to this assistant turn as a "
          "prefix of the whole, so its tokens cannot be told apart; use the prompt/completion "
          "layout for this data");
    }
    KBIT_ASSIGN_OR_RETURN(const std::size_t first, tokens_before(tokenizer, start, false, out.ids));
    KBIT_ASSIGN_OR_RETURN(const std::size_t last, tokens_before(tokenizer, end, false, out.ids));
    for (std::size_t t = first; t < last; ++t) out.labels[t] = out.ids[t];
  }
  return out;
}

Result<TokenizedExample> tokenize_example(const io::TrainingExample& example,
                                          io::TrainingLayout layout,
                                          const tokenizer::Tokenizer& tokenizer,
                                          const generate::ChatTemplate* chat_template) {
  switch (layout) {
    case io::TrainingLayout::kText:
    case io::TrainingLayout::kPromptCompletion: {
      if (!tokenizer.eos_id()) {
        return invalid_argument(
            "the tokenizer has no EOS token, which ends each text or completion; set eos_token "
            "in tokenizer_config.json");
      }
      return layout == io::TrainingLayout::kText
                 ? tokenize_text(example, *tokenizer.eos_id(), tokenizer)
                 : tokenize_prompt_completion(example, *tokenizer.eos_id(), tokenizer);
    }
    case io::TrainingLayout::kMessages:
      if (chat_template == nullptr) {
        return invalid_argument(
            "the data holds chat messages but the model has no chat template (chat_template.jinja "
            "or tokenizer_config.json's chat_template); add one, or use the text layout");
      }
      return tokenize_messages(example, tokenizer, *chat_template);
  }
  return internal_error("unknown training layout");
}

// Whether some label after the first is a target: labels[0] never is, once shifted.
bool has_target(std::span<const std::int32_t> labels) {
  return std::any_of(labels.begin() + (labels.empty() ? 0 : 1), labels.end(),
                     [](std::int32_t label) { return label != kIgnoredLabel; });
}

// A permutation of [0, n) that depends only on the seed: Fisher-Yates on a counter hash.
std::vector<std::size_t> shuffled_order(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  for (std::size_t i = n; i > 1; --i) {
    const std::uint64_t bits = random_bits(seed, i);
    std::swap(order[i - 1], order[static_cast<std::size_t>(bits % i)]);
  }
  return order;
}

}  // namespace

Result<std::vector<TokenizedExample>> tokenize_dataset(
    const io::TrainingDataset& dataset, const tokenizer::Tokenizer& tokenizer,
    const generate::ChatTemplate* chat_template) {
  std::vector<TokenizedExample> examples;
  examples.reserve(dataset.examples.size());
  for (const io::TrainingExample& example : dataset.examples) {
    Result<TokenizedExample> tokenized =
        tokenize_example(example, dataset.layout, tokenizer, chat_template);
    if (!tokenized.ok()) return tokenized.status().with_context(line_of(example));
    if (!has_target(tokenized->labels)) {
      return invalid_argument(line_of(example) + ": " +
                              "no token of this example is trained on (a chat needs an assistant "
                              "turn, a completion some text)");
    }
    examples.push_back(std::move(tokenized).value());
  }
  return examples;
}

Result<TrainingRows> make_training_rows(std::span<const TokenizedExample> examples,
                                        std::int64_t length, RowLayout layout, std::int32_t pad_id,
                                        std::uint64_t shuffle_seed) {
  if (length < 2) {
    return invalid_argument("rows of " + std::to_string(length) +
                            " tokens cannot train: a row needs at least 2 (a token and the next)");
  }
  if (examples.empty()) return invalid_argument("no training examples");
  TrainingRows rows;
  rows.length = length;
  const auto row_size = static_cast<std::size_t>(length);
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> labels;
  // Appends the row [ids, labels) padded to the length, if it has a target, and clears both.
  const auto finish_row = [&] {
    ids.resize(row_size, pad_id);
    labels.resize(row_size, kIgnoredLabel);
    if (has_target(labels)) {
      rows.input_ids.insert(rows.input_ids.end(), ids.begin(), ids.end());
      rows.labels.insert(rows.labels.end(), labels.begin(), labels.end());
    }
    ids.clear();
    labels.clear();
  };
  for (const std::size_t index : shuffled_order(examples.size(), shuffle_seed)) {
    const TokenizedExample& example = examples[index];
    for (std::size_t t = 0; t < example.ids.size(); ++t) {
      if (ids.size() == row_size) {
        if (layout == RowLayout::kPadded) {
          ++rows.truncated_examples;
          break;
        }
        finish_row();
      }
      ids.push_back(example.ids[t]);
      labels.push_back(example.labels[t]);
    }
    if (layout == RowLayout::kPadded) finish_row();
  }
  if (!ids.empty()) finish_row();
  if (rows.input_ids.empty()) {
    return invalid_argument("none of the " + std::to_string(examples.size()) +
                            " examples leaves a row with a trained token at length " +
                            std::to_string(length));
  }
  return rows;
}

}  // namespace kbit::train
