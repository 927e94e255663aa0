// DeviceLoader in a build without CUDA: there is no device to load onto (device_loader.h).
#include "model/cuda/device_loader.h"

namespace kbit::model::cuda {

struct DeviceLoader::Staging {};

Result<std::unique_ptr<DeviceLoader>> DeviceLoader::create(Device) {
  return unimplemented("this build of kbit has no CUDA support; run on the CPU (--device cpu)");
}

DeviceLoader::DeviceLoader(Device device, Stream stream, std::unique_ptr<Staging> staging)
    : device_(device), stream_(stream), staging_(std::move(staging)) {}

DeviceLoader::~DeviceLoader() = default;

Result<Tensor> DeviceLoader::upload(const TensorView&, DType) {
  return unimplemented("this build of kbit has no CUDA support");
}

Result<Tensor> DeviceLoader::random(Shape, DType, std::uint64_t, float, float) {
  return unimplemented("this build of kbit has no CUDA support");
}

Status DeviceLoader::finish() {
  return unimplemented("this build of kbit has no CUDA support");
}

}  // namespace kbit::model::cuda
