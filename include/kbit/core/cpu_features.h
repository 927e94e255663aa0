// Which vector instruction sets the CPU has, and which one kbit's CPU kernels use.
#pragma once

#include <string_view>

namespace kbit {

enum class CpuIsa { kScalar, kAvx2, kAvx512 };

// "scalar", "avx2", "avx512".
std::string_view cpu_isa_name(CpuIsa isa);

// The best instruction set this CPU supports (AVX2 needs FMA and F16C; AVX-512 needs the F, BW,
// VL and DQ subsets).
CpuIsa detected_cpu_isa();

// The instruction set the fast CPU kernels use: detected_cpu_isa(), lowered by the environment
// variable KBIT_CPU_ISA=scalar|avx2|avx512 (it can never raise it above what the CPU has).
CpuIsa active_cpu_isa();

}  // namespace kbit
