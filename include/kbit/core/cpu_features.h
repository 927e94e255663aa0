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

// Whether the fast kernels may use AVX-512 VNNI (vpdpbusd, the int8 matmul): the CPU has it and
// active_cpu_isa() is kAvx512 (so KBIT_CPU_ISA=avx2 turns it off too).
bool active_cpu_has_avx512_vnni();

}  // namespace kbit
