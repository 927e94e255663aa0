// The GPU side of LlamaModel in a build without CUDA: there is none (llama_cuda.h).
#include "model/cuda/llama_cuda.h"

namespace kbit::model::cuda {

struct CudaLlama::Impl {
  LlamaConfig config;
  LinearNumerics numerics;
  DeviceWeights weights;
};

CudaLlama::CudaLlama(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLlama::~CudaLlama() = default;

Result<std::unique_ptr<CudaLlama>> CudaLlama::create(const LlamaConfig&, Device,
                                                     const LinearNumerics&, DeviceWeights, bool) {
  return unimplemented("this build of kbit has no CUDA support; run on the CPU (--device cpu)");
}

const LlamaConfig& CudaLlama::config() const {
  return impl_->config;
}

Device CudaLlama::device() const {
  return Device::cpu();
}

const LinearNumerics& CudaLlama::numerics() const {
  return impl_->numerics;
}

const DeviceWeights& CudaLlama::weights() const {
  return impl_->weights;
}

std::size_t CudaLlama::weight_bytes() const {
  return 0;
}

Result<std::shared_ptr<KvCache::DeviceState>> CudaLlama::new_cache_state(std::int64_t,
                                                                         std::int64_t) const {
  return unimplemented("this build of kbit has no CUDA support");
}

Status CudaLlama::forward(std::span<const std::int32_t>, std::int64_t, KvCache::DeviceState&,
                          std::int64_t, TensorView, bool) const {
  return unimplemented("this build of kbit has no CUDA support");
}

Device CudaLlama::device(const KvCache::DeviceState&) {
  return Device::cpu();
}

Stream CudaLlama::stream(const KvCache::DeviceState&) {
  return Stream{};
}

std::size_t CudaLlama::device_bytes(const KvCache::DeviceState&) {
  return 0;
}

}  // namespace kbit::model::cuda
