#include "core/cuda_runtime.h"
#include "kbit/core/allocator.h"

#include <string>

namespace kbit {
namespace detail {

bool cuda_runtime_available() {
  return false;
}
int cuda_device_count() {
  return 0;
}
Status cuda_copy(void*, const void*, std::size_t) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
Status cuda_copy_on_stream(void*, const void*, std::size_t, void*) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
Status cuda_memory_info(int, std::size_t*, std::size_t*) {
  return unimplemented("this build of kbit has no CUDA support");
}

Status cuda_synchronize(int) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
Status cuda_zero(void*, std::size_t) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
Status cuda_prefetch_to_device(const void*, std::size_t, int, void*) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
Status status_from_cuda_error(int error, const char* what) {
  if (error == 0) return ok_status();
  return internal_error(std::string(what) + ": CUDA error in a build without CUDA");
}

}  // namespace detail

Result<Allocator*> cuda_allocator(int) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}
CachingAllocatorStats cuda_allocator_stats(int) {
  return {};
}
void cuda_allocator_reset_peak(int) {}

void cuda_allocator_release_cache(int) {}

Result<Allocator*> cuda_managed_allocator(int) {
  return unimplemented("this kbit was built without CUDA; rebuild with the `cuda` preset");
}

}  // namespace kbit
