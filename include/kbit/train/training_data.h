// Fine-tuning data as the trainer takes it: each example of a JSONL dataset (kbit/io/
// training_jsonl.h) tokenized with the labels of its loss, then laid out in rows of one length.
//
// Tokens and labels, as TRL's SFTTrainer builds them (labels[t] = ids[t] where the token is a
// target of the loss, else −100; the model shifts them, so labels[0] is never a target):
//   text                 encode(text) with the tokenizer's special tokens (BOS), then EOS;
//                        every token labelled
//   prompt / completion  encode(prompt + completion) with BOS, then EOS; the completion's
//                        tokens and the EOS labelled
//   messages             the chat template's rendering of the whole conversation (bos_token and
//                        eos_token from the tokenizer), encoded without adding special tokens
//                        (the template writes them); the tokens of each assistant turn labelled:
//                        the text from the rendering of the turns before it with the generation
//                        prompt to the rendering that includes it (its content and the
//                        template's end-of-turn marker)
// A token that a boundary falls inside (a merge across it) counts as after the boundary.
//
// Rows (make_training_rows): the examples in an order shuffled by a seed, then either
//   packed  concatenated and cut into rows of `length` tokens (the last row padded), so that no
//           token is wasted on padding (transformers' group_texts; a row may hold the end of one
//           example and the start of the next, which attends to it)
//   padded  one example per row, truncated to `length` and padded at the end
// Padding is `pad_id` with label −100; since attention is causal, trailing padding changes
// nothing before it. A row without any labelled target (labels[1:] all −100) is dropped.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/generate/chat_template.h"
#include "kbit/io/training_jsonl.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::train {

// The label of a token the loss does not train on (PyTorch's ignore_index).
inline constexpr std::int32_t kIgnoredLabel = -100;

struct TokenizedExample {
  std::int64_t line = 0;             // in the JSONL file, for errors
  std::vector<std::int32_t> ids;     // [tokens]
  std::vector<std::int32_t> labels;  // [tokens]: ids[t] or kIgnoredLabel
};

// Tokenizes every example of `dataset`. `chat_template` is needed (non-null) for the messages
// layout only. Fails naming the line for text the tokenizer refuses, a template that fails to
// render or renders the turns before a message as other than a prefix of the conversation
// (kbit cannot then tell the assistant's tokens), a tokenizer without an EOS token (text and
// prompt/completion layouts), or an example with no labelled token (e.g. no assistant turn).
Result<std::vector<TokenizedExample>> tokenize_dataset(const io::TrainingDataset& dataset,
                                                       const tokenizer::Tokenizer& tokenizer,
                                                       const generate::ChatTemplate* chat_template);

enum class RowLayout { kPacked, kPadded };

struct TrainingRows {
  std::int64_t length = 0;              // tokens per row
  std::vector<std::int32_t> input_ids;  // [rows, length]
  std::vector<std::int32_t> labels;     // [rows, length]
  std::int64_t truncated_examples = 0;  // padded layout: examples longer than a row
  std::int64_t rows() const {
    return length > 0 ? static_cast<std::int64_t>(input_ids.size()) / length : 0;
  }
};

// The rows of `examples` (see above), their order shuffled by `shuffle_seed` (the same seed, the
// same rows). kInvalidArgument for a length below 2, no examples, or no row with a labelled
// target.
Result<TrainingRows> make_training_rows(std::span<const TokenizedExample> examples,
                                        std::int64_t length, RowLayout layout, std::int32_t pad_id,
                                        std::uint64_t shuffle_seed);

}  // namespace kbit::train
