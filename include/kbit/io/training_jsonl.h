// Fine-tuning data in JSON Lines: one example per line, in one of the three layouts that
// transformers' and TRL's supervised fine-tuning take:
//   {"text": "..."}                                          plain text, loss on every token
//   {"prompt": "...", "completion": "..."}                   loss on the completion only
//   {"messages": [{"role": "...", "content": "..."}, ...]}   a chat, loss on assistant turns only
// Every example of a file has the layout of its first; other keys are ignored (the datasets
// library keeps them as columns, fine-tuning drops them). Blank lines (whitespace only, CRLF
// endings included) are skipped. Errors name the file, the line (1-based), the field and what to
// write instead; nothing is returned for a file with an error anywhere.
//
// Thread safety: functions of their arguments only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/io/chat_message.h"

namespace kbit::io {

enum class TrainingLayout { kText, kPromptCompletion, kMessages };

// "text", "prompt/completion" or "messages".
std::string_view training_layout_name(TrainingLayout layout);

// One example; only the fields of the dataset's layout are filled.
struct TrainingExample {
  std::int64_t line = 0;  // where it is in the file, 1-based
  std::string text;
  std::string prompt;
  std::string completion;
  std::vector<ChatMessage> messages;  // at least one
};

struct TrainingDataset {
  TrainingLayout layout = TrainingLayout::kText;
  std::vector<TrainingExample> examples;  // at least one, in file order
};

// Parses JSON Lines `contents`; `name` is what errors call the input (a file path).
Result<TrainingDataset> parse_training_jsonl(std::string_view contents, const std::string& name);

// Reads and parses the file at `path`.
Result<TrainingDataset> read_training_jsonl(const std::filesystem::path& path);

}  // namespace kbit::io
