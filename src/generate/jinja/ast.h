// The syntax tree of a Jinja template: expressions (Expr) and statements (Node).
//
// Each node is one struct with a kind; the fields a kind uses are listed beside it. Every node
// keeps the template line (and, for expressions, column) it starts at, for error messages.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "generate/jinja/value.h"

namespace kbit::generate::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // operands: the items
    kTuple,      // operands: the items
    kDict,       // operands: key, value, key, value, ...
    kAttribute,  // operands[0].name
    kItem,       // operands[0][operands[1]]
    kSlice,      // operands[0][operands[1]:operands[2]:operands[3]]; missing parts are null
    kCall,       // operands[0](args, kwargs)
    kFilter,     // operands[0] | name(args, kwargs); operands[0] null in a filter block
    kTest,       // operands[0] is [not: negated] name(args)
    kUnary,      // name ("-", "+", "not") operands[0]
    kBinary,     // operands[0] name operands[1]: + - * / // % ** ~ and or
    kCompare,    // operands[0] ops[0] operands[1] ops[1] operands[2] ...: == != < <= > >= in notin
    kCondition,  // operands[1] if operands[0] else operands[2] (null: undefined)
  };
  Kind kind;
  int line = 0;
  int column = 0;
  Value value;
  std::string name;
  bool negated = false;
  std::vector<ExprPtr> operands;
  std::vector<std::string> ops;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

// A macro parameter: its name and default (null: required).
struct Parameter {
  std::string name;
  ExprPtr default_value;
};

struct Node {
  enum class Kind {
    kText,         // text
    kOutput,       // {{ expr }}
    kIf,           // conditions[i] -> bodies[i]; else_body
    kFor,          // for targets in expr [if condition]: body; else_body
    kSet,          // set targets (or target_object.targets[0]) = expr
    kSetBlock,     // set targets[0]: body rendered; expr: the filter chain or null
    kMacro,        // macro name(parameters): body
    kCallBlock,    // call(parameters) expr: body is the caller
    kFilterBlock,  // filter expr (a filter chain on null): body
    kWith,         // with targets[i] = values[i]: body
    kBreak,
    kContinue,
    kGeneration,  // transformers' {% generation %}: renders body
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::string name;
  std::string target_object;  // set ns.attr: "ns"
  std::vector<std::string> targets;
  ExprPtr expr;
  ExprPtr condition;
  std::vector<ExprPtr> conditions;
  std::vector<ExprPtr> values;
  std::vector<Body> bodies;
  Body body;
  Body else_body;
  std::vector<Parameter> parameters;
};

}  // namespace kbit::generate::jinja
