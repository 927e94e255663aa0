#include "generate/jinja/lexer.h"

#include <cstdint>
#include <cstdlib>

#include "generate/jinja/error.h"
#include "generate/jinja/text.h"

namespace kbit::generate::jinja {

namespace {

// jinja2 reads templates with universal newlines and, without keep_trailing_newline, drops one
// final newline.
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || is_digit(c);
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag_start(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      if (tag == src_.size()) {
        emit(TokenKind::kText, text, pos_);
        break;
      }
      const char kind = src_[tag + 1];
      const char modifier = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (modifier == '-') {
        text = python_strip(text, "", false, true);
      } else if (modifier != '+' && kind != '{') {
        // lstrip_blocks: drop the indentation before a block or comment tag.
        size_t line_begin = text.rfind('\n');
        line_begin = line_begin == std::string::npos ? 0 : line_begin + 1;
        if ((line_begin > 0 || line_starting) && line_begin < text.size() &&
            python_strip(text.substr(line_begin), "", true, true).empty()) {
          text.resize(line_begin);
        }
      }
      if (!text.empty()) emit(TokenKind::kText, text, pos_);
      pos_ = tag + 2 + (modifier == '-' || modifier == '+' ? 1 : 0);
      if (kind == '#') {
        skip_comment(tag);
      } else {
        lex_tag(kind == '{', tag);
      }
      line_starting = src_[pos_ - 1] == '\n';
    }
    emit(TokenKind::kEnd, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t find_tag_start(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return src_.size();
  }

  void position(size_t offset, int& line, int& column) const {
    line = 1;
    column = 1;
    for (size_t i = 0; i < offset && i < src_.size(); ++i) {
      if (src_[i] == '\n') {
        ++line;
        column = 1;
      } else if ((static_cast<unsigned char>(src_[i]) & 0xc0) != 0x80) {
        ++column;
      }
    }
  }

  [[noreturn]] void syntax_error(const std::string& message, size_t offset) const {
    Error error{Error::Kind::kSyntax, message, 0, 0};
    position(offset, error.line, error.column);
    throw error;
  }

  void emit(TokenKind kind, std::string text, size_t offset) {
    Token token{kind, std::move(text), 0, 0};
    // Positions are computed incrementally from the previous token.
    if (offset >= last_offset_) {
      for (size_t i = last_offset_; i < offset; ++i) {
        if (src_[i] == '\n') {
          ++line_;
          column_ = 1;
        } else if ((static_cast<unsigned char>(src_[i]) & 0xc0) != 0x80) {
          ++column_;
        }
      }
      last_offset_ = offset;
    }
    token.line = line_;
    token.column = column_;
    tokens_.push_back(std::move(token));
  }

  // Skips whitespace after a tag: all of it after a '-' end, one newline after a plain block end.
  void after_end(char modifier, bool trim_newline) {
    if (modifier == '-') {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
    } else if (modifier != '+' && trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
  }

  void skip_comment(size_t tag) {
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) syntax_error("unterminated comment: no '#}' after '{#'", tag);
    char modifier =
        end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : '\0';
    pos_ = end + 2;
    after_end(modifier, true);
  }

  void lex_tag(bool is_variable, size_t tag) {
    emit(is_variable ? TokenKind::kVariableBegin : TokenKind::kBlockBegin,
         is_variable ? "{{" : "{%", tag);
    const char close = is_variable ? '}' : '%';
    int balance = 0;
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) {
        syntax_error(std::string("unterminated tag: no '") + close + "}' after '{" +
                         (is_variable ? '{' : '%') + "'",
                     tag);
      }
      if (balance == 0) {
        char modifier = '\0';
        size_t at = pos_;
        if ((src_[at] == '-' || src_[at] == '+') && at + 2 < src_.size() + 1 &&
            src_.compare(at + 1, 2, std::string(1, close) + "}") == 0) {
          modifier = src_[at];
          ++at;
        }
        if (src_.compare(at, 2, std::string(1, close) + "}") == 0 &&
            (modifier != '+' || !is_variable)) {
          emit(is_variable ? TokenKind::kVariableEnd : TokenKind::kBlockEnd,
               is_variable ? "}}" : "%}", pos_);
          pos_ = at + 2;
          after_end(modifier, !is_variable);
          return;
        }
      }
      lex_token(balance);
    }
  }

  void lex_token(int& balance) {
    const size_t start = pos_;
    const char c = src_[pos_];
    if (is_name_start(c)) {
      while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
      emit(TokenKind::kName, src_.substr(start, pos_ - start), start);
      return;
    }
    if (is_digit(c)) {
      lex_number();
      return;
    }
    if (c == '\'' || c == '"') {
      emit(TokenKind::kString, lex_string(c), start);
      return;
    }
    static const char* const kTwoChar[] = {"**", "//", "==", "!=", "<=", ">="};
    for (const char* op : kTwoChar) {
      if (src_.compare(pos_, 2, op) == 0) {
        pos_ += 2;
        emit(TokenKind::kOperator, op, start);
        return;
      }
    }
    static const std::string kOneChar = "+-*/%~<>=.,:|()[]{}";
    if (kOneChar.find(c) != std::string::npos) {
      if (c == '(' || c == '[' || c == '{') ++balance;
      if (c == ')' || c == ']' || c == '}') --balance;
      ++pos_;
      emit(TokenKind::kOperator, std::string(1, c), start);
      return;
    }
    syntax_error(std::string("unexpected character '") + c + "' in a tag", start);
  }

  void lex_number() {
    const size_t start = pos_;
    auto digits = [&] {
      while (pos_ < src_.size() && (is_digit(src_[pos_]) || src_[pos_] == '_')) ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t at = pos_ + 1;
      if (at < src_.size() && (src_[at] == '+' || src_[at] == '-')) ++at;
      if (at < src_.size() && is_digit(src_[at])) {
        is_float = true;
        pos_ = at;
        digits();
      }
    }
    std::string text;
    for (size_t i = start; i < pos_; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    emit(is_float ? TokenKind::kFloat : TokenKind::kInteger, text, start);
  }

  std::string lex_string(char quote) {
    const size_t start = pos_;
    ++pos_;
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) syntax_error("unterminated string literal", start);
      char c = src_[pos_++];
      if (c == quote) return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) syntax_error("unterminated string literal", start);
      char e = src_[pos_++];
      switch (e) {
        case '\n':
          break;
        case '\\':
        case '\'':
        case '"':
          out += e;
          break;
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          std::string hex = src_.substr(pos_, n);
          char* end = nullptr;
          uint32_t cp = static_cast<uint32_t>(std::strtoul(hex.c_str(), &end, 16));
          if (hex.size() != n || end != hex.c_str() + n) {
            syntax_error(std::string("truncated \\") + e + " escape in a string literal", pos_ - 2);
          }
          pos_ += n;
          append_utf8(cp, out);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7';
                 ++k) {
              cp = cp * 8 + static_cast<uint32_t>(src_[pos_++] - '0');
            }
            append_utf8(cp, out);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
  }

  std::string src_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
  size_t last_offset_ = 0;
  int line_ = 1;
  int column_ = 1;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(normalize_newlines(source)).run();
}

}  // namespace kbit::generate::jinja
