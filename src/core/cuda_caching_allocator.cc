// The caching allocator of CUDA device memory (contract: kbit/core/allocator.h).
//
// cudaMalloc and cudaFree are slow and cudaFree synchronises the device, so freed blocks are kept
// in per-size free lists and handed out again. Requests are rounded up to a size class:
//   up to 1 MiB        multiples of 512 bytes
//   up to 64 MiB       multiples of 2 MiB
//   beyond             multiples of 1/8 of the request's power of two (at most 12.5% waste)
// A request is served from the free list of its exact class, so steady-state work that allocates
// the same shapes again does no cudaMalloc. Blocks are never split or merged.
//
// Stream order: a freed block may be handed out at once. kbit queues its work on one stream per
// call and the memory it frees was last used on that stream, so reuse stays in order there. A
// caller who frees memory still in use on another stream must synchronise that stream first.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/describe_bytes.h"
#include "kbit/core/allocator.h"

namespace kbit {
namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

std::size_t size_class(std::size_t bytes) {
  const auto round_up = [](std::size_t value, std::size_t step) {
    return (value + step - 1) / step * step;
  };
  if (bytes <= kMiB) return round_up(bytes == 0 ? 1 : bytes, 512);
  if (bytes <= 64 * kMiB) return round_up(bytes, 2 * kMiB);
  std::size_t power = 64 * kMiB;
  while (power * 2 <= bytes) power *= 2;
  return round_up(bytes, power / 8);
}

// Makes `ordinal` the current device for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int ordinal) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != ordinal) {
      switched_ = cudaSetDevice(ordinal) == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int ordinal) : ordinal_(ordinal) {}

  Result<void*> allocate(std::size_t bytes) override {
    const std::size_t block_size = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* ptr = take_cached(block_size);
    if (ptr == nullptr) {
      KBIT_ASSIGN_OR_RETURN(ptr, malloc_with_retry(bytes, block_size));
    }
    live_.emplace(ptr, block_size);
    stats_.in_use += block_size;
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
    return ptr;
  }

  void deallocate(void* ptr) override {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = live_.find(ptr);
    if (it == live_.end()) return;  // not ours: the contract forbids it, and freeing could crash
    const std::size_t block_size = it->second;
    live_.erase(it);
    stats_.in_use -= block_size;
    stats_.cached += block_size;
    free_blocks_[block_size].push_back(ptr);
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_in_use = stats_.in_use;
  }

  CachingAllocatorStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void release_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cache_locked();
  }

 private:
  void* take_cached(std::size_t block_size) {
    const auto it = free_blocks_.find(block_size);
    if (it == free_blocks_.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back();
    it->second.pop_back();
    stats_.cached -= block_size;
    return ptr;
  }

  void release_cache_locked() {
    DeviceGuard device(ordinal_);
    for (auto& [block_size, blocks] : free_blocks_) {
      for (void* ptr : blocks) cudaFree(ptr);
      stats_.cached -= block_size * blocks.size();
    }
    free_blocks_.clear();
  }

  // cudaMalloc; on failure the cache goes back to the driver and it is tried once more.
  Result<void*> malloc_with_retry(std::size_t bytes, std::size_t block_size) {
    DeviceGuard device(ordinal_);
    void* ptr = nullptr;
    cudaError_t error = cudaMalloc(&ptr, block_size);
    if (error == cudaErrorMemoryAllocation && stats_.cached > 0) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it before retrying
      release_cache_locked();
      error = cudaMalloc(&ptr, block_size);
    }
    if (error == cudaSuccess) return ptr;
    cudaGetLastError();
    if (error != cudaErrorMemoryAllocation) {
      return detail::status_from_cuda_error(
          error, ("cudaMalloc of " + detail::describe_bytes(block_size) + " on CUDA device " +
                  std::to_string(ordinal_))
                     .c_str());
    }
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    std::string free_text = "the free amount is unknown (cudaMemGetInfo failed)";
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      free_text = detail::describe_bytes(free_bytes) + " of " +
                  detail::describe_bytes(total_bytes) + " are free (cudaMemGetInfo)";
    } else {
      cudaGetLastError();
    }
    return out_of_memory("CUDA device " + std::to_string(ordinal_) + ": cannot allocate " +
                         detail::describe_bytes(bytes) + " (block of " +
                         detail::describe_bytes(block_size) +
                         ") even after returning kbit's cached blocks to the driver; " + free_text +
                         " and kbit's live tensors hold " + detail::describe_bytes(stats_.in_use) +
                         ". Free tensors you no longer need, process the data in smaller "
                         "pieces, or use a GPU with more memory");
  }

  const int ordinal_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, std::size_t> live_;            // pointer -> block size
  std::map<std::size_t, std::vector<void*>> free_blocks_;  // block size -> cached blocks
  CachingAllocatorStats stats_;
};

// One allocator per device, created on first use. They are never destroyed: at process exit the
// CUDA runtime may already be torn down, and the driver reclaims the memory anyway.
struct Registry {
  std::mutex mutex;
  std::vector<CudaCachingAllocator*> allocators;  // [device count], null until first use
};

Registry& registry() {
  static Registry* instance = new Registry;
  return *instance;
}

// The allocator of `ordinal` if it was created, else null.
CudaCachingAllocator* existing_allocator(int ordinal) {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (ordinal < 0 || static_cast<std::size_t>(ordinal) >= reg.allocators.size()) return nullptr;
  return reg.allocators[static_cast<std::size_t>(ordinal)];
}

}  // namespace

Result<Allocator*> cuda_allocator(int ordinal) {
  const int count = detail::cuda_device_count();
  if (ordinal < 0 || ordinal >= count) {
    return unimplemented("there is no CUDA device " + std::to_string(ordinal) + " (" +
                         std::to_string(count) +
                         " visible); use cuda:0 .. cuda:N-1, or the CPU where there is no GPU");
  }
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.allocators.resize(static_cast<std::size_t>(count), nullptr);
  CudaCachingAllocator*& allocator = reg.allocators[static_cast<std::size_t>(ordinal)];
  if (allocator == nullptr) allocator = new CudaCachingAllocator(ordinal);
  return static_cast<Allocator*>(allocator);
}

CachingAllocatorStats cuda_allocator_stats(int ordinal) {
  const CudaCachingAllocator* allocator = existing_allocator(ordinal);
  return allocator == nullptr ? CachingAllocatorStats{} : allocator->stats();
}

void cuda_allocator_reset_peak(int ordinal) {
  CudaCachingAllocator* allocator = existing_allocator(ordinal);
  if (allocator != nullptr) allocator->reset_peak();
}

void cuda_allocator_release_cache(int ordinal) {
  CudaCachingAllocator* allocator = existing_allocator(ordinal);
  if (allocator != nullptr) allocator->release_cache();
}

}  // namespace kbit
