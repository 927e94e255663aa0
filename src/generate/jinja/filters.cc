// The built-in filters of `x | name(args)`, as jinja2 defines them (tojson as transformers
// overrides it: json.dumps without HTML escaping, ensure_ascii off).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "generate/jinja/builtins.h"
#include "generate/jinja/error.h"
#include "generate/jinja/text.h"

namespace kbit::generate::jinja {

namespace {

// The position of an argument that can only be passed by keyword.
constexpr size_t kKeywordOnly = static_cast<size_t>(-1);

const Value* find_arg(const CallArgs& args, size_t index, const char* name) {
  return args.find(index, name);
}

bool bool_arg(const CallArgs& args, size_t index, const char* name, bool fallback) {
  const Value* v = find_arg(args, index, name);
  return v == nullptr ? fallback : v->truthy();
}

int64_t int_arg(const CallArgs& args, size_t index, const char* name, int64_t fallback) {
  const Value* v = find_arg(args, index, name);
  if (v == nullptr) return fallback;
  if (!v->is_int() && !v->is_bool()) {
    fail(std::string("the argument '") + name + "' must be an integer, got " + v->type_name());
  }
  return v->as_int();
}

std::string string_arg(const CallArgs& args, size_t index, const char* name,
                       const std::string& fallback) {
  const Value* v = find_arg(args, index, name);
  return v == nullptr ? fallback : v->str();
}

// jinja2's attribute lookup for `attribute=` arguments: "a.b" and "0" follow dots and indices;
// `fallback` (when given) replaces an undefined result after each step.
Value lookup_attribute(const Value& item, const std::string& path,
                       const Value* fallback = nullptr) {
  Value current = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool is_index = !part.empty() && std::all_of(part.begin(), part.end(),
                                                       [](char c) { return c >= '0' && c <= '9'; });
    current = is_index ? get_item(current, Value(static_cast<int64_t>(std::stoll(part))))
                       : get_item(current, Value(part));
    if (fallback != nullptr && current.is_undefined()) current = *fallback;
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

Value::List as_sequence(const Value& v, const char* filter) {
  if (v.is_undefined() || v.is_list() || v.is_dict() || v.is_string()) return v.iterate();
  fail(std::string("the filter '") + filter + "' needs a sequence, got " + v.type_name());
}

// Sort key of sort/unique/dictsort: lower-cased strings unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(python_lower(v.as_string()));
  return v;
}

// Python's round(x, ndigits): correctly rounded, ties to even (printf rounds the exact binary
// value the same way).
double python_round(double x, int64_t digits) {
  if (digits < 0) {
    const double scale = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(x / scale) * scale;
  }
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer), "%.*f", static_cast<int>(std::min<int64_t>(digits, 300)),
                x);
  return std::strtod(buffer, nullptr);
}

Value python_int(const Value& v, const Value& fallback, int64_t base) {
  if (v.is_int() || v.is_bool()) return Value(v.as_int());
  if (v.is_float()) {
    if (!std::isfinite(v.as_double())) return fallback;
    return Value(static_cast<int64_t>(std::trunc(v.as_double())));
  }
  if (v.is_string()) {
    std::string s = python_strip(v.as_string(), "", true, true);
    s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
    if (s.empty()) return fallback;
    char* end = nullptr;
    const long long i = std::strtoll(s.c_str(), &end, static_cast<int>(base));
    if (end == s.c_str() + s.size()) return Value(static_cast<int64_t>(i));
    const double f = std::strtod(s.c_str(), &end);
    if (end == s.c_str() + s.size() && std::isfinite(f)) {
      return Value(static_cast<int64_t>(std::trunc(f)));
    }
  }
  return fallback;
}

Value python_float(const Value& v, const Value& fallback) {
  if (v.is_number()) return Value(v.as_double());
  if (v.is_string()) {
    std::string s = python_strip(v.as_string(), "", true, true);
    char* end = nullptr;
    const double f = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) return Value(f);
  }
  return fallback;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string strip_tags(const std::string& s) {
  std::string text;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 4, "<!--") == 0) {
      size_t end = s.find("-->", i + 4);
      if (end != std::string::npos) {
        i = end + 3;
        continue;
      }
    }
    if (s[i] == '<') {
      size_t end = s.find('>', i + 1);
      if (end != std::string::npos) {
        i = end + 1;
        continue;
      }
    }
    text += s[i++];
  }
  std::string out;
  for (const auto& word : python_split(text, nullptr, -1)) {
    if (!out.empty()) out += ' ';
    out += word;
  }
  static const std::pair<const char*, const char*> kEntities[] = {{"&lt;", "<"},    {"&gt;", ">"},
                                                                  {"&quot;", "\""}, {"&#34;", "\""},
                                                                  {"&#39;", "'"},   {"&amp;", "&"}};
  for (const auto& [entity, plain] : kEntities) out = python_replace(out, entity, plain, -1);
  return out;
}

std::string indent_text(const std::string& s, const std::string& indentation, bool first,
                        bool blank) {
  std::vector<std::string> lines;
  size_t start = 0;
  const std::string text = s + "\n";
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  std::string out;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) out += "\n" + indentation;
      out += lines[i];
    }
  } else {
    out = lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      out += "\n";
      if (!lines[i].empty()) out += indentation + lines[i];
    }
  }
  return first ? indentation + out : out;
}

Value select_items(const Value& seq, const CallArgs& args, bool by_attribute, bool keep,
                   const char* filter) {
  Value::List out;
  size_t next_arg = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.positional.empty())
      fail(std::string("the filter '") + filter + "' needs an attribute");
    attribute = args.positional[0].str();
    next_arg = 1;
  }
  std::string test;
  CallArgs test_args;
  if (args.positional.size() > next_arg) {
    test = args.positional[next_arg].str();
    test_args.positional.assign(args.positional.begin() + static_cast<ptrdiff_t>(next_arg) + 1,
                                args.positional.end());
  }
  for (const auto& item : as_sequence(seq, filter)) {
    const Value subject = by_attribute ? lookup_attribute(item, attribute) : item;
    const bool passed = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (passed == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value::List sorted(Value::List items, bool reverse, bool case_sensitive,
                   const std::string& attribute) {
  auto key = [&](const Value& v) {
    return sort_key(attribute.empty() ? v : lookup_attribute(v, attribute), case_sensitive);
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    return reverse ? less_than(key(b), key(a)) : less_than(key(a), key(b));
  });
  return items;
}

}  // namespace

Value apply_filter(const std::string& name, const Value& v, const CallArgs& args) {
  if (name == "default" || name == "d") {
    const bool boolean = bool_arg(args, 1, "boolean", false);
    if (v.is_undefined() || (boolean && !v.truthy())) {
      const Value* fallback = find_arg(args, 0, "default_value");
      return fallback != nullptr ? *fallback : Value("");
    }
    return v;
  }
  if (name == "length" || name == "count") {
    if (v.is_string()) return Value(utf8_length(v.as_string()));
    if (v.is_list()) return Value(static_cast<int64_t>(v.as_list().size()));
    if (v.is_dict()) return Value(static_cast<int64_t>(v.as_dict().size()));
    if (v.is_undefined()) return Value(static_cast<int64_t>(0));
    fail("object of type '" + v.type_name() + "' has no len()");
  }
  if (name == "tojson") {
    const Value* ensure_ascii = find_arg(args, kKeywordOnly, "ensure_ascii");
    const Value* separators = find_arg(args, kKeywordOnly, "separators");
    if ((ensure_ascii != nullptr && ensure_ascii->truthy()) ||
        (separators != nullptr && !separators->is_none())) {
      fail(
          "tojson(ensure_ascii=True) and tojson(separators=...) are not supported by kbit's "
          "chat template interpreter",
          Error::Kind::kUnsupported);
    }
    const Value* indent = find_arg(args, 0, "indent");
    int indent_width = -1;
    if (indent != nullptr && !indent->is_none()) {
      if (!indent->is_int()) fail("tojson(indent=...) must be an integer");
      indent_width = static_cast<int>(indent->as_int());
    }
    return Value(to_json(v, indent_width, bool_arg(args, kKeywordOnly, "sort_keys", false)));
  }
  if (name == "string") return Value(v.str());
  if (name == "safe") return v.is_string() ? v : Value(v.str());
  if (name == "e" || name == "escape") return Value(html_escape(v.str()));
  if (name == "trim") {
    const Value* chars = find_arg(args, 0, "chars");
    if (chars != nullptr && !chars->is_none()) {
      if (chars->as_string().empty()) return Value(v.str());
      return Value(python_strip(v.str(), chars->str(), true, true));
    }
    return Value(python_strip(v.str(), "", true, true));
  }
  if (name == "upper") return Value(python_upper(v.str()));
  if (name == "lower") return Value(python_lower(v.str()));
  if (name == "title") return Value(jinja_title(v.str()));
  if (name == "capitalize") return Value(python_capitalize(v.str()));
  if (name == "replace") {
    const Value* count = find_arg(args, 2, "count");
    return Value(python_replace(v.str(), string_arg(args, 0, "old", ""),
                                string_arg(args, 1, "new", ""),
                                count == nullptr || count->is_none() ? -1 : count->as_int()));
  }
  if (name == "join") {
    const std::string separator = string_arg(args, 0, "d", "");
    const Value* attribute = find_arg(args, 1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& item : as_sequence(v, "join")) {
      if (!first) out += separator;
      first = false;
      out += (attribute != nullptr ? lookup_attribute(item, attribute->str()) : item).str();
    }
    return Value(out);
  }
  if (name == "first" || name == "last") {
    const Value::List items = as_sequence(v, name.c_str());
    if (items.empty()) return Value::undefined("No " + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::list(as_sequence(v, "list"));
  if (name == "reverse") {
    if (v.is_string()) {
      auto chars = utf8_chars(v.as_string());
      std::string out;
      for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
      return Value(out);
    }
    Value::List items = as_sequence(v, "reverse");
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "int") {
    const Value* fallback = find_arg(args, 0, "default");
    return python_int(v, fallback != nullptr ? *fallback : Value(static_cast<int64_t>(0)),
                      int_arg(args, 1, "base", 10));
  }
  if (name == "float") {
    const Value* fallback = find_arg(args, 0, "default");
    return python_float(v, fallback != nullptr ? *fallback : Value(0.0));
  }
  if (name == "abs") {
    if (v.is_float()) return Value(std::fabs(v.as_double()));
    if (v.is_int() || v.is_bool()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
    fail("bad operand type for abs(): '" + v.type_name() + "'");
  }
  if (name == "round") {
    const int64_t precision = int_arg(args, 0, "precision", 0);
    const std::string method = string_arg(args, 1, "method", "common");
    if (!v.is_number()) fail("the filter 'round' needs a number, got " + v.type_name());
    if (method == "common") {
      if (!v.is_float()) return Value(v.as_int());
      return Value(python_round(v.as_double(), precision));
    }
    const double scale = std::pow(10.0, static_cast<double>(precision));
    if (method == "floor") return Value(std::floor(v.as_double() * scale) / scale);
    if (method == "ceil") return Value(std::ceil(v.as_double() * scale) / scale);
    fail("method of the filter 'round' must be 'common', 'ceil' or 'floor'");
  }
  if (name == "select") return select_items(v, args, false, true, "select");
  if (name == "reject") return select_items(v, args, false, false, "reject");
  if (name == "selectattr") return select_items(v, args, true, true, "selectattr");
  if (name == "rejectattr") return select_items(v, args, true, false, "rejectattr");
  if (name == "map") {
    Value::List out;
    const Value* attribute = find_arg(args, kKeywordOnly, "attribute");
    if (attribute != nullptr) {
      const Value* fallback = find_arg(args, kKeywordOnly, "default");
      for (const auto& item : as_sequence(v, "map")) {
        out.push_back(lookup_attribute(item, attribute->str(), fallback));
      }
      return Value::list(std::move(out));
    }
    if (args.positional.empty()) fail("the filter 'map' needs a filter name or attribute=");
    const std::string filter = args.positional[0].str();
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    for (const auto& item : as_sequence(v, "map")) out.push_back(apply_filter(filter, item, rest));
    return Value::list(std::move(out));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("the filter 'items' needs a mapping, got " + v.type_name());
    Value::List out;
    for (const auto& [key, item] : v.as_dict())
      out.push_back(Value::list({Value(key), item}, true));
    return Value::list(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is_dict()) fail("the filter 'dictsort' needs a mapping, got " + v.type_name());
    const bool case_sensitive = bool_arg(args, 0, "case_sensitive", false);
    const std::string by = string_arg(args, 1, "by", "key");
    const bool reverse = bool_arg(args, 2, "reverse", false);
    const size_t position = by == "value" ? 1 : 0;
    Value::List items;
    for (const auto& [key, item] : v.as_dict())
      items.push_back(Value::list({Value(key), item}, true));
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const Value ka = sort_key(a.as_list()[position], case_sensitive);
      const Value kb = sort_key(b.as_list()[position], case_sensitive);
      return reverse ? less_than(kb, ka) : less_than(ka, kb);
    });
    return Value::list(std::move(items));
  }
  if (name == "sort") {
    return Value::list(sorted(as_sequence(v, "sort"), bool_arg(args, 0, "reverse", false),
                              bool_arg(args, 1, "case_sensitive", false),
                              string_arg(args, 2, "attribute", "")));
  }
  if (name == "unique") {
    const bool case_sensitive = bool_arg(args, 0, "case_sensitive", false);
    const std::string attribute = string_arg(args, 1, "attribute", "");
    Value::List out;
    Value::List seen;
    for (const auto& item : as_sequence(v, "unique")) {
      Value key =
          sort_key(attribute.empty() ? item : lookup_attribute(item, attribute), case_sensitive);
      if (std::find(seen.begin(), seen.end(), key) == seen.end()) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::list(std::move(out));
  }
  if (name == "min" || name == "max") {
    Value::List items =
        sorted(as_sequence(v, name.c_str()), false, bool_arg(args, 0, "case_sensitive", false),
               string_arg(args, 1, "attribute", ""));
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    return name == "min" ? items.front() : items.back();
  }
  if (name == "sum") {
    const std::string attribute = string_arg(args, 0, "attribute", "");
    const Value* start = find_arg(args, 1, "start");
    Value total = start != nullptr ? *start : Value(static_cast<int64_t>(0));
    for (const auto& item : as_sequence(v, "sum")) {
      const Value x = attribute.empty() ? item : lookup_attribute(item, attribute);
      if (!x.is_number() || !total.is_number()) fail("the filter 'sum' needs numbers");
      total = total.is_float() || x.is_float() ? Value(total.as_double() + x.as_double())
                                               : Value(total.as_int() + x.as_int());
    }
    return total;
  }
  if (name == "striptags") return Value(strip_tags(v.str()));
  if (name == "indent") {
    const Value* width = find_arg(args, 0, "width");
    std::string indentation(4, ' ');
    if (width != nullptr) {
      indentation = width->is_string() ? width->as_string()
                                       : std::string(static_cast<size_t>(width->as_int()), ' ');
    }
    return Value(indent_text(v.str(), indentation, bool_arg(args, 1, "first", false),
                             bool_arg(args, 2, "blank", false)));
  }
  if (name == "center") {
    const std::string s = v.str();
    const int64_t width = int_arg(args, 0, "width", 80);
    const int64_t length = utf8_length(s);
    if (width <= length) return Value(s);
    const int64_t pad = width - length;
    const int64_t left = pad / 2 + (pad & width & 1);
    return Value(std::string(static_cast<size_t>(left), ' ') + s +
                 std::string(static_cast<size_t>(pad - left), ' '));
  }
  if (name == "wordcount") {
    int64_t words = 0;
    bool in_word = false;
    for (unsigned char c : v.str()) {
      const bool word_char = c >= 0x80 || c == '_' || (c >= '0' && c <= '9') ||
                             (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (word_char && !in_word) ++words;
      in_word = word_char;
    }
    return Value(words);
  }
  fail("the filter '" + name + "' is not supported by kbit's chat template interpreter",
       Error::Kind::kUnsupported);
}

}  // namespace kbit::generate::jinja
