#include "io/python_pattern.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace kbit::io {
namespace {

std::string pcre2_reason(int error_code) {
  PCRE2_UCHAR message[256];
  pcre2_get_error_message(error_code, message, sizeof(message));
  return reinterpret_cast<const char*>(message);
}

}  // namespace

void PythonPattern::Free::operator()(pcre2_real_code_8* code) const {
  pcre2_code_free(code);
}

Result<PythonPattern> PythonPattern::compile(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return invalid_argument("at offset " + std::to_string(error_offset) + ": " +
                            pcre2_reason(error_code));
  }
  return PythonPattern(code);
}

Result<bool> PythonPattern::matches(std::string_view subject, Anchor anchor) const {
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_.get(), nullptr);
  if (data == nullptr) return out_of_memory("cannot allocate PCRE2 match data");
  const std::uint32_t options =
      anchor == Anchor::kWhole ? PCRE2_ANCHORED | PCRE2_ENDANCHORED : PCRE2_ANCHORED;
  const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                             subject.size(), 0, options, data, nullptr);
  pcre2_match_data_free(data);
  if (rc >= 0) return true;
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  return invalid_argument(pcre2_reason(rc));
}

}  // namespace kbit::io
