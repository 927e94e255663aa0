// Facts about the current CUDA device that launchers need on every call, each asked of the
// runtime once per device and process (the calls sit on a prompt's host path, once per Linear
// layer and attention launch). Thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace kbit::kernels::cuda {

// Whether the current device runs kbit's sm_90a code (compute capability 9.0, where Hopper's
// warpgroup MMA exists). False where the device cannot be queried.
bool current_device_runs_sm90a();

// The most dynamic shared memory a block of the current device may have after opting in (227 KiB
// on sm_90, 99 KiB on sm_86 and sm_89); 0 where the device cannot be queried.
std::size_t current_device_shared_memory_optin();

// The current device's multiprocessors; 0 where the device cannot be queried.
int current_device_multiprocessors();

// Lets `kernel` (a __global__ function's address) take `bytes` of dynamic shared memory on the
// current device, as a kernel must beyond 48 KiB: cudaFuncSetAttribute the first time a kernel
// asks for that many bytes or more on a device, nothing after. Returns the runtime's error.
cudaError_t opt_in_dynamic_shared_memory(const void* kernel, std::size_t bytes);

}  // namespace kbit::kernels::cuda
