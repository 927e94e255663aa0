// A compiled PCRE2 pattern (UTF + UCP, JIT when available) for the tokenizer's split and
// replace patterns, which tokenizer.json writes in Oniguruma syntax (\p{L}, \p{N}, (?!\S), (?i:)).
//
// Immutable after compile; find_all() is safe to call concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kbit/core/status.h"

namespace kbit::tokenizer::internal {

class Regex {
 public:
  // Fails with the PCRE2 message and offset when `pattern` does not compile.
  static Result<Regex> compile(const std::string& pattern);
  // A pattern that matches `literal` exactly.
  static Result<Regex> literal(std::string_view literal);

  // Non-overlapping matches [begin, end) of valid UTF-8 `text`, left to right; empty matches
  // are skipped.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const;

 private:
  struct Code;
  explicit Regex(std::shared_ptr<const Code> code) : code_(std::move(code)) {}
  std::shared_ptr<const Code> code_;
};

}  // namespace kbit::tokenizer::internal
