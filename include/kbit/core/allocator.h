// Memory allocators. Each is thread safe; memory from one must be returned to the same one.
#pragma once

#include <cstddef>

#include "kbit/core/status.h"

namespace kbit {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns at least `bytes` bytes aligned to 256 bytes (a zero-byte request gives a valid,
  // unique pointer), or kOutOfMemory with the size asked for and what is free where known.
  virtual Result<void*> allocate(std::size_t bytes) = 0;
  // Returns memory from allocate(); null is ignored.
  virtual void deallocate(void* ptr) = 0;
};

// Pageable host memory.
Allocator& host_allocator();

// Statistics of a caching device allocator, in bytes.
struct CachingAllocatorStats {
  std::size_t in_use = 0;       // handed out and not yet returned
  std::size_t peak_in_use = 0;  // the largest in_use seen since the last reset
  std::size_t cached = 0;       // held by the cache, free for reuse
};

// The caching allocator of CUDA device `ordinal`: freed blocks are kept and reused for requests
// of a similar size, so that steady-state work does no cudaMalloc/cudaFree. Fails with
// kUnimplemented in a build without CUDA or with an invalid ordinal.
Result<Allocator*> cuda_allocator(int ordinal);
// Statistics of that allocator; all zeros where it does not exist.
CachingAllocatorStats cuda_allocator_stats(int ordinal);
// Starts the peak over: peak_in_use becomes the current in_use.
void cuda_allocator_reset_peak(int ordinal);
// Returns every cached block to the driver.
void cuda_allocator_release_cache(int ordinal);

// Managed (unified) memory of CUDA device `ordinal`, for paged optimizer state: usable by kernels
// on the device, moved by the driver between the device and the host as memory runs short. Each
// request is one cudaMallocManaged; one larger than the device's free memory at that moment fails
// with kOutOfMemory naming both. kUnimplemented in a build without CUDA or for an invalid ordinal.
Result<Allocator*> cuda_managed_allocator(int ordinal);

}  // namespace kbit
