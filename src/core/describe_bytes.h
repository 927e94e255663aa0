// A byte count as people read it in messages: "1.50 GiB (1610612736 bytes)".
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace kbit::detail {

inline std::string describe_bytes(std::size_t bytes) {
  constexpr double kMiB = 1024.0 * 1024.0;
  char text[64];
  const double mib = static_cast<double>(bytes) / kMiB;
  if (mib >= 1024.0) {
    std::snprintf(text, sizeof(text), "%.2f GiB", mib / 1024.0);
  } else {
    std::snprintf(text, sizeof(text), "%.2f MiB", mib);
  }
  return std::string(text) + " (" + std::to_string(bytes) + " bytes)";
}

}  // namespace kbit::detail
