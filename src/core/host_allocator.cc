#include <cstdlib>
#include <new>

#include "kbit/core/allocator.h"

namespace kbit {
namespace {

constexpr std::size_t kHostAlignment = 256;

class HostAllocator final : public Allocator {
 public:
  Result<void*> allocate(std::size_t bytes) override {
    // aligned_alloc needs a size that is a multiple of the alignment (and not zero).
    const std::size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    void* ptr = std::aligned_alloc(kHostAlignment, rounded == 0 ? kHostAlignment : rounded);
    if (ptr == nullptr) {
      return out_of_memory("host allocation of " + std::to_string(bytes) + " bytes failed");
    }
    return ptr;
  }
  void deallocate(void* ptr) override { std::free(ptr); }
};

}  // namespace

Allocator& host_allocator() {
  static HostAllocator allocator;
  return allocator;
}

}  // namespace kbit
