// DeviceSampler in a build without CUDA: there is no device (device_sampler.h).
#include "kbit/generate/device_sampler.h"

namespace kbit::generate {

struct DeviceSampler::State {};

DeviceSampler::DeviceSampler(std::unique_ptr<State> state) : state_(std::move(state)) {}
DeviceSampler::~DeviceSampler() = default;

Result<std::unique_ptr<DeviceSampler>> DeviceSampler::create(const SamplingParams&, std::int64_t,
                                                             Device, Stream) {
  return unimplemented("this build of kbit has no CUDA support; sample on the CPU");
}

Status DeviceSampler::observe(std::span<const std::int32_t>) {
  return unimplemented("this build of kbit has no CUDA support");
}

Result<std::int32_t> DeviceSampler::sample(const TensorView&) {
  return unimplemented("this build of kbit has no CUDA support");
}

Result<std::vector<std::int32_t>> DeviceSampler::sample_rows(const TensorView&) {
  return unimplemented("this build of kbit has no CUDA support");
}

}  // namespace kbit::generate
