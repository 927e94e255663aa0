// Managed (unified) memory for paged optimizer state (contract: kbit/core/allocator.h).
//
// Each request is one cudaMallocManaged, attached globally so that any stream's kernels may touch
// it; the driver migrates its pages to the device on use (or on a prefetch) and back to the host
// when the device runs short. Requests are rare (once per parameter per run), so nothing is
// cached. A request larger than the device's free memory is refused: managed memory beyond it
// would thrash from the first step on, and some drivers fail such requests late and obscurely.
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>
#include <vector>

#include "core/cuda_runtime.h"
#include "core/describe_bytes.h"
#include "kbit/core/allocator.h"

namespace kbit {
namespace {

class CudaManagedAllocator final : public Allocator {
 public:
  explicit CudaManagedAllocator(int ordinal) : ordinal_(ordinal) {}

  Result<void*> allocate(std::size_t bytes) override {
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    KBIT_RETURN_IF_ERROR(detail::cuda_memory_info(ordinal_, &free_bytes, &total_bytes));
    if (bytes > free_bytes) {
      return out_of_memory("managed memory of " + detail::describe_bytes(bytes) +
                           " for paged optimizer state does not fit in the " +
                           detail::describe_bytes(free_bytes) + " free on CUDA device " +
                           std::to_string(ordinal_) +
                           "; kbit never asks for more managed memory than the device has free. "
                           "Free device memory (a smaller batch or sequence length) first");
    }
    void* ptr = nullptr;
    KBIT_RETURN_IF_ERROR(detail::status_from_cuda_error(
        cudaMallocManaged(&ptr, bytes == 0 ? 1 : bytes, cudaMemAttachGlobal),
        ("cudaMallocManaged of " + detail::describe_bytes(bytes)).c_str()));
    return ptr;
  }

  void deallocate(void* ptr) override {
    if (ptr != nullptr) cudaFree(ptr);
  }

 private:
  int ordinal_;
};

}  // namespace

Result<Allocator*> cuda_managed_allocator(int ordinal) {
  const int count = detail::cuda_device_count();
  if (ordinal < 0 || ordinal >= count) {
    return unimplemented("there is no CUDA device " + std::to_string(ordinal) + " (" +
                         std::to_string(count) + " visible) for paged optimizer state");
  }
  // Never destroyed, as the caching allocators (cuda_caching_allocator.cc).
  static std::mutex mutex;
  static auto* allocators = new std::vector<CudaManagedAllocator*>;
  std::lock_guard<std::mutex> lock(mutex);
  allocators->resize(static_cast<std::size_t>(count), nullptr);
  CudaManagedAllocator*& allocator = (*allocators)[static_cast<std::size_t>(ordinal)];
  if (allocator == nullptr) allocator = new CudaManagedAllocator(ordinal);
  return static_cast<Allocator*>(allocator);
}

}  // namespace kbit
