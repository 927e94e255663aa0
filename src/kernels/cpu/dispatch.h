// Runs a CPU kernel over a range of independent work items (blocks or rows): the reference
// kernel on one thread, or the fast kernel for the active instruction set on the thread pool.
#pragma once

#include <cstdint>

#include "kbit/core/cpu_features.h"
#include "kbit/core/execution.h"
#include "kbit/core/parallel.h"

namespace kbit::kernels::cpu {

template <typename Job>
using RangeKernel = void (*)(const Job& job, std::int64_t begin, std::int64_t end);

template <typename Job>
struct KernelVariants {
  RangeKernel<Job> reference;
  RangeKernel<Job> avx2;
  RangeKernel<Job> avx512;
};

// Calls a variant on [0, items), in chunks of at least min_items_per_chunk items.
template <typename Job>
void run_kernel(const KernelVariants<Job>& variants, const Job& job, std::int64_t items,
                std::int64_t min_items_per_chunk, const ExecutionOptions& options) {
  if (options.cpu_kernel == CpuKernel::kReference) {
    variants.reference(job, 0, items);
    return;
  }
  RangeKernel<Job> kernel = variants.reference;
  switch (active_cpu_isa()) {
    case CpuIsa::kAvx512:
      kernel = variants.avx512;
      break;
    case CpuIsa::kAvx2:
      kernel = variants.avx2;
      break;
    case CpuIsa::kScalar:
      break;
  }
  parallel_for(
      items, min_items_per_chunk,
      [&](std::int64_t begin, std::int64_t end) { kernel(job, begin, end); }, options.threads);
}

}  // namespace kbit::kernels::cpu
