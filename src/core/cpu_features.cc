#include "kbit/core/cpu_features.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

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

#if defined(__x86_64__)
namespace {

// CPUID leaf 1, ECX bit 29. Read directly: clang 14's __builtin_cpu_supports has no "f16c".
bool has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

}  // namespace
#endif

CpuIsa detected_cpu_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c()) {
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

bool active_cpu_has_avx512_vnni() {
#if defined(__x86_64__)
  static const bool has_vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has_vnni && active_cpu_isa() == CpuIsa::kAvx512;
#else
  return false;
#endif
}

}  // namespace kbit
