#include "kbit/core/device.h"

#include <charconv>

#include "core/cuda_runtime.h"

namespace kbit {

std::string Device::to_string() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Result<Device> parse_device(std::string_view text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.starts_with("cuda:")) {
    const std::string_view digits = text.substr(5);
    int ordinal = -1;
    const auto [end, error] =
        std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
    if (error == std::errc() && end == digits.data() + digits.size() && ordinal >= 0) {
      return Device::cuda(ordinal);
    }
  }
  return invalid_argument("device '" + std::string(text) +
                          "' is not one of: cpu, cuda, cuda:N (N = 0, 1, ...)");
}

bool cuda_available() {
  return detail::cuda_runtime_available();
}

Result<DeviceMemory> device_memory(const Device& device) {
  if (device.is_cpu()) return invalid_argument("device_memory: the CPU is not a CUDA device");
  DeviceMemory memory;
  KBIT_RETURN_IF_ERROR(detail::cuda_memory_info(device.index, &memory.free, &memory.total));
  return memory;
}

Status synchronize(const Device& device) {
  if (device.is_cpu()) return ok_status();
  return detail::cuda_synchronize(device.index);
}

}  // namespace kbit
