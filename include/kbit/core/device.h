// Where tensor memory lives and where work runs.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "kbit/core/status.h"

namespace kbit {

enum class DeviceKind { kCpu, kCuda };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // CUDA device ordinal; 0 for the CPU

  static Device cpu() { return Device{}; }
  static Device cuda(int ordinal = 0) { return Device{DeviceKind::kCuda, ordinal}; }
  bool is_cpu() const { return kind == DeviceKind::kCpu; }
  bool is_cuda() const { return kind == DeviceKind::kCuda; }
  bool operator==(const Device&) const = default;

  // "cpu" or "cuda:N".
  std::string to_string() const;
};

// Parses "cpu", "cuda" (ordinal 0) or "cuda:N".
Result<Device> parse_device(std::string_view text);

// True when this build has the CUDA kernels and at least one CUDA device is usable.
bool cuda_available();

// Device memory as the driver reports it (cudaMemGetInfo), in bytes.
struct DeviceMemory {
  std::size_t free = 0;
  std::size_t total = 0;
};
// kInvalidArgument for the CPU or a device that does not exist.
Result<DeviceMemory> device_memory(const Device& device);

// Waits until all work queued on `device` is finished; immediate for the CPU.
Status synchronize(const Device& device);

// An opaque CUDA stream (cudaStream_t) so that headers stay free of CUDA; null means the
// default stream. Ignored by CPU work.
struct Stream {
  void* handle = nullptr;
};

}  // namespace kbit
