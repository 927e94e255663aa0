// A Python `re` pattern on PCRE2, as transformers and PEFT match module names with it: compiled
// with Unicode classes (Python's str patterns), matched at the start of the subject (re.match)
// or over all of it (re.fullmatch). Used by the readers of quantization_config and PEFT adapter
// configs. Move-only; owns its compiled code.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "kbit/core/status.h"

struct pcre2_real_code_8;

namespace kbit::io {

class PythonPattern {
 public:
  // kInvalidArgument for a pattern PCRE2 does not compile; the message is
  // "at offset N: <PCRE2's reason>", for the caller to put in its own words.
  static Result<PythonPattern> compile(const std::string& pattern);

  enum class Anchor { kStart, kWhole };
  // Whether the pattern matches `subject` from its start (re.match) or whole (re.fullmatch).
  // An error (kInvalidArgument, PCRE2's reason as the message) only where PCRE2 fails to run,
  // e.g. on a match limit.
  Result<bool> matches(std::string_view subject, Anchor anchor) const;

 private:
  struct Free {
    void operator()(pcre2_real_code_8* code) const;
  };
  explicit PythonPattern(pcre2_real_code_8* code) : code_(code) {}
  std::unique_ptr<pcre2_real_code_8, Free> code_;
};

}  // namespace kbit::io
