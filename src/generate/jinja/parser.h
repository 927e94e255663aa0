// The Jinja parser: tokens to a syntax tree, by recursive descent with jinja2's grammar and
// operator precedence (lowest first): `x if c else y`, or, and, not, comparisons and in,
// + and -, ~, * / // %, **, unary - +, then filters (|f), tests (is t), calls, attributes,
// items and slices.
#pragma once

#include <string>

#include "generate/jinja/ast.h"

namespace kbit::generate::jinja {

// Parses a template; throws Error naming the line and column of a syntax error (kSyntax) or of a
// construct this interpreter does not implement (kUnsupported: extends, include, import, block,
// raw, recursive loops, ...).
Body parse_template(const std::string& source);

}  // namespace kbit::generate::jinja
