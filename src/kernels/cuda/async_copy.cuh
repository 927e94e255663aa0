// Asynchronous copies from global to shared memory (cp.async, sm_80 and later): 16 bytes per
// thread, committed in groups that a thread waits for before the block's barrier makes the data
// visible to every thread. Shared by the tiled tensor-core kernels (attention_mma.cuh,
// linear_4bit_gemm.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kbit::kernels::cuda {

__device__ __forceinline__ std::uint32_t shared_address(const void* pointer) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes, both addresses 16-byte aligned; cached in L2 only.
__device__ __forceinline__ void copy_async_16(void* shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(shared)),
               "l"(global)
               : "memory");
}

// copy_async_16 where `present`, else 16 zero bytes (global is then not read, but must still be
// a valid address).
__device__ __forceinline__ void copy_async_16_or_zeros(void* shared, const void* global,
                                                       bool present) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(present ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void commit_copies() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending of the committed copy groups are in flight.
template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace kbit::kernels::cuda
