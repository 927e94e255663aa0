// The core's contact with the CUDA runtime, for builds with KBIT_CUDA (cuda_runtime.h).
//
// The device allocator lives beside this file, in cuda_caching_allocator.cc.
#include <cuda_runtime_api.h>

#include <string>

#include "core/cuda_runtime.h"

namespace kbit::detail {
namespace {

// The device count, asked once. Without a driver or a GPU the runtime answers with an error
// (cudaErrorNoDevice, cudaErrorInsufficientDriver, ...); that means "no CUDA here", not a failure.
int probe_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for the next unrelated check
    return 0;
  }
  return count;
}

}  // namespace

int cuda_device_count() {
  static const int count = probe_device_count();
  return count;
}

bool cuda_runtime_available() {
  return cuda_device_count() > 0;
}

Status status_from_cuda_error(int error, const char* what) {
  if (error == cudaSuccess) return ok_status();
  const auto cuda_error = static_cast<cudaError_t>(error);
  std::string message = std::string(what) + ": " + cudaGetErrorName(cuda_error) + " (" +
                        cudaGetErrorString(cuda_error) + ")";
  if (cuda_error == cudaErrorMemoryAllocation) return out_of_memory(std::move(message));
  return internal_error(std::move(message));
}

Status cuda_copy(void* dst, const void* src, std::size_t bytes) {
  // Unified addressing tells the runtime which side each pointer is on.
  return status_from_cuda_error(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
}

Status cuda_copy_on_stream(void* dst, const void* src, std::size_t bytes, void* stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cuda_stream), "cudaMemcpyAsync"));
  return status_from_cuda_error(cudaStreamSynchronize(cuda_stream), "cudaStreamSynchronize");
}

Status cuda_memory_info(int ordinal, std::size_t* free_bytes, std::size_t* total_bytes) {
  if (ordinal < 0 || ordinal >= cuda_device_count()) {
    return invalid_argument("CUDA device " + std::to_string(ordinal) + " does not exist; " +
                            std::to_string(cuda_device_count()) + " device(s) are visible");
  }
  int previous = 0;
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaGetDevice(&previous), "cudaGetDevice"));
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaSetDevice(ordinal), "cudaSetDevice"));
  const Status status =
      status_from_cuda_error(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaSetDevice(previous), "cudaSetDevice"));
  return status;
}

Status cuda_synchronize(int ordinal) {
  if (ordinal < 0 || ordinal >= cuda_device_count()) {
    return invalid_argument("CUDA device " + std::to_string(ordinal) + " does not exist; " +
                            std::to_string(cuda_device_count()) + " device(s) are visible");
  }
  // Switch to the device for the call only, so that the caller's current device stays.
  int previous = 0;
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaGetDevice(&previous), "cudaGetDevice"));
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaSetDevice(ordinal), "cudaSetDevice"));
  const Status status = status_from_cuda_error(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(cudaSetDevice(previous), "cudaSetDevice"));
  return status;
}

Status cuda_zero(void* ptr, std::size_t bytes) {
  return status_from_cuda_error(cudaMemset(ptr, 0, bytes), "cudaMemset");
}

Status cuda_prefetch_to_device(const void* ptr, std::size_t bytes, int ordinal, void* stream) {
  int concurrent = 0;
  KBIT_RETURN_IF_ERROR(status_from_cuda_error(
      cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, ordinal),
      "cudaDeviceGetAttribute(cudaDevAttrConcurrentManagedAccess)"));
  if (concurrent == 0 || bytes == 0) return ok_status();
  cudaMemLocation location{};
  location.type = cudaMemLocationTypeDevice;
  location.id = ordinal;
  return status_from_cuda_error(
      cudaMemPrefetchAsync(ptr, bytes, location, 0, static_cast<cudaStream_t>(stream)),
      "cudaMemPrefetchAsync");
}

}  // namespace kbit::detail
