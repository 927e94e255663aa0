// The JSON Lines training-data reader: each layout, blank and CRLF lines, and an error naming the
// line and the field for each way a line can be wrong.
#include "kbit/io/training_jsonl.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace kbit::io {
namespace {

TrainingDataset parse_ok(const std::string& contents) {
  Result<TrainingDataset> dataset = parse_training_jsonl(contents, "data.jsonl");
  EXPECT_TRUE(dataset.ok()) << dataset.status().to_string();
  return dataset.ok() ? std::move(dataset).value() : TrainingDataset{};
}

// The error of `contents`, which must contain every one of `fragments`.
void expect_error(const std::string& contents, std::initializer_list<std::string> fragments) {
  const Result<TrainingDataset> dataset = parse_training_jsonl(contents, "data.jsonl");
  ASSERT_FALSE(dataset.ok()) << contents;
  EXPECT_EQ(dataset.status().code(), StatusCode::kInvalidArgument);
  const std::string message = dataset.status().message();
  for (const std::string& fragment : fragments) {
    EXPECT_NE(message.find(fragment), std::string::npos)
        << "\"" << message << "\" lacks \"" << fragment << "\"";
  }
}

TEST(TrainingJsonl, ReadsTextExamplesSkippingBlankLines) {
  const TrainingDataset dataset = parse_ok(
      "{\"text\": \"To be, or not to be\"}\r\n\n   \n{\"text\": \"ROMEO:\\nO\", \"id\": 7}\n");
  EXPECT_EQ(dataset.layout, TrainingLayout::kText);
  ASSERT_EQ(dataset.examples.size(), 2u);
  EXPECT_EQ(dataset.examples[0].text, "To be, or not to be");
  EXPECT_EQ(dataset.examples[0].line, 1);
  EXPECT_EQ(dataset.examples[1].text, "ROMEO:\nO");
  EXPECT_EQ(dataset.examples[1].line, 4);
}

TEST(TrainingJsonl, ReadsPromptCompletionExamples) {
  const TrainingDataset dataset = parse_ok(
      "{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\"}\n{\"completion\": \"b\", \"prompt\": "
      "\"\u00e9\"}");
  EXPECT_EQ(dataset.layout, TrainingLayout::kPromptCompletion);
  ASSERT_EQ(dataset.examples.size(), 2u);
  EXPECT_EQ(dataset.examples[0].prompt, "Q: 2+2?");
  EXPECT_EQ(dataset.examples[0].completion, " 4");
  EXPECT_EQ(dataset.examples[1].prompt, "\u00e9");
}

TEST(TrainingJsonl, ReadsChatExamples) {
  const TrainingDataset dataset = parse_ok(
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
      "\"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello.\", \"weight\": 1}]}");
  EXPECT_EQ(dataset.layout, TrainingLayout::kMessages);
  ASSERT_EQ(dataset.examples.size(), 1u);
  const std::vector<ChatMessage> want = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}};
  EXPECT_EQ(dataset.examples[0].messages, want);
}

TEST(TrainingJsonl, NamesTheLineAndTheFieldOfEachError) {
  expect_error("{\"text\": \"a\"}\n{\"text\": \"b\"\n", {"data.jsonl line 2", "not valid JSON"});
  expect_error("[\"text\"]\n", {"line 1", "JSON object, not array"});
  expect_error("{\"text\": 3}\n", {"line 1", "\"text\"", "string, not number"});
  expect_error("{\"body\": \"a\"}\n", {"line 1", "none of the fields", "\"text\""});
  expect_error("{\"text\": \"a\", \"messages\": []}\n", {"line 1", "more than one layout"});
  expect_error("{\"prompt\": \"a\"}\n", {"line 1", "\"prompt\" needs \"completion\""});
  expect_error("{\"completion\": \"a\"}\n", {"\"completion\" needs \"prompt\""});
  expect_error("{\"prompt\": \"a\", \"completion\": null}\n",
               {"\"completion\"", "string, not null"});
  expect_error("{\"text\": \"a\"}\n\n{\"prompt\": \"a\", \"completion\": \"b\"}\n",
               {"line 3", "prompt/completion example", "first example (line 1) is text"});
  expect_error("{\"messages\": []}\n", {"line 1", "non-empty list"});
  expect_error("{\"messages\": {\"role\": \"user\"}}\n", {"\"messages\"", "non-empty list"});
  expect_error("{\"messages\": [{\"role\": \"user\"}]}\n",
               {"line 1", "messages[0]", "\"role\" and \"content\""});
  expect_error(
      "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"\", "
      "\"content\": \"b\"}]}\n",
      {"messages[1]", "\"role\" is empty"});
  expect_error("{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}\n",
               {"messages[0]", "\"content\" must be a string, not array"});
  expect_error("", {"data.jsonl", "no examples"});
  expect_error("\n \r\n", {"no examples"});
}

TEST(TrainingJsonl, ReadsFilesAndNamesMissingOnes) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "kbit_training_jsonl";
  std::filesystem::create_directories(dir);
  const std::filesystem::path path = dir / "data.jsonl";
  std::ofstream(path) << "{\"text\": \"x\"}\n";
  const Result<TrainingDataset> dataset = read_training_jsonl(path);
  ASSERT_TRUE(dataset.ok()) << dataset.status().to_string();
  EXPECT_EQ(dataset->examples.size(), 1u);
  const Result<TrainingDataset> missing = read_training_jsonl(dir / "absent.jsonl");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("absent.jsonl"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kbit::io
