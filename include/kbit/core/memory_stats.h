// What the process itself uses, for reports and benchmarks.
#pragma once

#include <cstdint>
#include <optional>

namespace kbit {

// The peak resident set size of this process in bytes (VmHWM of /proc/self/status), or nullopt
// where the system does not say. Unlike getrusage's ru_maxrss, it does not include memory of the
// process that started this one.
std::optional<std::int64_t> peak_resident_bytes();

// The resident set size of this process now in bytes (VmRSS), or nullopt likewise.
std::optional<std::int64_t> resident_bytes();

}  // namespace kbit
