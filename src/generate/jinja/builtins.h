// The built-in filters, tests, attribute access and methods of the Jinja interpreter, with the
// semantics of jinja2 (and of Python for str and dict methods) under transformers' sandbox.
// Each throws Error on misuse, naming the filter, test or attribute.
#pragma once

#include <string>

#include "generate/jinja/value.h"

namespace kbit::generate::jinja {

// `operand | name(args)`. Unknown filters fail with kUnsupported.
Value apply_filter(const std::string& name, const Value& operand, const CallArgs& args);

// `operand is name(args)`. Unknown tests fail with kUnsupported.
bool apply_test(const std::string& name, const Value& operand, const CallArgs& args);

// `object.name`: an attribute first (str and dict methods, bound to `object`), then an item, as
// jinja2's getattr does; undefined when neither exists.
Value get_attribute(const Value& object, const std::string& name);

// `object[key]`: an item first, then an attribute, as jinja2's getitem does.
Value get_item(const Value& object, const Value& key);

// `object[start:stop:step]` with Python's rules; null bounds are omitted ones.
Value get_slice(const Value& object, const Value* start, const Value* stop, const Value* step);

// Python's `item in container`: a substring, a list element or a dict key.
bool contains(const Value& container, const Value& item);

// Python's <, for sort and comparisons; fails for unorderable kinds.
bool less_than(const Value& a, const Value& b);

}  // namespace kbit::generate::jinja
