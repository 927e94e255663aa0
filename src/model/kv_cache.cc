#include <string>

#include "kbit/model/llama.h"
#include "model/cuda/llama_cuda.h"

namespace kbit::model {

KvCache::~KvCache() = default;

Device KvCache::device() const {
  return device_state_ ? cuda::CudaLlama::device(*device_state_) : Device::cpu();
}

Stream KvCache::stream() const {
  return device_state_ ? cuda::CudaLlama::stream(*device_state_) : Stream{};
}

std::size_t KvCache::device_bytes() const {
  return device_state_ ? cuda::CudaLlama::device_bytes(*device_state_) : 0;
}

Status KvCache::truncate(std::int64_t new_size) {
  if (new_size < 0 || new_size > size_) {
    return invalid_argument("KvCache::truncate: new size " + std::to_string(new_size) +
                            " is outside [0, " + std::to_string(size_) + "] (positions held)");
  }
  size_ = new_size;
  return ok_status();
}

}  // namespace kbit::model
