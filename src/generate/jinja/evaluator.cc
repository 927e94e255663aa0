#include "generate/jinja/evaluator.h"

#include <cmath>
#include <ctime>
#include <map>

#include "generate/jinja/builtins.h"
#include "generate/jinja/error.h"

namespace kbit::generate::jinja {

namespace {

// jinja2's sandbox refuses ranges longer than this.
constexpr int64_t kMaxRange = 100000;

enum class Flow { kNormal, kBreak, kContinue };

using Frame = std::map<std::string, Value>;
using FramePtr = std::shared_ptr<Frame>;

[[noreturn]] void fail_undefined(const Value& v) {
  fail(v.undefined_hint());
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  auto type_error = [&]() -> Value {
    fail("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" +
         b.type_name() + "'");
  };
  if (a.is_number() && b.is_number()) {
    const bool use_float = a.is_float() || b.is_float();
    const double x = a.as_double();
    const double y = b.as_double();
    const int64_t i = a.as_int();
    const int64_t j = b.as_int();
    if (op == "+") return use_float ? Value(x + y) : Value(i + j);
    if (op == "-") return use_float ? Value(x - y) : Value(i - j);
    if (op == "*") return use_float ? Value(x * y) : Value(i * j);
    if (op == "/") {
      if (y == 0.0) fail("division by zero");
      return Value(x / y);
    }
    if (op == "//") {
      if (y == 0.0) fail("integer division or modulo by zero");
      return use_float ? Value(std::floor(x / y)) : Value(floor_div(i, j));
    }
    if (op == "%") {
      if (y == 0.0) fail("integer division or modulo by zero");
      if (use_float) {
        double r = std::fmod(x, y);
        if (r != 0.0 && ((r < 0) != (y < 0))) r += y;
        return Value(r);
      }
      return Value(i - floor_div(i, j) * j);
    }
    if (op == "**") {
      if (!use_float && j >= 0) {
        int64_t result = 1;
        for (int64_t k = 0; k < j; ++k) result *= i;
        return Value(result);
      }
      return Value(std::pow(x, y));
    }
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      Value::List items = a.as_list();
      items.insert(items.end(), b.as_list().begin(), b.as_list().end());
      return Value::list(std::move(items), a.is_tuple());
    }
  }
  if (op == "*") {
    const Value& seq = a.is_int() ? b : a;
    const Value& count = a.is_int() ? a : b;
    if (count.is_int() && (seq.is_string() || seq.is_list())) {
      std::string s;
      Value::List items;
      for (int64_t k = 0; k < count.as_int(); ++k) {
        if (seq.is_string()) {
          s += seq.as_string();
        } else {
          items.insert(items.end(), seq.as_list().begin(), seq.as_list().end());
        }
      }
      return seq.is_string() ? Value(s) : Value::list(std::move(items), seq.is_tuple());
    }
  }
  if (op == "%" && a.is_string()) {
    fail(
        "printf-style string formatting ('...' % x) is not supported by kbit's chat template "
        "interpreter",
        Error::Kind::kUnsupported);
  }
  return type_error();
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a == b;
  if (op == "!=") return !(a == b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (op == "<") return less_than(a, b);
  if (op == ">") return less_than(b, a);
  if (op == "<=") return !less_than(b, a);
  return !less_than(a, b);  // >=
}

class Renderer {
 public:
  explicit Renderer(const Value& context) {
    auto root = std::make_shared<Frame>();
    add_globals(*root);
    for (const auto& [key, value] : context.as_dict()) (*root)[key] = value;
    frames_.push_back(root);
  }

  std::string run(const Body& body) {
    std::string out;
    exec(body, out);
    return out;
  }

 private:
  // ---- scopes

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::string& name, Value value) { (*frames_.back())[name] = std::move(value); }

  // Binds `value` to `targets`: one name, or several unpacked from a sequence.
  void bind(const std::vector<std::string>& targets, const Value& value) {
    if (targets.size() == 1) {
      assign(targets[0], value);
      return;
    }
    const Value::List items = value.iterate();
    if (items.size() != targets.size()) {
      fail("cannot unpack " + std::to_string(items.size()) + " values into " +
           std::to_string(targets.size()) + " variables");
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  void add_globals(Frame& frame) {
    frame["range"] = Value::function("range", [](const CallArgs& a) {
      if (a.positional.empty() || a.positional.size() > 3) fail("range() takes 1 to 3 arguments");
      for (const auto& v : a.positional) {
        if (!v.is_int() && !v.is_bool()) fail("range() arguments must be integers");
      }
      int64_t start = 0;
      int64_t stop = a.positional[0].as_int();
      int64_t step = 1;
      if (a.positional.size() >= 2) {
        start = a.positional[0].as_int();
        stop = a.positional[1].as_int();
      }
      if (a.positional.size() == 3) step = a.positional[2].as_int();
      if (step == 0) fail("range() arg 3 must not be zero");
      Value::List items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(items.size()) >= kMaxRange) {
          fail("range too big: the sandbox allows at most " + std::to_string(kMaxRange) + " items");
        }
        items.emplace_back(i);
      }
      return Value::list(std::move(items));
    });
    auto make_dict = [](const CallArgs& a, bool is_namespace) {
      Value result = Value::dict({}, is_namespace);
      for (const auto& v : a.positional) {
        if (!v.is_dict()) fail("expected a mapping as positional argument");
        for (const auto& [key, item] : v.as_dict()) result.set(key, item);
      }
      for (const auto& [key, item] : a.keyword) {
        if (is_namespace && !key.empty() && key[0] == '_') {
          fail(
              "Chat templates cannot store underscore-prefixed attributes on a namespace, but "
              "got '" +
              key + "'. Please rename the attribute.");
        }
        result.set(key, item);
      }
      return result;
    };
    frame["namespace"] =
        Value::function("namespace", [make_dict](const CallArgs& a) { return make_dict(a, true); });
    frame["dict"] =
        Value::function("dict", [make_dict](const CallArgs& a) { return make_dict(a, false); });
    frame["raise_exception"] = Value::function("raise_exception", [](const CallArgs& a) -> Value {
      const Value* message = a.find(0, "message");
      throw Error{Error::Kind::kRaised, message != nullptr ? message->str() : "", 0, 0};
    });
    frame["strftime_now"] = Value::function("strftime_now", [](const CallArgs& a) {
      const Value* format = a.find(0, "format");
      if (format == nullptr || !format->is_string()) fail("strftime_now() needs a format string");
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const size_t n = std::strftime(buffer, sizeof(buffer), format->as_string().c_str(), &local);
      return Value(std::string(buffer, n));
    });
  }

  // ---- statements

  Flow exec(const Body& body, std::string& out) {
    for (const auto& node : body) {
      Flow flow = Flow::kNormal;
      try {
        flow = exec_node(*node, out);
      } catch (Error& error) {
        if (error.line == 0) error.line = node->line;
        throw;
      }
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  std::string capture(const Body& body) {
    std::string out;
    exec(body, out);
    return out;
  }

  Flow exec_node(const Node& node, std::string& out) {
    switch (node.kind) {
      case Node::Kind::kText:
        out += node.text;
        return Flow::kNormal;
      case Node::Kind::kOutput:
        out += eval(*node.expr).str();
        return Flow::kNormal;
      case Node::Kind::kIf:
        for (size_t i = 0; i < node.conditions.size(); ++i) {
          if (eval(*node.conditions[i]).truthy()) return exec(node.bodies[i], out);
        }
        return exec(node.else_body, out);
      case Node::Kind::kFor:
        return exec_for(node, out);
      case Node::Kind::kSet: {
        Value value = eval(*node.expr);
        if (!node.target_object.empty()) {
          Value object = lookup(node.target_object);
          if (!object.is_namespace()) {
            fail("cannot assign attribute on non-namespace object '" + node.target_object +
                 "' (use namespace() to change a variable from inside a loop)");
          }
          if (!node.targets[0].empty() && node.targets[0][0] == '_') {
            fail("Chat templates cannot store underscore-prefixed attributes on a namespace");
          }
          object.set(node.targets[0], std::move(value));
        } else {
          bind(node.targets, value);
        }
        return Flow::kNormal;
      }
      case Node::Kind::kSetBlock: {
        Value value(capture(node.body));
        if (node.expr) value = apply_filters(*node.expr, value);
        assign(node.targets[0], std::move(value));
        return Flow::kNormal;
      }
      case Node::Kind::kMacro:
        assign(node.name, make_macro(node));
        return Flow::kNormal;
      case Node::Kind::kCallBlock:
        out += call_block(node).str();
        return Flow::kNormal;
      case Node::Kind::kFilterBlock:
        out += apply_filters(*node.expr, Value(capture(node.body))).str();
        return Flow::kNormal;
      case Node::Kind::kWith: {
        std::vector<Value> values;
        for (const auto& v : node.values) values.push_back(eval(*v));
        frames_.push_back(std::make_shared<Frame>());
        for (size_t i = 0; i < values.size(); ++i) assign(node.targets[i], values[i]);
        Flow flow = exec(node.body, out);
        frames_.pop_back();
        return flow;
      }
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
      case Node::Kind::kGeneration:
        return exec(node.body, out);
    }
    return Flow::kNormal;
  }

  Flow exec_for(const Node& node, std::string& out) {
    const Value iterable = eval(*node.expr);
    if (!iterable.is_undefined() && !iterable.is_list() && !iterable.is_dict() &&
        !iterable.is_string()) {
      fail("'" + iterable.type_name() + "' object is not iterable");
    }
    Value::List items = iterable.iterate();
    if (node.condition) {
      Value::List kept;
      for (const auto& item : items) {
        frames_.push_back(std::make_shared<Frame>());
        bind(node.targets, item);
        const bool keep = eval(*node.condition).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      const size_t at = static_cast<size_t>(i);
      Value loop = Value::dict({});
      loop.set("index", Value(i + 1));
      loop.set("index0", Value(i));
      loop.set("revindex", Value(n - i));
      loop.set("revindex0", Value(n - i - 1));
      loop.set("first", Value(i == 0));
      loop.set("last", Value(i == n - 1));
      loop.set("length", Value(n));
      loop.set("depth", Value(static_cast<int64_t>(1)));
      loop.set("depth0", Value(static_cast<int64_t>(0)));
      if (i > 0) loop.set("previtem", items[at - 1]);
      if (i + 1 < n) loop.set("nextitem", items[at + 1]);
      loop.set("cycle", Value::function("loop.cycle", [i](const CallArgs& a) {
                 if (a.positional.empty()) fail("loop.cycle() needs at least one argument");
                 return a.positional[static_cast<size_t>(i) % a.positional.size()];
               }));
      frames_.push_back(std::make_shared<Frame>());
      assign("loop", loop);
      bind(node.targets, items[at]);
      Flow flow = exec(node.body, out);
      frames_.pop_back();
      if (flow == Flow::kBreak) break;
    }
    if (n == 0) return exec(node.else_body, out);
    return Flow::kNormal;
  }

  Value make_macro(const Node& node) {
    return Value::function(node.name, [this, &node](const CallArgs& a) {
      if (a.positional.size() > node.parameters.size()) {
        fail("macro '" + node.name + "' takes " + std::to_string(node.parameters.size()) +
             " arguments, got " + std::to_string(a.positional.size()));
      }
      std::vector<FramePtr> saved = frames_;
      frames_ = {saved.front(), std::make_shared<Frame>()};
      try {
        for (const auto& [key, value] : a.keyword) {
          bool known = key == "caller";
          for (const auto& p : node.parameters) known = known || p.name == key;
          if (!known) fail("macro '" + node.name + "' takes no keyword argument '" + key + "'");
          assign(key, value);
        }
        for (size_t i = 0; i < node.parameters.size(); ++i) {
          const Parameter& p = node.parameters[i];
          if (i < a.positional.size()) {
            assign(p.name, a.positional[i]);
          } else if (frames_.back()->count(p.name) == 0) {
            assign(p.name, p.default_value
                               ? eval(*p.default_value)
                               : Value::undefined("parameter '" + p.name + "' was not provided"));
          }
        }
        std::string out = capture(node.body);
        frames_ = std::move(saved);
        return Value(out);
      } catch (...) {
        frames_ = std::move(saved);
        throw;
      }
    });
  }

  Value call_block(const Node& node) {
    const Expr& call = *node.expr;
    Value callee = eval(*call.operands[0]);
    CallArgs args = eval_arguments(call);
    std::vector<FramePtr> call_site = frames_;
    args.keyword.emplace_back(
        "caller", Value::function("caller", [this, &node, call_site](const CallArgs& a) {
          std::vector<FramePtr> saved = frames_;
          frames_ = call_site;
          frames_.push_back(std::make_shared<Frame>());
          try {
            for (size_t i = 0; i < node.parameters.size(); ++i) {
              const Parameter& p = node.parameters[i];
              const Value* v = a.find(i, p.name);
              assign(p.name, v != nullptr      ? *v
                             : p.default_value ? eval(*p.default_value)
                                               : Value::undefined("'" + p.name + "' is undefined"));
            }
            std::string out = capture(node.body);
            frames_ = std::move(saved);
            return Value(out);
          } catch (...) {
            frames_ = std::move(saved);
            throw;
          }
        }));
    return call_value(callee, args);
  }

  // ---- expressions

  CallArgs eval_arguments(const Expr& e) {
    CallArgs args;
    for (const auto& a : e.args) args.positional.push_back(eval(*a));
    for (const auto& [key, a] : e.kwargs) args.keyword.emplace_back(key, eval(*a));
    return args;
  }

  Value call_value(const Value& callee, const CallArgs& args) {
    if (callee.is_undefined()) fail_undefined(callee);
    if (!callee.is_function()) fail("'" + callee.type_name() + "' object is not callable");
    return callee.call(args);
  }

  // Applies a chain of kFilter nodes whose innermost operand is null to `input`.
  Value apply_filters(const Expr& e, const Value& input) {
    Value operand = e.operands[0] ? apply_filters(*e.operands[0], input) : input;
    return apply_filter(e.name, operand, eval_arguments(e));
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        Value::List items;
        for (const auto& item : e.operands) items.push_back(eval(*item));
        return Value::list(std::move(items), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Value dict = Value::dict({});
        for (size_t i = 0; i + 1 < e.operands.size(); i += 2) {
          Value key = eval(*e.operands[i]);
          if (!key.is_string()) {
            fail("dict literal keys must be strings in kbit's chat template interpreter, got " +
                     key.type_name(),
                 Error::Kind::kUnsupported);
          }
          dict.set(key.as_string(), eval(*e.operands[i + 1]));
        }
        return dict;
      }
      case Expr::Kind::kAttribute:
        return get_attribute(eval(*e.operands[0]), e.name);
      case Expr::Kind::kItem:
        return get_item(eval(*e.operands[0]), eval(*e.operands[1]));
      case Expr::Kind::kSlice: {
        Value object = eval(*e.operands[0]);
        Value bounds[3];
        const Value* parts[3] = {nullptr, nullptr, nullptr};
        for (int i = 0; i < 3; ++i) {
          if (e.operands[static_cast<size_t>(i) + 1]) {
            bounds[i] = eval(*e.operands[static_cast<size_t>(i) + 1]);
            parts[i] = &bounds[i];
          }
        }
        return get_slice(object, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::kCall:
        return call_value(eval(*e.operands[0]), eval_arguments(e));
      case Expr::Kind::kFilter:
        return apply_filter(e.name, eval(*e.operands[0]), eval_arguments(e));
      case Expr::Kind::kTest: {
        const bool result = apply_test(e.name, eval(*e.operands[0]), eval_arguments(e));
        return Value(e.negated ? !result : result);
      }
      case Expr::Kind::kUnary: {
        Value v = eval(*e.operands[0]);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_undefined()) fail_undefined(v);
        if (!v.is_number())
          fail("bad operand type for unary " + e.name + ": '" + v.type_name() + "'");
        if (e.name == "+") return v.is_float() ? v : Value(v.as_int());
        return v.is_float() ? Value(-v.as_double()) : Value(-v.as_int());
      }
      case Expr::Kind::kBinary: {
        if (e.name == "and" || e.name == "or") {
          Value left = eval(*e.operands[0]);
          if (left.truthy() == (e.name == "or")) return left;
          return eval(*e.operands[1]);
        }
        Value left = eval(*e.operands[0]);
        Value right = eval(*e.operands[1]);
        if (e.name == "~") return Value(left.str() + right.str());
        return arithmetic(e.name, left, right);
      }
      case Expr::Kind::kCompare: {
        Value left = eval(*e.operands[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.operands[i + 1]);
          if (!compare(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kCondition:
        if (eval(*e.operands[0]).truthy()) return eval(*e.operands[1]);
        if (e.operands[2]) return eval(*e.operands[2]);
        return Value::undefined("the inline if expression evaluated to false and has no else");
    }
    return Value();
  }

  std::vector<FramePtr> frames_;
};

}  // namespace

std::string render(const Body& body, const Value& context) {
  return Renderer(context).run(body);
}

}  // namespace kbit::generate::jinja
