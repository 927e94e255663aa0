// Unit tests of the Jinja interpreter's parts: float printing, JSON, text helpers, expressions.
#include <gtest/gtest.h>

#include "generate/jinja/error.h"
#include "generate/jinja/evaluator.h"
#include "generate/jinja/parser.h"
#include "generate/jinja/text.h"
#include "generate/jinja/value.h"

namespace kbit::generate::jinja {
namespace {

std::string render_text(const std::string& source) {
  try {
    return render(parse_template(source), Value::dict({}));
  } catch (const Error& e) {
    return "error: " + e.message;
  }
}

TEST(Jinja, FloatsPrintLikePython) {
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(0.00001), "1e-05");
  EXPECT_EQ(python_float_repr(-2.5e-300), "-2.5e-300");
}

TEST(Jinja, JsonMatchesJsonDumps) {
  Value v = Value::from_json(nlohmann::json::parse(R"({"a": [1, 2.0, null, "é\n"], "b": {}})"));
  EXPECT_EQ(to_json(v, -1, false), R"({"a": [1, 2.0, null, "é\n"], "b": {}})");
  EXPECT_EQ(to_json(v, 1, false),
            "{\n \"a\": [\n  1,\n  2.0,\n  null,\n  \"é\\n\"\n ],\n \"b\": {}\n}");
}

TEST(Jinja, TextHelpersCountCodePoints) {
  EXPECT_EQ(utf8_length("héllo 世界"), 8);
  EXPECT_EQ(python_strip("\u00a0 x \u3000", "", true, true), "x");
  EXPECT_EQ(python_title("they're bill's"), "They'Re Bill'S");
  EXPECT_EQ(jinja_title("hello big-world"), "Hello Big-World");
}

TEST(Jinja, ExpressionsFollowJinjaPrecedence) {
  EXPECT_EQ(render_text("{{ -2 ** 2 }} {{ 2 * 3 ~ 4 }} {{ not 1 == 2 }} {{ -1|abs }}"),
            "4 64 True 1");
  EXPECT_EQ(render_text("{{ 'a' if 0 else 'b' }}{{ [1, 2][-1] }}{{ 'abc'[1:] }}"), "b2bc");
  EXPECT_EQ(render_text("{{ x.y }}"), "error: 'x' is undefined");
  EXPECT_EQ(render_text("{{ 1 / 0 }}"), "error: division by zero");
  EXPECT_EQ(render_text("{{ {'a': {'b': 1}} }}"), "{'a': {'b': 1}}");
}

TEST(Jinja, WhitespaceRulesMatchTransformersSettings) {
  EXPECT_EQ(render_text("  {% if true %}\n  x\n  {% endif %}\ny\n"), "  x\ny");
  EXPECT_EQ(render_text("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render_text("a {# c #}\nb"), "a b");
}

}  // namespace
}  // namespace kbit::generate::jinja
