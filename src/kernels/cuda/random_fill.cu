// Normal samples on the device (contract: random_fill.h), mirroring src/core/random.cc.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/counter_hash.cuh"
#include "kernels/cuda/random_fill.h"

namespace kbit::kernels::cuda {
namespace {

// A uniform double in (0, 1]: never 0, so log() is finite.
__device__ __forceinline__ double uniform(std::uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

template <typename T>
__global__ void fill_normal_kernel(T* __restrict__ out, std::int64_t n, std::uint64_t stream,
                                   float mean, float stddev) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += step) {
    const auto index = static_cast<std::uint64_t>(i);
    const double u1 = uniform(mix(stream ^ mix(2 * index)));
    const double u2 = uniform(mix(stream ^ mix(2 * index + 1)));
    const double sample = sqrt(-2.0 * log(u1)) * cos(kTwoPi * u2);
    out[i] = from_float<T>(static_cast<float>(mean + stddev * sample));
  }
}

template <typename T>
cudaError_t launch(void* out, std::int64_t n, std::uint64_t seed, float mean, float stddev,
                   cudaStream_t stream) {
  constexpr int kThreads = 256;
  const std::int64_t blocks = std::min<std::int64_t>((n + kThreads - 1) / kThreads, 132 * 64);
  if (n == 0) return cudaSuccess;
  fill_normal_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<T*>(out), n, mix(seed ^ 0x6a09e667f3bcc909ull), mean, stddev);
  return cudaGetLastError();
}

}  // namespace

cudaError_t fill_normal(void* out, DType dtype, std::int64_t n, std::uint64_t seed, float mean,
                        float stddev, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return launch<float>(out, n, seed, mean, stddev, stream);
    case DType::kF16:
      return launch<__half>(out, n, seed, mean, stddev, stream);
    case DType::kBF16:
      return launch<__nv_bfloat16>(out, n, seed, mean, stddev, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace kbit::kernels::cuda
