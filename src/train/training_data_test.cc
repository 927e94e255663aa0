#include "kbit/train/training_data.h"

#include <algorithm>

#include <gtest/gtest.h>

#include "testing/shared_data.h"

namespace kbit::train {
namespace {

using tokenizer::Tokenizer;

class TrainingDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KBIT_REQUIRE_SHARED_DIR();
    const std::filesystem::path model = kbit::testing::shared_file("models/shakespeare-llama2");
    tokenizer_.emplace(Tokenizer::load(model / "tokenizer.json").value());
    chat_template_.emplace(generate::ChatTemplate::load_for_model(model).value());
  }

  Result<std::vector<TokenizedExample>> tokenize(const std::string& jsonl) const {
    KBIT_ASSIGN_OR_RETURN(const io::TrainingDataset dataset,
                          io::parse_training_jsonl(jsonl, "data.jsonl"));
    return tokenize_dataset(dataset, *tokenizer_, &*chat_template_);
  }
  std::vector<std::int32_t> encode(const std::string& text, bool special) const {
    return tokenizer_->encode(text, special).value();
  }
  // The text of the labelled tokens of `example`, each run of them followed by "|".
  std::string labelled_text(const TokenizedExample& example) const {
    std::string text;
    std::vector<std::int32_t> run;
    for (std::size_t t = 0; t <= example.labels.size(); ++t) {
      if (t < example.labels.size() && example.labels[t] != kIgnoredLabel) {
        EXPECT_EQ(example.labels[t], example.ids[t]);
        run.push_back(example.labels[t]);
      } else if (!run.empty()) {
        text += tokenizer_->decode(run, false).value() + "|";
        run.clear();
      }
    }
    return text;
  }

  std::optional<Tokenizer> tokenizer_;
  std::optional<generate::ChatTemplate> chat_template_;
};

TEST_F(TrainingDataTest, TextIsBosTextEosAllLabelled) {
  const auto examples = tokenize(R"({"text": "To be, or not to be"})"
                                 "\n");
  ASSERT_TRUE(examples.ok()) << examples.status().to_string();
  std::vector<std::int32_t> want = encode("To be, or not to be", true);
  ASSERT_EQ(want.front(), *tokenizer_->bos_id());
  want.push_back(*tokenizer_->eos_id());
  EXPECT_EQ((*examples)[0].ids, want);
  EXPECT_EQ((*examples)[0].labels, want);
}

TEST_F(TrainingDataTest, PromptCompletionLabelsTheCompletionAndEos) {
  const auto examples = tokenize(R"({"prompt": "ROMEO:\n", "completion": "But soft, what light"})"
                                 "\n");
  ASSERT_TRUE(examples.ok()) << examples.status().to_string();
  const TokenizedExample& example = (*examples)[0];
  std::vector<std::int32_t> want = encode("ROMEO:\nBut soft, what light", true);
  want.push_back(*tokenizer_->eos_id());
  EXPECT_EQ(example.ids, want);
  const std::size_t prompt = encode("ROMEO:\n", true).size();
  for (std::size_t t = 0; t < prompt; ++t) EXPECT_EQ(example.labels[t], kIgnoredLabel) << t;
  EXPECT_EQ(labelled_text(example), "But soft, what light</s>|");
}

TEST_F(TrainingDataTest, MessagesLabelEachAssistantTurnWithItsEndMarker) {
  const auto examples = tokenize(R"({"messages": [{"role": "user", "content": "Who art thou?"},)"
                                 R"( {"role": "assistant", "content": "A poor player."},)"
                                 R"( {"role": "user", "content": "Whence?"},)"
                                 R"( {"role": "assistant", "content": "From Verona."}]})"
                                 "\n");
  ASSERT_TRUE(examples.ok()) << examples.status().to_string();
  const TokenizedExample& example = (*examples)[0];
  // The template: {{ bos_token }}[role\ncontent]\n per message; the assistant's tokens are its
  // content and the "]\n" that closes the turn.
  const std::string rendered =
      "<s>[user\nWho art thou?]\n[assistant\nA poor player.]\n[user\nWhence?]\n"
      "[assistant\nFrom Verona.]\n";
  EXPECT_EQ(example.ids, encode(rendered, false));
  EXPECT_EQ(labelled_text(example), "A poor player.]\n|From Verona.]\n|");
}

TEST_F(TrainingDataTest, ExamplesWithoutTargetsOrTemplateAreRefusedByLine) {
  Result<std::vector<TokenizedExample>> no_reply =
      tokenize(R"({"messages": [{"role": "user", "content": "Hi"}]})"
               "\n\n"
               R"({"messages": [{"role": "system", "content": "Be brief"}]})"
               "\n");
  ASSERT_FALSE(no_reply.ok());
  EXPECT_NE(no_reply.status().message().find("line 1"), std::string::npos)
      << no_reply.status().message();
  // A template whose generation prompt is not how it renders the reply.
  const generate::ChatTemplate odd = generate::ChatTemplate::parse(
                                         "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                                         "{% if add_generation_prompt %}Reply:{% endif %}")
                                         .value();
  const io::TrainingDataset chat =
      io::parse_training_jsonl(R"({"messages": [{"role": "user", "content": "Hi"},)"
                               R"( {"role": "assistant", "content": "Hello"}]})"
                               "\n",
                               "chat.jsonl")
          .value();
  Result<std::vector<TokenizedExample>> unaligned = tokenize_dataset(chat, *tokenizer_, &odd);
  ASSERT_FALSE(unaligned.ok());
  EXPECT_NE(unaligned.status().message().find("line 1: message 2"), std::string::npos)
      << unaligned.status().message();
  EXPECT_FALSE(tokenize_dataset(chat, *tokenizer_, nullptr).ok());
}

// Three examples of 5, 9 and 3 tokens, each labelled but for its first token.
std::vector<TokenizedExample> numbered_examples() {
  std::vector<TokenizedExample> examples;
  std::int32_t next = 10;
  for (const int size : {5, 9, 3}) {
    TokenizedExample example{static_cast<std::int64_t>(examples.size() + 1), {}, {}};
    for (int t = 0; t < size; ++t) {
      example.ids.push_back(next++);
      example.labels.push_back(t == 0 ? kIgnoredLabel : example.ids.back());
    }
    examples.push_back(example);
  }
  return examples;
}

TEST(TrainingRows, PackedRowsHoldEveryTokenOnceInExampleOrder) {
  const std::vector<TokenizedExample> examples = numbered_examples();
  const Result<TrainingRows> rows = make_training_rows(examples, 6, RowLayout::kPacked, 0, 7);
  ASSERT_TRUE(rows.ok()) << rows.status().to_string();
  EXPECT_EQ(rows->rows(), 3);  // 17 tokens in rows of 6, the last padded with 1
  std::vector<std::int32_t> tokens;
  for (std::size_t i = 0; i < rows->input_ids.size(); ++i) {
    if (rows->input_ids[i] != 0) {
      tokens.push_back(rows->input_ids[i]);
    } else {
      EXPECT_EQ(rows->labels[i], kIgnoredLabel);
    }
  }
  // Each example whole, its tokens in order.
  for (const TokenizedExample& example : examples) {
    const auto first = std::find(tokens.begin(), tokens.end(), example.ids.front());
    ASSERT_NE(first, tokens.end());
    ASSERT_GE(tokens.end() - first, static_cast<std::ptrdiff_t>(example.ids.size()));
    EXPECT_TRUE(std::equal(example.ids.begin(), example.ids.end(), first));
  }
  EXPECT_EQ(tokens.size(), 17u);
  // The same seed gives the same rows; the order of examples depends on it.
  const TrainingRows again = make_training_rows(examples, 6, RowLayout::kPacked, 0, 7).value();
  EXPECT_EQ(again.input_ids, rows->input_ids);
  bool order_changes = false;
  for (std::uint64_t seed = 0; seed < 8 && !order_changes; ++seed) {
    order_changes =
        make_training_rows(examples, 6, RowLayout::kPacked, 0, seed).value().input_ids !=
        rows->input_ids;
  }
  EXPECT_TRUE(order_changes);
}

TEST(TrainingRows, PaddedRowsTruncateAndDropRowsWithoutTargets) {
  std::vector<TokenizedExample> examples = numbered_examples();
  // A fourth example whose only labelled token is its first: no target once shifted.
  examples.push_back({4, {50, 51}, {50, kIgnoredLabel}});
  const Result<TrainingRows> rows = make_training_rows(examples, 6, RowLayout::kPadded, -1, 3);
  ASSERT_TRUE(rows.ok()) << rows.status().to_string();
  EXPECT_EQ(rows->rows(), 3);
  EXPECT_EQ(rows->truncated_examples, 1);  // the 9 tokens
  for (std::int64_t r = 0; r < rows->rows(); ++r) {
    const std::int32_t first = rows->input_ids[static_cast<std::size_t>(r * 6)];
    EXPECT_TRUE(first == 10 || first == 15 || first == 24) << first;  // each starts an example
  }
  EXPECT_EQ(make_training_rows(examples, 1, RowLayout::kPacked, 0, 0).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_training_rows({}, 8, RowLayout::kPacked, 0, 0).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbit::train
