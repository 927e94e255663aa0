// The Jinja evaluator: renders a syntax tree against a context of variables.
//
// Scoping follows jinja2: a for loop body gets a fresh scope each iteration (so `set` inside a
// loop does not leak; namespaces are the way out), macros see the template's top-level
// variables plus their arguments, if/with blocks share or nest scopes as in jinja2. Globals are
// those transformers provides: range, namespace, dict, raise_exception, strftime_now.
#pragma once

#include <string>

#include "generate/jinja/ast.h"
#include "generate/jinja/value.h"

namespace kbit::generate::jinja {

// Renders `body` with the variables of `context` (a dict Value); throws Error on failure, with
// the template line of the statement that failed.
std::string render(const Body& body, const Value& context);

}  // namespace kbit::generate::jinja
