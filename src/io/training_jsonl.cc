// Fine-tuning data in JSON Lines (training_jsonl.h).
#include "kbit/io/training_jsonl.h"

#include <fstream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

namespace kbit::io {
namespace {

using nlohmann::json;

constexpr std::string_view kLayoutsHelp =
    "write {\"text\": ...}, {\"prompt\": ..., \"completion\": ...} or "
    "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}";

// Errors about one line of the input.
struct LineContext {
  const std::string& name;
  std::int64_t line;

  Status error(const std::string& what) const {
    return invalid_argument(name + " line " + std::to_string(line) + ": " + what);
  }
};

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

// The layout an example's keys say, or an error where they say none or several.
Result<TrainingLayout> layout_of(const json& example, const LineContext& at) {
  const bool text = example.contains("text");
  const bool prompt = example.contains("prompt");
  const bool completion = example.contains("completion");
  const bool messages = example.contains("messages");
  if (prompt != completion) {
    return at.error(std::string("field \"") + (prompt ? "prompt" : "completion") + "\" needs \"" +
                    (prompt ? "completion" : "prompt") + "\" beside it");
  }
  if (static_cast<int>(text) + static_cast<int>(prompt) + static_cast<int>(messages) != 1) {
    return at.error(std::string(text || prompt || messages
                                    ? "fields of more than one layout (text, prompt/completion, "
                                      "messages); "
                                    : "none of the fields \"text\", \"prompt\"/\"completion\" or "
                                      "\"messages\"; ") +
                    std::string(kLayoutsHelp));
  }
  return text     ? TrainingLayout::kText
         : prompt ? TrainingLayout::kPromptCompletion
                  : TrainingLayout::kMessages;
}

Result<std::string> string_field(const json& object, const char* field, const LineContext& at,
                                 const std::string& where = "") {
  const json& value = object.at(field);
  if (!value.is_string()) {
    return at.error(where + "field \"" + field + "\" must be a string, not " +
                    std::string(value.type_name()));
  }
  return value.get<std::string>();
}

Result<std::vector<ChatMessage>> messages_of(const json& example, const LineContext& at) {
  const json& list = example.at("messages");
  if (!list.is_array() || list.empty()) {
    return at.error(
        "field \"messages\" must be a non-empty list of {\"role\": ..., "
        "\"content\": ...} objects");
  }
  std::vector<ChatMessage> messages;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string where = "messages[" + std::to_string(i) + "]: ";
    const json& message = list[i];
    if (!message.is_object() || !message.contains("role") || !message.contains("content")) {
      return at.error(where + "must be an object with \"role\" and \"content\"");
    }
    ChatMessage turn;
    KBIT_ASSIGN_OR_RETURN(turn.role, string_field(message, "role", at, where));
    if (turn.role.empty()) return at.error(where + "field \"role\" is empty");
    KBIT_ASSIGN_OR_RETURN(turn.content, string_field(message, "content", at, where));
    messages.push_back(std::move(turn));
  }
  return messages;
}

Result<TrainingExample> example_of(const json& object, TrainingLayout layout,
                                   const LineContext& at) {
  TrainingExample example;
  example.line = at.line;
  switch (layout) {
    case TrainingLayout::kText: {
      KBIT_ASSIGN_OR_RETURN(example.text, string_field(object, "text", at));
      break;
    }
    case TrainingLayout::kPromptCompletion: {
      KBIT_ASSIGN_OR_RETURN(example.prompt, string_field(object, "prompt", at));
      KBIT_ASSIGN_OR_RETURN(example.completion, string_field(object, "completion", at));
      break;
    }
    case TrainingLayout::kMessages: {
      KBIT_ASSIGN_OR_RETURN(example.messages, messages_of(object, at));
      break;
    }
  }
  return example;
}

}  // namespace

std::string_view training_layout_name(TrainingLayout layout) {
  switch (layout) {
    case TrainingLayout::kText:
      return "text";
    case TrainingLayout::kPromptCompletion:
      return "prompt/completion";
    case TrainingLayout::kMessages:
      break;
  }
  return "messages";
}

Result<TrainingDataset> parse_training_jsonl(std::string_view contents, const std::string& name) {
  TrainingDataset dataset;
  std::optional<std::int64_t> first_line;
  std::int64_t line_number = 0;
  while (!contents.empty()) {
    const std::size_t end = contents.find('\n');
    const std::string_view line = contents.substr(0, end);
    contents.remove_prefix(end == std::string_view::npos ? contents.size() : end + 1);
    ++line_number;
    if (is_blank(line)) continue;
    const LineContext at{name, line_number};
    const json object = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (object.is_discarded()) {
      return at.error("not valid JSON (one example per line, each a JSON object); " +
                      std::string(kLayoutsHelp));
    }
    if (!object.is_object()) {
      return at.error("an example must be a JSON object, not " + std::string(object.type_name()));
    }
    KBIT_ASSIGN_OR_RETURN(const TrainingLayout layout, layout_of(object, at));
    if (!first_line) {
      first_line = line_number;
      dataset.layout = layout;
    } else if (layout != dataset.layout) {
      return at.error("a " + std::string(training_layout_name(layout)) +
                      " example in a file whose first example (line " +
                      std::to_string(*first_line) + ") is " +
                      std::string(training_layout_name(dataset.layout)) +
                      "; every example of a file must have the same layout");
    }
    KBIT_ASSIGN_OR_RETURN(TrainingExample example, example_of(object, dataset.layout, at));
    dataset.examples.push_back(std::move(example));
  }
  if (dataset.examples.empty()) {
    return invalid_argument(name + ": no examples (the file is empty or blank); " +
                            std::string(kLayoutsHelp) + ", one per line");
  }
  return dataset;
}

Result<TrainingDataset> read_training_jsonl(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return not_found(path.string() + ": cannot open the training data; check the path");
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) return data_loss(path.string() + ": reading the training data failed");
  return parse_training_jsonl(contents.str(), path.string());
}

}  // namespace kbit::io
