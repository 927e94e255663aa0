#include "model/cuda/device_loader.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "core/cuda_runtime.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/random_fill.h"

namespace kbit::model::cuda {
namespace {

// Two buffers of this size: large enough that each transfer runs at full PCIe speed, small
// enough to cost little pinned memory.
constexpr std::size_t kStagingBytes = std::size_t{64} << 20;

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(error, what);
}

cudaStream_t as_cuda(Stream stream) {
  return static_cast<cudaStream_t>(stream.handle);
}

}  // namespace

struct DeviceLoader::Staging {
  void* buffers[2] = {nullptr, nullptr};       // pinned host memory, kStagingBytes each
  cudaEvent_t copied[2] = {nullptr, nullptr};  // the last transfer out of each buffer is done
  int next = 0;

  ~Staging() {
    for (int i = 0; i < 2; ++i) {
      if (copied[i] != nullptr) cudaEventSynchronize(copied[i]), cudaEventDestroy(copied[i]);
      if (buffers[i] != nullptr) cudaFreeHost(buffers[i]);
    }
  }
};

Result<std::unique_ptr<DeviceLoader>> DeviceLoader::create(Device device) {
  if (!device.is_cuda()) return invalid_argument("DeviceLoader needs a CUDA device");
  KBIT_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device.index), "cudaSetDevice"));
  auto staging = std::make_unique<Staging>();
  for (int i = 0; i < 2; ++i) {
    KBIT_RETURN_IF_ERROR(
        cuda_status(cudaHostAlloc(&staging->buffers[i], kStagingBytes, cudaHostAllocDefault),
                    "cudaHostAlloc of the pinned staging buffers (2 × 64 MiB)"));
    KBIT_RETURN_IF_ERROR(cuda_status(
        cudaEventCreateWithFlags(&staging->copied[i], cudaEventDisableTiming), "cudaEventCreate"));
  }
  cudaStream_t stream = nullptr;
  KBIT_RETURN_IF_ERROR(
      cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  return std::unique_ptr<DeviceLoader>(
      new DeviceLoader(device, Stream{stream}, std::move(staging)));
}

DeviceLoader::DeviceLoader(Device device, Stream stream, std::unique_ptr<Staging> staging)
    : device_(device), stream_(stream), staging_(std::move(staging)) {}

DeviceLoader::~DeviceLoader() {
  staging_.reset();  // waits for the transfers out of the staging buffers
  if (stream_.handle != nullptr) {
    cudaStreamSynchronize(as_cuda(stream_));
    cudaStreamDestroy(as_cuda(stream_));
  }
}

Result<Tensor> DeviceLoader::upload(const TensorView& host, DType dtype) {
  if (!host.device().is_cpu() || !host.is_contiguous()) {
    return invalid_argument("DeviceLoader::upload needs a contiguous host tensor, got " +
                            host.describe());
  }
  const bool convert = dtype != host.dtype();
  if (convert && (!is_floating(dtype) || !is_floating(host.dtype()))) {
    return invalid_argument("DeviceLoader::upload converts between float dtypes only, not " +
                            host.describe() + " to " + std::string(dtype_name(dtype)));
  }
  KBIT_ASSIGN_OR_RETURN(Tensor stored, Tensor::empty(host.shape(), host.dtype(), device_));
  const auto* source = static_cast<const std::byte*>(host.data());
  auto* target = static_cast<std::byte*>(stored.view().data());
  const cudaStream_t stream = as_cuda(stream_);
  for (std::size_t offset = 0; offset < host.nbytes(); offset += kStagingBytes) {
    const std::size_t bytes = std::min(kStagingBytes, host.nbytes() - offset);
    Staging& s = *staging_;
    const int i = s.next;
    s.next ^= 1;
    // The buffer's previous transfer must be done before the host overwrites it.
    KBIT_RETURN_IF_ERROR(cuda_status(cudaEventSynchronize(s.copied[i]), "cudaEventSynchronize"));
    std::memcpy(s.buffers[i], source + offset, bytes);
    KBIT_RETURN_IF_ERROR(cuda_status(
        cudaMemcpyAsync(target + offset, s.buffers[i], bytes, cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync (weight upload)"));
    KBIT_RETURN_IF_ERROR(cuda_status(cudaEventRecord(s.copied[i], stream), "cudaEventRecord"));
  }
  if (!convert) return stored;
  KBIT_ASSIGN_OR_RETURN(Tensor converted, Tensor::empty(host.shape(), dtype, device_));
  KBIT_RETURN_IF_ERROR(cuda_status(
      kernels::cuda::convert_floats(stored.view().data(), host.dtype(), converted.view().data(),
                                    dtype, host.numel(), stream),
      "convert_floats (weight upload)"));
  return converted;  // `stored` returns to the cache; work on this stream stays in order
}

Result<Tensor> DeviceLoader::random(Shape shape, DType dtype, std::uint64_t seed, float mean,
                                    float stddev) {
  KBIT_ASSIGN_OR_RETURN(Tensor tensor, Tensor::empty(shape, dtype, device_));
  KBIT_RETURN_IF_ERROR(
      cuda_status(kernels::cuda::fill_normal(tensor.view().data(), dtype, tensor.numel(), seed,
                                             mean, stddev, as_cuda(stream_)),
                  "fill_normal"));
  return tensor;
}

Status DeviceLoader::finish() {
  return cuda_status(cudaStreamSynchronize(as_cuda(stream_)), "cudaStreamSynchronize (loading)");
}

}  // namespace kbit::model::cuda
