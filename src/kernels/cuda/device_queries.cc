// device_queries.h: the runtime's answers cached per device ordinal.
#include "kernels/cuda/device_queries.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

namespace kbit::kernels::cuda {
namespace {

struct DeviceFacts {
  bool runs_sm90a = false;
  std::size_t shared_memory_optin = 0;
  int multiprocessors = 0;
};

std::mutex& cache_mutex() {
  static std::mutex mutex;
  return mutex;
}

// The facts of the current device, queried on the first call for it.
DeviceFacts current_device_facts() {
  static std::map<int, DeviceFacts> facts_by_device;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return {};
  const std::lock_guard<std::mutex> lock(cache_mutex());
  const auto known = facts_by_device.find(device);
  if (known != facts_by_device.end()) return known->second;
  int major = 0;
  int minor = 0;
  int optin = 0;
  int multiprocessors = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess) {
    return {};
  }
  const DeviceFacts facts{major == 9 && minor == 0, static_cast<std::size_t>(optin),
                          multiprocessors};
  facts_by_device.emplace(device, facts);
  return facts;
}

}  // namespace

bool current_device_runs_sm90a() {
  return current_device_facts().runs_sm90a;
}

std::size_t current_device_shared_memory_optin() {
  return current_device_facts().shared_memory_optin;
}

int current_device_multiprocessors() {
  return current_device_facts().multiprocessors;
}

cudaError_t opt_in_dynamic_shared_memory(const void* kernel, std::size_t bytes) {
  static std::map<std::pair<const void*, int>, std::size_t> granted;
  int device = 0;
  const cudaError_t device_error = cudaGetDevice(&device);
  if (device_error != cudaSuccess) return device_error;
  const std::lock_guard<std::mutex> lock(cache_mutex());
  std::size_t& bytes_granted = granted[{kernel, device}];
  if (bytes <= bytes_granted) return cudaSuccess;
  const cudaError_t error = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (error == cudaSuccess) bytes_granted = bytes;
  return error;
}

}  // namespace kbit::kernels::cuda
