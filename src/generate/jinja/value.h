// The values of the Jinja interpreter, with Python's semantics: what a chat template sees of its
// context (JSON turned into None, bool, int, float, str, list and dict) and what it builds
// (tuples, namespaces, macros, bound methods).
//
// Lists and dicts are shared by reference, as in Python; the sandbox transformers uses forbids
// mutating them, so only a namespace is ever changed after it is built. Undefined is the value of
// a missing variable, attribute or item; it remembers why it is undefined for the error raised
// when it is used where jinja2's Undefined raises.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kbit::generate::jinja {

class Value;

// Arguments of a call: positional, then keyword in call order.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // The argument at `index` or named `name`, or nullptr.
  const Value* find(size_t index, const std::string& name) const;
};

using Function = std::function<Value(const CallArgs&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };
  using List = std::vector<Value>;
  // A dict keeps insertion order, like Python's; keys are strings.
  using Dict = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // undefined
  static Value undefined(std::string hint);
  static Value none();
  Value(bool b);  // NOLINT: implicit by design, as are the constructors below
  Value(int64_t i);
  Value(int i) : Value(static_cast<int64_t>(i)) {}
  Value(double f);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(List items, bool is_tuple = false);
  static Value dict(Dict entries, bool is_namespace = false);
  static Value function(std::string name, Function fn);
  // JSON objects become dicts in the object's iteration order (sorted for nlohmann::json,
  // insertion order for nlohmann::ordered_json).
  static Value from_json(const nlohmann::json& json);
  static Value from_json(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const {
    return is_bool() || is_int() || is_float();
  }  // Python: bool is a Number
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return is_list() && is_tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return is_dict() && is_namespace_; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool as_bool() const { return bool_; }
  int64_t as_int() const { return is_bool() ? (bool_ ? 1 : 0) : int_; }  // bool, int
  double as_double() const;                                              // bool, int, float
  const std::string& as_string() const { return string_; }
  const List& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& mutable_dict() { return *dict_; }  // namespaces only
  const std::string& undefined_hint() const { return string_; }
  const std::string& function_name() const { return string_; }
  Value call(const CallArgs& args) const { return (*function_)(args); }

  // The entry of a dict, or nullptr.
  const Value* find(const std::string& key) const;
  // Sets an entry of a namespace (or dict being built), keeping insertion order.
  void set(const std::string& key, Value value);

  // Python truth: None, False, 0, 0.0, "", [], {} and undefined are false.
  bool truthy() const;
  // Python's str(): what {{ value }} prints. Undefined prints as "".
  std::string str() const;
  // Python's repr(): how a value prints inside a list or dict.
  std::string repr() const;
  // Python's type name, for error messages ("str", "list", "dict", ...).
  std::string type_name() const;
  // The elements iterating yields: list items, dict keys, string characters, nothing for
  // undefined; fails for other kinds.
  List iterate() const;

  // Python ==.
  friend bool operator==(const Value& a, const Value& b);

 private:
  Kind kind_ = Kind::kUndefined;
  bool bool_ = false;
  bool is_tuple_ = false;
  bool is_namespace_ = false;
  int64_t int_ = 0;
  double float_ = 0.0;
  std::string string_;  // the string, the undefined hint or the function name
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> function_;
};

// Python's repr() of a float: the shortest string that reads back to it ("1.0", "1e+20").
std::string python_float_repr(double value);

// json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys) with the default
// separators; indent < 0 means None. Fails for undefined and functions, as json.dumps does.
std::string to_json(const Value& value, int indent, bool sort_keys);

}  // namespace kbit::generate::jinja
