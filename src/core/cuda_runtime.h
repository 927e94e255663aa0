// The core's only contact with the CUDA runtime. Implemented by cuda_runtime_cuda.cc in CUDA
// builds and by cuda_runtime_none.cc otherwise, where every call fails with kUnimplemented.
#pragma once

#include <cstddef>

#include "kbit/core/status.h"

namespace kbit::detail {

bool cuda_runtime_available();
int cuda_device_count();
// Copies `bytes` between any two pointers (host or device) and waits for completion.
Status cuda_copy(void* dst, const void* src, std::size_t bytes);
// Queues the copy on `stream` (an opaque cudaStream_t; null = default) and waits for it, so
// that work queued before it on that stream is finished too.
Status cuda_copy_on_stream(void* dst, const void* src, std::size_t bytes, void* stream);
// Free and total memory of CUDA device `ordinal` (cudaMemGetInfo).
Status cuda_memory_info(int ordinal, std::size_t* free_bytes, std::size_t* total_bytes);
// Sets `bytes` bytes of device or managed memory to zero and waits for completion.
Status cuda_zero(void* ptr, std::size_t bytes);
// Queues, on `stream`, the migration of managed memory [ptr, ptr + bytes) to device `ordinal`, so
// that kernels queued after it find the pages there. Does nothing where the device cannot access
// managed memory concurrently with the host (the pages then move on first touch).
Status cuda_prefetch_to_device(const void* ptr, std::size_t bytes, int ordinal, void* stream);
// Waits for all work on CUDA device `ordinal`.
Status cuda_synchronize(int ordinal);
// kOk for cudaSuccess (0); otherwise kInternal (kOutOfMemory for allocation failures) with
// "<what>: <CUDA's error name and text>".
Status status_from_cuda_error(int error, const char* what);

}  // namespace kbit::detail
