#include "testing/shared_data.h"

#include <cstdlib>

namespace kbit::testing {

std::optional<std::filesystem::path> shared_dir() {
  const char* value = std::getenv("KBIT_SHARED_DIR");
  if (value == nullptr || *value == '\0') return std::nullopt;
  std::error_code error;
  if (!std::filesystem::is_directory(value, error)) return std::nullopt;
  return std::filesystem::path(value);
}

std::filesystem::path shared_file(const std::string& relative_path) {
  return shared_dir().value_or(std::filesystem::path(".")) / relative_path;
}

}  // namespace kbit::testing
