// Tests of the tokenizer against the `tokenizers` library: ids and decoded text recorded by
// scripts/dev/make_tokenizer_expectations.py (testdata/), for the shared models' tokenizer.json.
#include "kbit/tokenizer/tokenizer.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testing/shared_data.h"
#include "tokenizer/utf8.h"

namespace kbit::tokenizer {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

fs::path testdata(const std::string& name) {
  return fs::path(KBIT_TOKENIZER_TESTDATA) / name;
}

std::vector<TokenId> read_u16_ids(const fs::path& path) {
  const std::string bytes = read_file(path);
  std::vector<TokenId> ids(bytes.size() / 2);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<TokenId>(static_cast<unsigned char>(bytes[2 * i]) |
                                  (static_cast<unsigned char>(bytes[2 * i + 1]) << 8));
  }
  return ids;
}

bool valid_utf8(const std::string& text) {
  return !internal::find_invalid_utf8(text).has_value();
}

// Streams `ids` one at a time; checks every chunk is valid UTF-8 and returns the concatenation.
std::string stream_decode(const Tokenizer& tokenizer, const std::vector<TokenId>& ids,
                          bool skip_special) {
  Tokenizer::StreamingDecoder stream(tokenizer, skip_special);
  std::string text;
  for (const TokenId id : ids) {
    Result<std::string> chunk = stream.push(id);
    EXPECT_TRUE(chunk.ok()) << chunk.status().to_string();
    if (!chunk.ok()) return text;
    EXPECT_TRUE(valid_utf8(*chunk)) << "broken UTF-8 chunk after id " << id;
    text += *chunk;
  }
  const std::string rest = stream.finish();
  EXPECT_TRUE(valid_utf8(rest));
  return text + rest;
}

class SharedModelTokenizer : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    KBIT_REQUIRE_SHARED_DIR();
    const fs::path path =
        kbit::testing::shared_file("models/shakespeare-" + GetParam() + "/tokenizer.json");
    Result<Tokenizer> loaded = Tokenizer::load(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
    tokenizer_.emplace(std::move(loaded).value());
  }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

  std::optional<Tokenizer> tokenizer_;
};

TEST_P(SharedModelTokenizer, TinyShakespeareIdsMatchTokenizers) {
  const std::string text = read_file(kbit::testing::shared_file("data/tinyshakespeare.txt"));
  const std::vector<TokenId> expected = read_u16_ids(testdata(GetParam() + "_tinyshakespeare.u16"));
  ASSERT_FALSE(text.empty());
  ASSERT_FALSE(expected.empty());

  const auto start = std::chrono::steady_clock::now();
  Result<std::vector<TokenId>> ids = tokenizer().encode(text, /*add_special_tokens=*/false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  std::printf("encode %s tinyshakespeare: %zu chars -> %zu ids in %.1f ms (%.1f M chars/s)\n",
              GetParam().c_str(), text.size(), ids->size(), seconds * 1e3,
              static_cast<double>(text.size()) / seconds / 1e6);
  ASSERT_EQ(ids->size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ((*ids)[i], expected[i]) << "first difference at id index " << i;
  }

  Result<std::string> decoded = tokenizer().decode(*ids, false);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_TRUE(*decoded == text) << "decode(encode(tinyshakespeare)) differs";
  EXPECT_TRUE(stream_decode(tokenizer(), *ids, false) == *decoded);
  EXPECT_TRUE(stream_decode(tokenizer(), *ids, true) == *decoded);
}

TEST_P(SharedModelTokenizer, HardCasesMatchTokenizers) {
  const nlohmann::json cases =
      nlohmann::json::parse(read_file(testdata(GetParam() + "_cases.json")));
  ASSERT_GT(cases.size(), 50u);
  for (const nlohmann::json& entry : cases) {
    const std::string text = entry["text"].get<std::string>();
    SCOPED_TRACE("text: \"" + text.substr(0, 60) + "\"");
    const auto expected = entry["ids"].get<std::vector<TokenId>>();
    const auto expected_special = entry["ids_with_special"].get<std::vector<TokenId>>();

    Result<std::vector<TokenId>> ids = tokenizer().encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status().to_string();
    EXPECT_EQ(*ids, expected);
    Result<std::vector<TokenId>> with_special = tokenizer().encode(text, true);
    ASSERT_TRUE(with_special.ok());
    EXPECT_EQ(*with_special, expected_special);

    Result<std::string> decoded = tokenizer().decode(expected, false);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, entry["decoded"].get<std::string>());
    if (entry["roundtrip"].get<bool>()) {
      EXPECT_EQ(*decoded, text);
    }
    EXPECT_EQ(*tokenizer().decode(expected_special, false),
              entry["decoded_special"].get<std::string>());
    EXPECT_EQ(*tokenizer().decode(expected_special, true),
              entry["decoded_skip"].get<std::string>());

    EXPECT_EQ(stream_decode(tokenizer(), expected_special, false),
              entry["decoded_special"].get<std::string>());
    EXPECT_EQ(stream_decode(tokenizer(), expected_special, true),
              entry["decoded_skip"].get<std::string>());
  }
}

// Code points of every plane except surrogates, '<' (added tokens' literal form) and U+2581
// (metaspace's stand-in for a space).
std::string random_utf8(std::mt19937& rng, std::size_t length) {
  std::uniform_int_distribution<int> kind(0, 9);
  std::string text;
  for (std::size_t i = 0; i < length; ++i) {
    char32_t c = 0;
    switch (kind(rng)) {
      case 0:
        c = std::uniform_int_distribution<char32_t>(0x01, 0x7F)(rng);
        break;
      case 1:
        c = U" \n\t"[std::uniform_int_distribution<int>(0, 2)(rng)];
        break;
      case 2:
        c = std::uniform_int_distribution<char32_t>(0x80, 0x7FF)(rng);
        break;
      case 3:
        c = std::uniform_int_distribution<char32_t>(0x800, 0xD7FF)(rng);
        break;
      case 4:
        c = std::uniform_int_distribution<char32_t>(0xE000, 0xFFFD)(rng);
        break;
      case 5:
        c = std::uniform_int_distribution<char32_t>(0x10000, 0x10FFFF)(rng);
        break;
      case 6:
        c = std::uniform_int_distribution<char32_t>(0x1F300, 0x1FAFF)(rng);
        break;
      default:
        c = std::uniform_int_distribution<char32_t>('a', 'z')(rng);
        break;
    }
    if (c == '<' || c == 0x2581) c = 'x';
    internal::utf8_append(text, c);
  }
  return text;
}

TEST_P(SharedModelTokenizer, RandomUtf8RoundTrips) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = random_utf8(rng, static_cast<std::size_t>(trial % 40 + 1));
    Result<std::vector<TokenId>> ids = tokenizer().encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status().to_string();
    Result<std::string> decoded = tokenizer().decode(*ids, false);
    ASSERT_TRUE(decoded.ok());
    ASSERT_EQ(*decoded, text) << "trial " << trial;
    ASSERT_EQ(stream_decode(tokenizer(), *ids, false), text) << "trial " << trial;
  }
}

TEST_P(SharedModelTokenizer, InvalidUtf8IsRejectedNamingTheOffset) {
  const std::vector<std::pair<std::string, std::size_t>> bad = {{"ab\xFF"
                                                                 "cd",
                                                                 2},
                                                                {"hello \xE4\xB8", 6},
                                                                {"\xC0\x80", 0},
                                                                {"ok \xED\xA0\x80", 3},
                                                                {"x\x80", 1},
                                                                {"\xF4\x90\x80\x80", 0}};
  for (const auto& [text, offset] : bad) {
    Result<std::vector<TokenId>> ids = tokenizer().encode(text, true);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find("byte offset " + std::to_string(offset)),
              std::string::npos)
        << ids.status().message();
  }
}

TEST_P(SharedModelTokenizer, InvalidIdsAreRejected) {
  const std::vector<TokenId> ids = {1, static_cast<TokenId>(tokenizer().vocab_size()) + 5};
  Result<std::string> text = tokenizer().decode(ids, false);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find(std::to_string(ids[1])), std::string::npos);
  Tokenizer::StreamingDecoder stream(tokenizer());
  EXPECT_FALSE(stream.push(-1).ok());
}

TEST_P(SharedModelTokenizer, SpecialTokensFromConfig) {
  ASSERT_TRUE(tokenizer().bos_id().has_value());
  ASSERT_TRUE(tokenizer().eos_id().has_value());
  EXPECT_TRUE(tokenizer().is_special(*tokenizer().bos_id()));
  const std::string bos = GetParam() == "llama3" ? "<|begin_of_text|>" : "<s>";
  const std::string eos = GetParam() == "llama3" ? "<|end_of_text|>" : "</s>";
  EXPECT_EQ(tokenizer().id_to_token(*tokenizer().bos_id()), bos);
  EXPECT_EQ(tokenizer().token_to_id(eos), tokenizer().eos_id());
  Result<std::vector<TokenId>> ids = tokenizer().encode("Hi", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), *tokenizer().bos_id());
}

INSTANTIATE_TEST_SUITE_P(Models, SharedModelTokenizer, ::testing::Values("llama3", "llama2"));

// ---- bad files: no shared data needed ----

class BadTokenizerFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kbit_tokenizer_test_" +
            std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `text` as tokenizer.json and returns the load failure's message.
  std::string load_error(const std::string& text) {
    const fs::path path = dir_ / "tokenizer.json";
    std::ofstream(path, std::ios::binary) << text;
    Result<Tokenizer> loaded = Tokenizer::load(path);
    EXPECT_FALSE(loaded.ok());
    return loaded.ok() ? std::string() : loaded.status().message();
  }

  static std::string minimal(const std::string& model, const std::string& pre_tokenizer = "null") {
    return R"({"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":)" +
           pre_tokenizer + R"(,"post_processor":null,"decoder":null,"model":)" + model + "}";
  }

  fs::path dir_;
};

TEST_F(BadTokenizerFile, UnsupportedModelType) {
  const std::string message = load_error(minimal(R"({"type":"WordPiece","vocab":{}})"));
  EXPECT_NE(message.find("model.type \"WordPiece\" is not supported (kbit reads BPE)"),
            std::string::npos)
      << message;
}

TEST_F(BadTokenizerFile, MissingMerges) {
  const std::string message = load_error(minimal(R"({"type":"BPE","vocab":{"a":0}})"));
  EXPECT_NE(message.find("model.merges is missing"), std::string::npos) << message;
}

TEST_F(BadTokenizerFile, BadJson) {
  const std::string message = load_error(R"({"model": {"type": "BPE",)");
  EXPECT_NE(message.find("tokenizer.json: not valid JSON"), std::string::npos) << message;
}

TEST_F(BadTokenizerFile, UnsupportedPreTokenizer) {
  const std::string message = load_error(
      minimal(R"({"type":"BPE","vocab":{"a":0},"merges":[]})", R"({"type":"BertPreTokenizer"})"));
  EXPECT_NE(message.find("pre_tokenizer.type \"BertPreTokenizer\" is not supported"),
            std::string::npos)
      << message;
}

TEST_F(BadTokenizerFile, MergeOfUnknownTokens) {
  const std::string message =
      load_error(minimal(R"({"type":"BPE","vocab":{"a":0},"merges":["a b"]})"));
  EXPECT_NE(message.find("model.merges[0]"), std::string::npos) << message;
}

TEST_F(BadTokenizerFile, MissingFile) {
  Result<Tokenizer> loaded = Tokenizer::load(dir_ / "absent" / "tokenizer.json");
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace kbit::tokenizer
