#include "cuda_bench_timing.h"

#include <algorithm>
#include <cstddef>
#include <vector>

namespace kbit::bench {
namespace {

constexpr std::size_t kCopyBytes = std::size_t{512} << 20;

// The median of 21 timed copies after one warm-up, in GB/s; 0 if a call fails.
double measure_copy() {
  void* source = nullptr;
  void* destination = nullptr;
  if (cudaMalloc(&source, kCopyBytes) != cudaSuccess) return 0.0;
  if (cudaMalloc(&destination, kCopyBytes) != cudaSuccess) {
    cudaFree(source);
    return 0.0;
  }
  // Any bytes serve a copy, but never leave them uninitialised: fill with a pattern.
  bool ok = cudaMemset(source, 0x5A, kCopyBytes) == cudaSuccess;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> milliseconds;
  for (int i = 0; ok && i < 22; ++i) {
    cudaEventRecord(start);
    ok = cudaMemcpyAsync(destination, source, kCopyBytes, cudaMemcpyDeviceToDevice) == cudaSuccess;
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    if (i > 0) milliseconds.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(source);
  cudaFree(destination);
  if (!ok) return 0.0;
  std::nth_element(milliseconds.begin(), milliseconds.begin() + 10, milliseconds.end());
  return 2.0 * static_cast<double>(kCopyBytes) / (static_cast<double>(milliseconds[10]) / 1e3) /
         1e9;
}

}  // namespace

double copy_gb_per_s() {
  static const double measured = measure_copy();
  return measured;
}

void report_fraction(benchmark::State& state, double gb_per_s) {
  const double copy = copy_gb_per_s();
  if (gb_per_s > 0.0 && copy > 0.0) state.counters["copy_fraction"] = gb_per_s / copy;
}

}  // namespace kbit::bench
