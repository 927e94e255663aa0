// The warp-wide tensor-core product of sm_80 and later (mma.sync m16n8k16, f32 accumulators) and
// the word access its fragments need: one definition for the 4-bit GEMVs, the attention kernels
// and the GEMV cost probe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace kbit::kernels::cuda {

// d[4] += a (16×16 of C, row-major fragments) · b (16×8 of C, column-major fragments b0, b1), in
// f32. C is __half or __nv_bfloat16.
template <typename C>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const std::uint32_t (&a)[4],
                                            std::uint32_t b0, std::uint32_t b1) {
  static_assert(std::is_same_v<C, __half> || std::is_same_v<C, __nv_bfloat16>);
  if constexpr (std::is_same_v<C, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Word `word` (0..3) of a 16-byte load.
__device__ __forceinline__ std::uint32_t word_of(const uint4& v, int word) {
  return word == 0 ? v.x : word == 1 ? v.y : word == 2 ? v.z : v.w;
}

}  // namespace kbit::kernels::cuda
