// Attribute, item and slice access, and the methods of str, dict and list that the sandbox allows.
#include <algorithm>

#include "generate/jinja/builtins.h"
#include "generate/jinja/error.h"
#include "generate/jinja/text.h"

namespace kbit::generate::jinja {

namespace {

std::string object_name(const Value& v) {
  if (v.is_none()) return "None";
  std::string name = "'";  // built in steps: GCC 12 warns falsely on "'" + std::string
  name += v.type_name();
  name += " object'";
  return name;
}

const Value& arg(const CallArgs& args, size_t index, const char* name, const char* method) {
  const Value* v = args.find(index, name);
  if (v == nullptr) fail(std::string(method) + "() is missing the argument '" + name + "'");
  return *v;
}

const std::string& string_arg(const CallArgs& args, size_t index, const char* name,
                              const char* method) {
  const Value& v = arg(args, index, name, method);
  if (!v.is_string()) {
    fail(std::string(method) + "() argument '" + name + "' must be str, not " + v.type_name());
  }
  return v.as_string();
}

int64_t optional_int(const CallArgs& args, size_t index, const char* name, int64_t fallback) {
  const Value* v = args.find(index, name);
  if (v == nullptr || v->is_none()) return fallback;
  if (!v->is_int() && !v->is_bool()) fail(std::string("'") + name + "' must be an integer");
  return v->as_int();
}

// The chars argument of strip/lstrip/rstrip: "" (whitespace) when absent or None.
std::string strip_chars(const CallArgs& args) {
  const Value* v = args.find(0, "chars");
  if (v == nullptr || v->is_none()) return "";
  if (!v->is_string()) fail("strip() argument must be str or None");
  return v->as_string();
}

bool affix_match(const Value& s, const Value& affix, bool at_start) {
  auto one = [&](const std::string& a) {
    const std::string& text = s.as_string();
    if (a.size() > text.size()) return false;
    return at_start ? text.compare(0, a.size(), a) == 0
                    : text.compare(text.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_string()) return one(affix.as_string());
  if (affix.is_list() && affix.is_tuple()) {
    for (const auto& a : affix.as_list()) {
      if (a.is_string() && one(a.as_string())) return true;
    }
    return false;
  }
  fail(std::string(at_start ? "startswith" : "endswith") +
       "() first arg must be str or a tuple of str, not " + affix.type_name());
}

Value string_method(const Value& self, const std::string& name) {
  const std::string& s = self.as_string();
  auto method = [&](Function fn) { return Value::function("str." + name, std::move(fn)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip";
    const bool right = name != "lstrip";
    return method([s, left, right](const CallArgs& a) -> Value {
      const std::string chars = strip_chars(a);
      if (chars.empty() && a.find(0, "chars") != nullptr && !a.find(0, "chars")->is_none()) {
        return Value(s);  // strip("") strips nothing
      }
      return Value(python_strip(s, chars, left, right));
    });
  }
  if (name == "split") {
    return method([s](const CallArgs& a) -> Value {
      const Value* sep = a.find(0, "sep");
      const int64_t maxsplit = optional_int(a, 1, "maxsplit", -1);
      if (sep != nullptr && !sep->is_none()) {
        if (!sep->is_string()) fail("split() separator must be str or None");
        if (sep->as_string().empty()) fail("split(): empty separator");
      }
      const std::string* sep_text = sep != nullptr && !sep->is_none() ? &sep->as_string() : nullptr;
      Value::List parts;
      for (auto& p : python_split(s, sep_text, maxsplit)) parts.emplace_back(std::move(p));
      return Value::list(std::move(parts));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool at_start = name == "startswith";
    return method([self, at_start](const CallArgs& a) -> Value {
      return Value(
          affix_match(self, arg(a, 0, "prefix", at_start ? "startswith" : "endswith"), at_start));
    });
  }
  if (name == "upper") return method([s](const CallArgs&) { return Value(python_upper(s)); });
  if (name == "lower") return method([s](const CallArgs&) { return Value(python_lower(s)); });
  if (name == "title") return method([s](const CallArgs&) { return Value(python_title(s)); });
  if (name == "capitalize") {
    return method([s](const CallArgs&) { return Value(python_capitalize(s)); });
  }
  if (name == "replace") {
    return method([s](const CallArgs& a) {
      return Value(python_replace(s, string_arg(a, 0, "old", "replace"),
                                  string_arg(a, 1, "new", "replace"),
                                  optional_int(a, 2, "count", -1)));
    });
  }
  if (name == "find" || name == "count") {
    const bool is_find = name == "find";
    return method([s, is_find](const CallArgs& a) -> Value {
      const std::string& sub = string_arg(a, 0, "sub", is_find ? "find" : "count");
      if (is_find) {
        size_t at = s.find(sub);
        if (at == std::string::npos) return Value(static_cast<int64_t>(-1));
        return Value(utf8_length(s.substr(0, at)));
      }
      if (sub.empty()) return Value(utf8_length(s) + 1);
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) {
        ++n;
      }
      return Value(n);
    });
  }
  if (name == "join") {
    return method([s](const CallArgs& a) {
      std::string out;
      bool first = true;
      for (const auto& item : arg(a, 0, "iterable", "join").iterate()) {
        if (!item.is_string()) fail("join() expects str items, found " + item.type_name());
        if (!first) out += s;
        first = false;
        out += item.as_string();
      }
      return Value(out);
    });
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum") {
    return method([s, name](const CallArgs&) {
      if (s.empty()) return Value(false);
      for (const auto& c : utf8_chars(s)) {
        const char ch = c[0];
        bool ok = false;
        if (name == "isspace") {
          ok = python_isspace(c);
        } else if (c.size() == 1) {
          const bool digit = ch >= '0' && ch <= '9';
          const bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
          ok = name == "isdigit" ? digit : name == "isalpha" ? alpha : digit || alpha;
        }
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  if (name == "splitlines") {
    return method([s](const CallArgs&) {
      Value::List lines;
      size_t start = 0;
      while (start < s.size()) {
        size_t end = s.find_first_of("\n\r", start);
        if (end == std::string::npos) {
          lines.emplace_back(s.substr(start));
          break;
        }
        lines.emplace_back(s.substr(start, end - start));
        start = end + (s[end] == '\r' && end + 1 < s.size() && s[end + 1] == '\n' ? 2 : 1);
      }
      return Value::list(std::move(lines));
    });
  }
  if (name == "format") {
    return method([](const CallArgs&) -> Value {
      fail("str.format() is not supported by kbit's chat template interpreter",
           Error::Kind::kUnsupported);
    });
  }
  return Value::undefined("'str object' has no attribute '" + name + "'");
}

Value dict_method(const Value& self, const std::string& name) {
  auto method = [&](Function fn) { return Value::function("dict." + name, std::move(fn)); };
  if (name == "items") {
    return method([self](const CallArgs&) {
      Value::List items;
      for (const auto& [k, v] : self.as_dict()) items.push_back(Value::list({Value(k), v}, true));
      return Value::list(std::move(items));
    });
  }
  if (name == "keys") {
    return method([self](const CallArgs&) {
      Value::List keys;
      for (const auto& entry : self.as_dict()) keys.emplace_back(entry.first);
      return Value::list(std::move(keys));
    });
  }
  if (name == "values") {
    return method([self](const CallArgs&) {
      Value::List values;
      for (const auto& entry : self.as_dict()) values.push_back(entry.second);
      return Value::list(std::move(values));
    });
  }
  if (name == "get") {
    return method([self](const CallArgs& a) {
      const Value& key = arg(a, 0, "key", "get");
      const Value* found = key.is_string() ? self.find(key.as_string()) : nullptr;
      if (found != nullptr) return *found;
      const Value* fallback = a.find(1, "default");
      return fallback != nullptr ? *fallback : Value::none();
    });
  }
  return Value();
}

bool is_mutating_method(const Value& object, const std::string& name) {
  static const char* const kList[] = {"append",  "extend", "insert", "pop",        "remove",
                                      "reverse", "sort",   "clear",  "__setitem__"};
  static const char* const kDict[] = {"update", "pop", "popitem", "setdefault", "clear"};
  if (object.is_list() && !object.is_tuple()) {
    return std::find(std::begin(kList), std::end(kList), name) != std::end(kList);
  }
  if (object.is_dict() && !object.is_namespace()) {
    return std::find(std::begin(kDict), std::end(kDict), name) != std::end(kDict);
  }
  return false;
}

}  // namespace

Value get_attribute(const Value& object, const std::string& name) {
  if (object.is_undefined()) fail(object.undefined_hint());
  if (!name.empty() && name[0] == '_') {
    fail("access to attribute '" + name + "' of " + object_name(object) + " is unsafe.");
  }
  if (is_mutating_method(object, name)) {
    // transformers' ImmutableSandboxedEnvironment refuses methods that modify lists and dicts.
    return Value::function(name, [object, name](const CallArgs&) -> Value {
      fail("access to attribute '" + name + "' of '" + object.type_name() + "' object is unsafe.");
    });
  }
  if (object.is_string()) return string_method(object, name);
  if (object.is_dict()) {
    if (!object.is_namespace()) {
      Value method = dict_method(object, name);
      if (method.is_function()) return method;
    }
    const Value* found = object.find(name);
    if (found != nullptr) return *found;
  }
  return Value::undefined(object_name(object) + " has no attribute '" + name + "'");
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_undefined()) fail(object.undefined_hint());
  if (object.is_list() && (key.is_int() || key.is_bool())) {
    const auto& items = object.as_list();
    int64_t i = key.as_int();
    if (i < 0) i += static_cast<int64_t>(items.size());
    if (i >= 0 && i < static_cast<int64_t>(items.size())) return items[static_cast<size_t>(i)];
    return Value::undefined(object_name(object) + " has no element " + key.repr());
  }
  if (object.is_string() && (key.is_int() || key.is_bool())) {
    const auto chars = utf8_chars(object.as_string());
    int64_t i = key.as_int();
    if (i < 0) i += static_cast<int64_t>(chars.size());
    if (i >= 0 && i < static_cast<int64_t>(chars.size()))
      return Value(chars[static_cast<size_t>(i)]);
    return Value::undefined(object_name(object) + " has no element " + key.repr());
  }
  if (object.is_dict() && key.is_string()) {
    const Value* found = object.find(key.as_string());
    if (found != nullptr) return *found;
  }
  if (key.is_string()) return get_attribute(object, key.as_string());
  return Value::undefined(object_name(object) + " has no element " + key.repr());
}

Value get_slice(const Value& object, const Value* start, const Value* stop, const Value* step) {
  if (object.is_undefined()) fail(object.undefined_hint());
  auto bound = [](const Value* v, const char* what) -> const Value* {
    if (v == nullptr || v->is_none()) return nullptr;
    if (!v->is_int() && !v->is_bool()) fail(std::string("slice ") + what + " must be an integer");
    return v;
  };
  start = bound(start, "start");
  stop = bound(stop, "stop");
  step = bound(step, "step");
  const int64_t s = step != nullptr ? step->as_int() : 1;
  if (s == 0) fail("slice step cannot be zero");
  std::vector<Value> items;
  std::vector<std::string> chars;
  const bool is_string = object.is_string();
  if (is_string) {
    chars = utf8_chars(object.as_string());
  } else if (object.is_list()) {
    items = object.as_list();
  } else {
    fail("'" + object.type_name() + "' object is not subscriptable with a slice");
  }
  const int64_t n = static_cast<int64_t>(is_string ? chars.size() : items.size());
  auto adjust = [&](const Value* v, int64_t fallback) {
    if (v == nullptr) return fallback;
    int64_t i = v->as_int();
    if (i < 0) {
      i += n;
      if (i < 0) i = s < 0 ? -1 : 0;
    } else if (i >= n) {
      i = s < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t begin = adjust(start, s < 0 ? n - 1 : 0);
  const int64_t end = adjust(stop, s < 0 ? -1 : n);
  Value::List out_items;
  std::string out_text;
  for (int64_t i = begin; s > 0 ? i < end : i > end; i += s) {
    if (is_string) {
      out_text += chars[static_cast<size_t>(i)];
    } else {
      out_items.push_back(items[static_cast<size_t>(i)]);
    }
  }
  if (is_string) return Value(out_text);
  return Value::list(std::move(out_items), object.is_tuple());
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string()) {
      fail("'in <string>' requires string as left operand, not " + item.type_name());
    }
    return container.as_string().find(item.as_string()) != std::string::npos;
  }
  for (const auto& element : container.iterate()) {
    if (element == item) return true;
  }
  return false;
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_double() < b.as_double();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  if (a.is_list() && b.is_list()) {
    const auto& x = a.as_list();
    const auto& y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!(x[i] == y[i])) return less_than(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  fail("'<' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() +
       "'");
}

}  // namespace kbit::generate::jinja
