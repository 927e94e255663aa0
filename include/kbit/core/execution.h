// How a library call runs its work: which CPU kernel, how many threads, which CUDA stream.
// The device itself is decided by where the tensors live.
#pragma once

#include "kbit/core/device.h"

namespace kbit {

enum class CpuKernel {
  kFast,       // vectorised (AVX2 / AVX-512, see active_cpu_isa()) and multi-threaded
  kReference,  // plain scalar C++, one thread: the readable definition the fast path must match
};

struct ExecutionOptions {
  CpuKernel cpu_kernel = CpuKernel::kFast;
  int threads = 0;  // CPU threads for the fast kernels; 0 = max_threads()
  Stream stream;    // CUDA work is queued on this stream; see each function for synchronisation
};

}  // namespace kbit
