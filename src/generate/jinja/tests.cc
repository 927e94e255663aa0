// The built-in tests of `x is name(args)`, as jinja2 defines them.
#include "generate/jinja/builtins.h"
#include "generate/jinja/error.h"
#include "generate/jinja/text.h"

namespace kbit::generate::jinja {

namespace {

const Value& test_argument(const std::string& test, const CallArgs& args) {
  if (args.positional.empty()) fail("the test '" + test + "' needs an argument");
  return args.positional[0];
}

int64_t integer_operand(const std::string& test, const Value& v) {
  if (!v.is_int() && !v.is_bool()) {
    fail("the test '" + test + "' needs an integer, got " + v.type_name());
  }
  return v.as_int();
}

}  // namespace

bool apply_test(const std::string& name, const Value& v, const CallArgs& args) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "mapping") return v.is_dict() && !v.is_namespace();
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_string() || v.is_list() || (v.is_dict() && !v.is_namespace());
  if (name == "callable") return v.is_function();
  if (name == "even") return integer_operand(name, v) % 2 == 0;
  if (name == "odd") return integer_operand(name, v) % 2 != 0;
  if (name == "divisibleby") {
    const int64_t d = integer_operand(name, test_argument(name, args));
    if (d == 0) fail("integer division or modulo by zero in the test 'divisibleby'");
    return integer_operand(name, v) % d == 0;
  }
  if (name == "lower")
    return v.is_string() && python_lower(v.as_string()) == v.as_string() &&
           python_upper(v.as_string()) != v.as_string();
  if (name == "upper")
    return v.is_string() && python_upper(v.as_string()) == v.as_string() &&
           python_lower(v.as_string()) != v.as_string();
  if (name == "escaped") return false;
  if (name == "sameas") {
    const Value& other = test_argument(name, args);
    if (v.is_list() || v.is_dict() || v.is_function()) return false;
    return v.kind() == other.kind() && v == other;
  }
  if (name == "equalto" || name == "eq" || name == "==") return v == test_argument(name, args);
  if (name == "ne" || name == "!=") return !(v == test_argument(name, args));
  if (name == "lt" || name == "lessthan" || name == "<") {
    return less_than(v, test_argument(name, args));
  }
  if (name == "gt" || name == "greaterthan" || name == ">") {
    return less_than(test_argument(name, args), v);
  }
  if (name == "le" || name == "<=") return !less_than(test_argument(name, args), v);
  if (name == "ge" || name == ">=") return !less_than(v, test_argument(name, args));
  if (name == "in") {
    return contains(test_argument(name, args), v);
  }
  fail("the test '" + name + "' is not supported by kbit's chat template interpreter",
       Error::Kind::kUnsupported);
}

}  // namespace kbit::generate::jinja
