#include "kbit/core/memory_stats.h"

#include <fstream>
#include <string>

namespace kbit {

namespace {

// A "Name:   1234 kB" line of /proc/self/status, in bytes.
std::optional<std::int64_t> status_bytes(const std::string& name) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(name, 0) == 0) return std::stoll(line.substr(name.size())) * 1024;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::int64_t> peak_resident_bytes() {
  return status_bytes("VmHWM:");
}

std::optional<std::int64_t> resident_bytes() {
  return status_bytes("VmRSS:");
}

}  // namespace kbit
