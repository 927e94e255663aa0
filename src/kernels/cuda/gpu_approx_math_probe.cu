#include "kernels/cuda/gpu_approx_math_probe.h"

#include "kernels/cuda/bnb_fast_math.cuh"

namespace kbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rcp_approx_kernel(const float* __restrict__ x, std::int64_t n,
                                  float* __restrict__ result) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) result[i] = rcp_approx_ftz(x[i]);
}

__global__ void div_approx_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                  std::int64_t n, float* __restrict__ result) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) result[i] = div_approx_ftz(a[i], b[i]);
}

unsigned blocks_for(std::int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

}  // namespace

cudaError_t rcp_approx_on_device(const float* x, std::int64_t n, float* result) {
  if (n <= 0) return cudaSuccess;
  rcp_approx_kernel<<<blocks_for(n), kThreads>>>(x, n, result);
  return cudaGetLastError();
}

cudaError_t div_approx_on_device(const float* a, const float* b, std::int64_t n, float* result) {
  if (n <= 0) return cudaSuccess;
  div_approx_kernel<<<blocks_for(n), kThreads>>>(a, b, n, result);
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda
