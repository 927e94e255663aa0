#include "kbit/core/cpu_features.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace kbit {

std::string_view cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "scalar";
}

CpuIsa detected_cpu_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx2;
  }
#endif
  return CpuIsa::kScalar;
}

CpuIsa active_cpu_isa() {
  static const CpuIsa isa = [] {
    const CpuIsa detected = detected_cpu_isa();
    const char* requested = std::getenv("KBIT_CPU_ISA");
    if (requested == nullptr) return detected;
    const std::string name(requested);
    CpuIsa wanted = detected;
    if (name == "scalar") wanted = CpuIsa::kScalar;
    if (name == "avx2") wanted = CpuIsa::kAvx2;
    if (name == "avx512") wanted = CpuIsa::kAvx512;
    return std::min(wanted, detected);
  }();
  return isa;
}

}  // namespace kbit
