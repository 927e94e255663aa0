// The error of the Jinja interpreter: a message and, where known, the template position.
//
// Inside the interpreter (lexer, parser, evaluator) a failure is thrown as an Error, which keeps
// the recursive descent and the tree walk short; ChatTemplate catches every Error at its boundary
// and turns it into a Status, so no exception leaves the library.
#pragma once

#include <string>
#include <utility>

namespace kbit::generate::jinja {

struct Error {
  enum class Kind {
    kSyntax,       // the template does not parse
    kUnsupported,  // valid Jinja that this interpreter does not implement
    kRender,       // a failure while rendering (undefined attribute, type error, ...)
    kRaised,       // the template called raise_exception(message)
  };
  Kind kind = Kind::kRender;
  std::string message;
  int line = 0;    // 1-based; 0 when not yet known
  int column = 0;  // 1-based; 0 when not known
};

[[noreturn]] inline void fail(std::string message, Error::Kind kind = Error::Kind::kRender) {
  throw Error{kind, std::move(message), 0, 0};
}

}  // namespace kbit::generate::jinja
