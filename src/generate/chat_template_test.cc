// ChatTemplate against transformers: every case of testdata/chat_template_expectations.json
// (written by scripts/dev/make_chat_template_expectations.py from transformers' own rendering)
// must render byte for byte, or fail with the message of raise_exception.
#include "kbit/generate/chat_template.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>

#include "testing/shared_data.h"

namespace kbit::generate {
namespace {

// Ordered, so that dicts in the context keep the key order transformers saw.
const nlohmann::ordered_json& expectations() {
  static const nlohmann::ordered_json data = [] {
    std::ifstream in(std::string(KBIT_SOURCE_DIR) +
                     "/src/generate/testdata/chat_template_expectations.json");
    std::stringstream text;
    text << in.rdbuf();
    return nlohmann::ordered_json::parse(text.str(), nullptr, false);
  }();
  return data;
}

std::vector<ChatMessage> messages_of(const nlohmann::ordered_json& c) {
  std::vector<ChatMessage> messages;
  for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
  return messages;
}

// Checks one case against `tmpl`; returns an empty string or what went wrong.
std::string check_case(const ChatTemplate& tmpl, const nlohmann::ordered_json& c) {
  Result<std::string> out =
      tmpl.render_ordered(messages_of(c), c["add_generation_prompt"].get<bool>(), c["context"]);
  if (c.contains("error")) {
    if (out.ok()) return "rendered, but transformers fails with: " + c["error"].get<std::string>();
    if (c["error_kind"] == "raise_exception" &&
        out.status().message().find(c["error"].get<std::string>()) == std::string::npos) {
      return "error message lacks the raised message: " + out.status().to_string();
    }
    return "";
  }
  if (!out.ok()) return "failed: " + out.status().to_string();
  if (*out != c["expected"].get<std::string>()) {
    return "got:\n" + *out + "\n--- expected:\n" + c["expected"].get<std::string>();
  }
  return "";
}

TEST(ChatTemplate, MatchesTransformersOnEveryCommittedCase) {
  const nlohmann::ordered_json& data = expectations();
  ASSERT_FALSE(data.is_discarded()) << "cannot read testdata/chat_template_expectations.json";
  std::map<std::string, ChatTemplate> parsed;
  for (const auto& [name, source] : data["templates"].items()) {
    Result<ChatTemplate> t = ChatTemplate::parse(source.get<std::string>());
    ASSERT_TRUE(t.ok()) << name << ": " << t.status().to_string();
    parsed.emplace(name, std::move(*t));
  }
  int checked = 0;
  int raised = 0;
  for (const auto& c : data["cases"]) {
    const std::string problem = check_case(parsed.at(c["template"].get<std::string>()), c);
    EXPECT_EQ(problem, "") << c["name"].get<std::string>();
    ++checked;
    raised += c.contains("error") ? 1 : 0;
  }
  EXPECT_GE(checked, 400);
  EXPECT_GE(raised, 10);
  EXPECT_GE(data["templates"].size(), 22u);
}

TEST(ChatTemplate, LoadsTheSharedModelsTemplates) {
  KBIT_REQUIRE_SHARED_DIR();
  for (const auto& c : expectations()["cases"]) {
    if (!c.contains("model")) continue;
    const auto dir = kbit::testing::shared_file("models/" + c["model"].get<std::string>());
    Result<ChatTemplate> t = ChatTemplate::load_for_model(dir);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(check_case(*t, c), "") << c["name"].get<std::string>();
  }
}

class TempDir {
 public:
  TempDir() {
    path_ =
        std::filesystem::temp_directory_path() /
        ("kbit_chat_template_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
         "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
  }

 private:
  std::filesystem::path path_;
};

TEST(ChatTemplate, LoadsTokenizerConfigStringAndNamedList) {
  TempDir dir;
  dir.write("tokenizer_config.json", R"({"chat_template": "{{ messages[0].content }}!"})");
  Result<ChatTemplate> t = ChatTemplate::load_for_model(dir.path());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(*t->render({{"user", "hi"}}, false), "hi!");

  dir.write("tokenizer_config.json",
            R"({"chat_template": [{"name": "tool_use", "template": "tools"},
                                  {"name": "default", "template": "default {{ bos_token }}"}]})");
  t = ChatTemplate::load_for_model(dir.path());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(*t->render({}, false, {{"bos_token", "<s>"}}), "default <s>");

  // chat_template.jinja wins over tokenizer_config.json.
  dir.write("chat_template.jinja", "from the jinja file\n");
  t = ChatTemplate::load_for_model(dir.path());
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t->render({}, false), "from the jinja file");
}

TEST(ChatTemplate, MissingTemplateNamesBothFiles) {
  TempDir dir;
  dir.write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  Result<ChatTemplate> t = ChatTemplate::load_for_model(dir.path());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("chat_template.jinja"), std::string::npos);
  EXPECT_NE(t.status().message().find("tokenizer_config.json"), std::string::npos);
}

Status parse_status(const std::string& source) {
  return ChatTemplate::parse(source).status();
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  Status s = parse_status("line one\n{% for m in messages %}\n  {{ m.content + }}\n{% endfor %}");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("line 3, column 18"), std::string::npos) << s.message();

  s = parse_status("{% if x %}\nno end");
  EXPECT_NE(s.message().find("line 2"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'endif'"), std::string::npos) << s.message();

  s = parse_status("ok\n  {{ 'unterminated }}");
  EXPECT_NE(s.message().find("line 2, column 6"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("unterminated string"), std::string::npos) << s.message();

  s = parse_status("{# never closed");
  EXPECT_NE(s.message().find("line 1, column 1"), std::string::npos) << s.message();

  s = parse_status("{% frobnicate %}");
  EXPECT_NE(s.message().find("unknown statement 'frobnicate'"), std::string::npos) << s.message();

  s = parse_status("{{ a b }}");
  EXPECT_NE(s.message().find("column 6"), std::string::npos) << s.message();
}

TEST(ChatTemplate, UnsupportedConstructsFailClearly) {
  for (const char* source :
       {"{% include 'other.jinja' %}", "{% extends 'base' %}", "{% raw %}x{% endraw %}",
        "{% for x in y recursive %}{% endfor %}", "{% import 'macros' as m %}"}) {
    Status s = parse_status(source);
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << source;
    EXPECT_NE(s.message().find("not supported"), std::string::npos) << s.message();
  }
  for (const char* source :
       {"{{ 'x'|wordwrap }}", "{{ 1 is frozen }}", "{{ '%s' % 1 }}", "{{ '{}'.format(1) }}"}) {
    Result<ChatTemplate> t = ChatTemplate::parse(source);
    ASSERT_TRUE(t.ok()) << source;
    Result<std::string> out = t->render({}, false);
    ASSERT_FALSE(out.ok()) << source;
    EXPECT_EQ(out.status().code(), StatusCode::kUnimplemented) << out.status().to_string();
    EXPECT_NE(out.status().message().find("not supported"), std::string::npos);
  }
}

TEST(ChatTemplate, RenderErrorsNameTheLine) {
  Result<ChatTemplate> t = ChatTemplate::parse(
      "a\n{% if true %}\n{{ raise_exception('Roles must alternate') }}\n{% endif %}");
  ASSERT_TRUE(t.ok());
  Result<std::string> out = t->render({}, false);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("line 3"), std::string::npos) << out.status().message();
  EXPECT_NE(out.status().message().find("Roles must alternate"), std::string::npos);

  t = ChatTemplate::parse("{{ missing.attribute }}");
  ASSERT_TRUE(t.ok());
  out = t->render({}, false);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("'missing' is undefined"), std::string::npos);

  t = ChatTemplate::parse("{% set x = [1].append(2) %}");
  ASSERT_TRUE(t.ok());
  out = t->render({}, false);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("unsafe"), std::string::npos) << out.status().message();
}

}  // namespace
}  // namespace kbit::generate
