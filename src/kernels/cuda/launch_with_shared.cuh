// Launching a kernel with more dynamic shared memory than the default 48 KiB, which a kernel must
// first opt in to (device_queries.h does that once per kernel and device).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cuda/device_queries.h"

namespace kbit::kernels::cuda {

// Queues kernel<<<grid, threads, shared_bytes, stream>>>(arguments...), after opting it in to
// shared_bytes of dynamic shared memory. Returns the first error of the two.
template <typename... Parameters, typename... Arguments>
cudaError_t launch_with_shared(void (*kernel)(Parameters...), dim3 grid, int threads,
                               std::size_t shared_bytes, cudaStream_t stream,
                               Arguments... arguments) {
  const cudaError_t error =
      opt_in_dynamic_shared_memory(reinterpret_cast<const void*>(kernel), shared_bytes);
  if (error != cudaSuccess) return error;
  kernel<<<grid, threads, shared_bytes, stream>>>(arguments...);
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda
