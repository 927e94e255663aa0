#include "kbit/core/memory_stats.h"

#include <fstream>
#include <string>

namespace kbit {

std::optional<std::int64_t> peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // "... kB"
  }
  return std::nullopt;
}

}  // namespace kbit
