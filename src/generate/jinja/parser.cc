#include "generate/jinja/parser.h"

#include <cstdlib>

#include "generate/jinja/error.h"
#include "generate/jinja/lexer.h"

namespace kbit::generate::jinja {

namespace {

const char* token_kind_name(TokenKind kind) {
  switch (kind) {
    case TokenKind::kText:
      return "text";
    case TokenKind::kVariableBegin:
      return "'{{'";
    case TokenKind::kVariableEnd:
      return "'}}'";
    case TokenKind::kBlockBegin:
      return "'{%'";
    case TokenKind::kBlockEnd:
      return "'%}'";
    case TokenKind::kName:
      return "name";
    case TokenKind::kString:
      return "string";
    case TokenKind::kInteger:
      return "integer";
    case TokenKind::kFloat:
      return "float";
    case TokenKind::kOperator:
      return "operator";
    case TokenKind::kEnd:
      return "end of template";
  }
  return "token";
}

std::string describe(const Token& token) {
  switch (token.kind) {
    case TokenKind::kName:
    case TokenKind::kOperator:
    case TokenKind::kInteger:
    case TokenKind::kFloat:
      return "'" + token.text + "'";
    case TokenKind::kString:
      return "string literal";
    default:
      return token_kind_name(token.kind);
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse() {
    std::string end_tag;
    Body body = parse_body({}, end_tag);
    return body;
  }

 private:
  // ---- token helpers
  const Token& peek(size_t ahead = 0) const {
    size_t i = pos_ + ahead;
    return i < tokens_.size() ? tokens_[i] : tokens_.back();
  }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < tokens_.size() - 1) ++pos_;
    return t;
  }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::kOperator && peek(ahead).text == op;
  }
  bool is_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::kName && peek(ahead).text == name;
  }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  [[noreturn]] void error_at(const Token& token, const std::string& message,
                             Error::Kind kind = Error::Kind::kSyntax) const {
    throw Error{kind, message, token.line, token.column};
  }
  void expect_op(const char* op) {
    if (!accept_op(op))
      error_at(peek(), std::string("expected '") + op + "', got " + describe(peek()));
  }
  std::string expect_name(const char* what) {
    if (peek().kind != TokenKind::kName) {
      error_at(peek(), std::string("expected ") + what + ", got " + describe(peek()));
    }
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != TokenKind::kBlockEnd) {
      error_at(peek(), "expected '%}' to end the statement, got " + describe(peek()));
    }
    next();
  }

  // ---- statements

  // Parses nodes until a block tag named in `end_names` (consumed up to its name, which is
  // returned in `end_tag`) or the end of the template (only when `end_names` is empty).
  Body parse_body(const std::vector<std::string>& end_names, std::string& end_tag) {
    Body body;
    const Token& start = peek();
    while (true) {
      const Token& t = peek();
      if (t.kind == TokenKind::kEnd) {
        if (end_names.empty()) return body;
        std::string expected;
        for (const auto& n : end_names) expected += (expected.empty() ? "'" : " or '") + n + "'";
        error_at(t, "unexpected end of template: expected " + expected +
                        " to close the block opened at line " + std::to_string(start.line));
      }
      if (t.kind == TokenKind::kText) {
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kText;
        node->line = t.line;
        node->text = next().text;
        body.push_back(std::move(node));
      } else if (t.kind == TokenKind::kVariableBegin) {
        next();
        auto node = std::make_unique<Node>();
        node->kind = Node::Kind::kOutput;
        node->line = t.line;
        node->expr = parse_tuple(true);
        if (peek().kind != TokenKind::kVariableEnd) {
          error_at(peek(), "expected '}}' to end the expression, got " + describe(peek()));
        }
        next();
        body.push_back(std::move(node));
      } else if (t.kind == TokenKind::kBlockBegin) {
        const Token& name = peek(1);
        if (name.kind != TokenKind::kName) error_at(name, "expected a statement name after '{%'");
        for (const auto& end_name : end_names) {
          if (name.text == end_name) {
            next();
            next();
            end_tag = end_name;
            return body;
          }
        }
        next();
        body.push_back(parse_statement());
      } else {
        error_at(t, "unexpected " + describe(t));
      }
    }
  }

  // Parses a body ending with `end_name` (and its '%}').
  Body parse_block_body(const char* end_name) {
    std::string end_tag;
    Body body = parse_body({end_name}, end_tag);
    expect_block_end();
    return body;
  }

  NodePtr parse_statement() {
    const Token& keyword = next();
    auto node = std::make_unique<Node>();
    node->line = keyword.line;
    const std::string& k = keyword.text;
    if (k == "if") {
      node->kind = Node::Kind::kIf;
      node->conditions.push_back(parse_expression(true));
      expect_block_end();
      while (true) {
        std::string end_tag;
        node->bodies.push_back(parse_body({"elif", "else", "endif"}, end_tag));
        if (end_tag == "elif") {
          node->conditions.push_back(parse_expression(true));
          expect_block_end();
        } else if (end_tag == "else") {
          expect_block_end();
          node->else_body = parse_block_body("endif");
          break;
        } else {
          expect_block_end();
          break;
        }
      }
    } else if (k == "for") {
      node->kind = Node::Kind::kFor;
      const bool parenthesized = accept_op("(");
      do {
        node->targets.push_back(expect_name("a loop variable"));
      } while (accept_op(","));
      if (parenthesized) expect_op(")");
      if (!accept_name("in"))
        error_at(peek(), "expected 'in' in the for statement, got " + describe(peek()));
      node->expr = parse_tuple(false);
      if (accept_name("if")) node->condition = parse_expression(true);
      if (is_name("recursive")) {
        error_at(peek(),
                 "recursive for loops are not supported by kbit's chat template interpreter",
                 Error::Kind::kUnsupported);
      }
      expect_block_end();
      std::string end_tag;
      node->body = parse_body({"else", "endfor"}, end_tag);
      expect_block_end();
      if (end_tag == "else") node->else_body = parse_block_body("endfor");
    } else if (k == "set") {
      node->targets.push_back(expect_name("a variable name after 'set'"));
      if (accept_op(".")) {
        node->target_object = node->targets[0];
        node->targets[0] = expect_name("an attribute name");
      }
      while (accept_op(",")) node->targets.push_back(expect_name("a variable name"));
      if (accept_op("=")) {
        node->kind = Node::Kind::kSet;
        node->expr = parse_tuple(true);
        expect_block_end();
      } else {
        if (node->targets.size() != 1 || !node->target_object.empty()) {
          error_at(peek(), "expected '=' in the set statement");
        }
        node->kind = Node::Kind::kSetBlock;
        if (is_op("|")) node->expr = parse_filter_chain(nullptr);
        expect_block_end();
        node->body = parse_block_body("endset");
      }
    } else if (k == "macro") {
      node->kind = Node::Kind::kMacro;
      node->name = expect_name("a macro name");
      parse_parameters(node->parameters);
      expect_block_end();
      node->body = parse_block_body("endmacro");
    } else if (k == "call") {
      node->kind = Node::Kind::kCallBlock;
      if (is_op("(")) parse_parameters(node->parameters);
      node->expr = parse_expression(true);
      if (node->expr->kind != Expr::Kind::kCall) error_at(keyword, "expected a call after 'call'");
      expect_block_end();
      node->body = parse_block_body("endcall");
    } else if (k == "filter") {
      node->kind = Node::Kind::kFilterBlock;
      node->expr = parse_filter_chain(nullptr, /*leading_bar=*/false);
      expect_block_end();
      node->body = parse_block_body("endfilter");
    } else if (k == "with") {
      node->kind = Node::Kind::kWith;
      while (peek().kind != TokenKind::kBlockEnd) {
        if (!node->targets.empty()) expect_op(",");
        node->targets.push_back(expect_name("a variable name"));
        expect_op("=");
        node->values.push_back(parse_expression(true));
      }
      expect_block_end();
      node->body = parse_block_body("endwith");
    } else if (k == "break" || k == "continue") {
      node->kind = k == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      expect_block_end();
    } else if (k == "generation") {
      node->kind = Node::Kind::kGeneration;
      expect_block_end();
      node->body = parse_block_body("endgeneration");
    } else if (k == "extends" || k == "include" || k == "import" || k == "from" || k == "block" ||
               k == "raw" || k == "do" || k == "autoescape" || k == "trans") {
      error_at(keyword,
               "the '" + k + "' statement is not supported by kbit's chat template interpreter",
               Error::Kind::kUnsupported);
    } else {
      error_at(keyword, "unknown statement '" + k + "'");
    }
    return node;
  }

  void parse_parameters(std::vector<Parameter>& parameters) {
    expect_op("(");
    while (!accept_op(")")) {
      if (!parameters.empty()) expect_op(",");
      if (accept_op(")")) break;
      Parameter p;
      p.name = expect_name("a parameter name");
      if (accept_op("=")) p.default_value = parse_expression(true);
      parameters.push_back(std::move(p));
    }
  }

  // ---- expressions

  ExprPtr make(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->column = at.column;
    return e;
  }

  // An expression, or a tuple of expressions separated by commas (without parentheses).
  ExprPtr parse_tuple(bool with_condition) {
    const Token& start = peek();
    ExprPtr first = parse_expression(with_condition);
    if (!is_op(",")) return first;
    auto tuple = make(Expr::Kind::kTuple, start);
    tuple->operands.push_back(std::move(first));
    while (accept_op(",")) {
      if (peek().kind == TokenKind::kBlockEnd || peek().kind == TokenKind::kVariableEnd) break;
      tuple->operands.push_back(parse_expression(with_condition));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condition) {
    if (!with_condition) return parse_or();
    const Token& start = peek();
    ExprPtr expr = parse_or();
    while (accept_name("if")) {
      auto cond = make(Expr::Kind::kCondition, start);
      cond->operands.push_back(parse_or());
      cond->operands.push_back(std::move(expr));
      cond->operands.push_back(accept_name("else") ? parse_expression(true) : nullptr);
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr binary(const Token& at, const std::string& op, ExprPtr left, ExprPtr right) {
    auto e = make(Expr::Kind::kBinary, at);
    e->name = op;
    e->operands.push_back(std::move(left));
    e->operands.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Token& at = next();
      left = binary(at, "or", std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Token& at = next();
      left = binary(at, "and", std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token& at = next();
      auto e = make(Expr::Kind::kUnary, at);
      e->name = "not";
      e->operands.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token& start = peek();
    ExprPtr first = parse_math1();
    ExprPtr compare;
    while (true) {
      std::string op;
      if (peek().kind == TokenKind::kOperator &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
           peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!compare) {
        compare = make(Expr::Kind::kCompare, start);
        compare->operands.push_back(std::move(first));
      }
      compare->ops.push_back(op);
      compare->operands.push_back(parse_math1());
    }
    return compare ? std::move(compare) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = next();
      left = binary(at, at.text, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token& at = next();
      left = binary(at, "~", std::move(left), parse_math2());
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = next();
      left = binary(at, at.text, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const Token& at = next();
      left = binary(at, "**", std::move(left), parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& at = next();
      node = make(Expr::Kind::kUnary, at);
      node->name = at.text;
      node->operands.push_back(parse_unary(false));
    } else {
      node = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(node)) : std::move(node);
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.kind) {
      case TokenKind::kName: {
        next();
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = make(Expr::Kind::kLiteral, t);
          e->value = Value(t.text == "true" || t.text == "True");
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = make(Expr::Kind::kLiteral, t);
          e->value = Value::none();
          return e;
        }
        auto e = make(Expr::Kind::kName, t);
        e->name = t.text;
        return e;
      }
      case TokenKind::kString: {
        std::string s;
        while (peek().kind == TokenKind::kString) s += next().text;
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value(std::move(s));
        return e;
      }
      case TokenKind::kInteger: {
        next();
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value(static_cast<int64_t>(std::strtoll(t.text.c_str(), nullptr, 10)));
        return e;
      }
      case TokenKind::kFloat: {
        next();
        auto e = make(Expr::Kind::kLiteral, t);
        e->value = Value(std::strtod(t.text.c_str(), nullptr));
        return e;
      }
      case TokenKind::kOperator:
        if (t.text == "(") {
          next();
          if (accept_op(")")) return make(Expr::Kind::kTuple, t);
          ExprPtr inner = parse_expression(true);
          if (is_op(",")) {
            auto tuple = make(Expr::Kind::kTuple, t);
            tuple->operands.push_back(std::move(inner));
            while (accept_op(",")) {
              if (is_op(")")) break;
              tuple->operands.push_back(parse_expression(true));
            }
            inner = std::move(tuple);
          }
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          next();
          auto list = make(Expr::Kind::kList, t);
          while (!accept_op("]")) {
            if (!list->operands.empty()) {
              expect_op(",");
              if (accept_op("]")) break;
            }
            list->operands.push_back(parse_expression(true));
          }
          return list;
        }
        if (t.text == "{") {
          next();
          auto dict = make(Expr::Kind::kDict, t);
          while (!accept_op("}")) {
            if (!dict->operands.empty()) {
              expect_op(",");
              if (accept_op("}")) break;
            }
            dict->operands.push_back(parse_expression(true));
            expect_op(":");
            dict->operands.push_back(parse_expression(true));
          }
          return dict;
        }
        break;
      default:
        break;
    }
    error_at(t, "unexpected " + describe(t) + " where an expression was expected");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      const Token& t = peek();
      if (is_op(".")) {
        next();
        const Token& attr = next();
        if (attr.kind == TokenKind::kName) {
          auto e = make(Expr::Kind::kAttribute, t);
          e->name = attr.text;
          e->operands.push_back(std::move(node));
          node = std::move(e);
        } else if (attr.kind == TokenKind::kInteger) {
          auto e = make(Expr::Kind::kItem, t);
          e->operands.push_back(std::move(node));
          auto index = make(Expr::Kind::kLiteral, attr);
          index->value = Value(static_cast<int64_t>(std::strtoll(attr.text.c_str(), nullptr, 10)));
          e->operands.push_back(std::move(index));
          node = std::move(e);
        } else {
          error_at(attr, "expected an attribute name after '.', got " + describe(attr));
        }
      } else if (is_op("[")) {
        next();
        node = parse_subscript(t, std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(const Token& at, ExprPtr object) {
    ExprPtr parts[3];
    bool is_slice = false;
    if (!is_op(":")) parts[0] = parse_expression(true);
    if (accept_op(":")) {
      is_slice = true;
      if (!is_op("]") && !is_op(":")) parts[1] = parse_expression(true);
      if (accept_op(":") && !is_op("]")) parts[2] = parse_expression(true);
    }
    expect_op("]");
    auto e = make(is_slice ? Expr::Kind::kSlice : Expr::Kind::kItem, at);
    e->operands.push_back(std::move(object));
    e->operands.push_back(std::move(parts[0]));
    if (is_slice) {
      e->operands.push_back(std::move(parts[1]));
      e->operands.push_back(std::move(parts[2]));
    }
    return e;
  }

  void parse_arguments(Expr& e) {
    expect_op("(");
    while (!accept_op(")")) {
      if (!e.args.empty() || !e.kwargs.empty()) {
        expect_op(",");
        if (accept_op(")")) break;
      }
      if (is_op("*") || is_op("**")) {
        error_at(peek(),
                 "*args and **kwargs in calls are not supported by kbit's chat template "
                 "interpreter",
                 Error::Kind::kUnsupported);
      }
      if (peek().kind == TokenKind::kName && is_op("=", 1)) {
        std::string name = next().text;
        next();
        e.kwargs.emplace_back(name, parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error_at(peek(), "positional argument after keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Kind::kCall, peek());
    e->operands.push_back(std::move(callee));
    parse_arguments(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter_chain(std::move(node));
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  // One or more filters `| name(args)` applied to `operand` (null in filter blocks).
  ExprPtr parse_filter_chain(ExprPtr operand, bool leading_bar = true) {
    bool first = true;
    while ((first && !leading_bar) || accept_op("|")) {
      first = false;
      const Token& at = peek();
      auto e = make(Expr::Kind::kFilter, at);
      e->name = expect_name("a filter name");
      if (is_op("(")) parse_arguments(*e);
      e->operands.push_back(std::move(operand));
      operand = std::move(e);
    }
    return operand;
  }

  ExprPtr parse_test(ExprPtr node) {
    const Token& at = next();  // 'is'
    auto e = make(Expr::Kind::kTest, at);
    e->negated = accept_name("not");
    e->name = expect_name("a test name after 'is'");
    e->operands.push_back(std::move(node));
    const Token& t = peek();
    if (is_op("(")) {
      parse_arguments(*e);
    } else if ((t.kind == TokenKind::kName || t.kind == TokenKind::kString ||
                t.kind == TokenKind::kInteger || t.kind == TokenKind::kFloat || is_op("[") ||
                is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") &&
               !is_name("in") && !is_name("not") && !is_name("is")) {
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) {
  return Parser(tokenize(source)).parse();
}

}  // namespace kbit::generate::jinja
