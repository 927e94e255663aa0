// The Jinja lexer: template source to tokens, with jinja2's whitespace rules as transformers
// configures them (trim_blocks and lstrip_blocks on, keep_trailing_newline off).
//
// Text between tags becomes kText tokens, already trimmed: `{%-`/`{{-`/`{#-` strip the whitespace
// before a tag, `-%}`/`-}}`/`-#}` the whitespace after it; lstrip_blocks removes the spaces and
// tabs between the start of a line and a `{%` or `{#` tag (not `{{`, not `{%+`); trim_blocks
// removes the first newline after a `%}` or `#}` (not `+%}`). Comments produce no tokens.
// Inside tags: names, strings (with Python escapes decoded), integers, floats and operators.
#pragma once

#include <string>
#include <vector>

namespace kbit::generate::jinja {

enum class TokenKind {
  kText,
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEnd,  // end of the template
};

struct Token {
  TokenKind kind;
  std::string text;  // the text, name, decoded string, number or operator
  int line;          // 1-based position of the token in the template
  int column;
};

// Splits `source` into tokens ending with kEnd; throws Error (kSyntax) naming the line and column
// of an unterminated tag, comment or string, or a character no token starts with.
std::vector<Token> tokenize(const std::string& source);

}  // namespace kbit::generate::jinja
