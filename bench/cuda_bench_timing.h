// Timing shared by the GPU benchmarks (cuda_quant_bench.cc, cuda_optim_bench.cc).
//
// Each case times one call between two CUDA events per iteration and reports GB/s (the fewest
// bytes the operation must move, per second) and copy_fraction (that over the device's measured
// device-to-device copy bandwidth, counted the same way: bytes read + bytes written).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace kbit::bench {

// Times launch(index) once per iteration, index cycling over 0 .. rotation - 1 so that a case can
// rotate among buffer sets too large together for the L2 cache; each index is called once before
// timing (module load, first touch). launch returns the launch error. Reports the "GB/s" counter
// for bytes_per_call and returns it; 0 on failure, which is reported on `state`.
template <typename Launch>
double run_timed(benchmark::State& state, double bytes_per_call, int rotation, Launch launch) {
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int index = 0; index < rotation; ++index) launch(index);
  cudaDeviceSynchronize();

  double seconds = 0.0;
  std::int64_t calls = 0;
  int next = 0;
  for (auto _ : state) {
    cudaEventRecord(start);
    const cudaError_t error = launch(next);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (error != cudaSuccess) {
      state.SkipWithError(cudaGetErrorString(error));
      break;
    }
    float milliseconds = 0.0f;
    cudaEventElapsedTime(&milliseconds, start, stop);
    state.SetIterationTime(milliseconds / 1e3);
    seconds += milliseconds / 1e3;
    ++calls;
    next = (next + 1) % rotation;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (calls == 0 || seconds <= 0.0) return 0.0;
  const double gb_per_s = bytes_per_call * static_cast<double>(calls) / seconds / 1e9;
  state.counters["GB/s"] = gb_per_s;
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_call) * state.iterations());
  return gb_per_s;
}

// Device 0's device-to-device cudaMemcpy bandwidth in GB/s: the median of 21 copies of 512 MiB
// between buffers of its own, measured once per process. 0 where it cannot be measured.
double copy_gb_per_s();

// Adds the "copy_fraction" counter, gb_per_s / copy_gb_per_s(), where both are known.
void report_fraction(benchmark::State& state, double gb_per_s);

// Median of 5 repetitions; each repetition runs for at least 0.3 s of GPU time.
#define KBIT_GPU_BENCHMARK(function)  \
  BENCHMARK(function)                 \
      ->UseManualTime()               \
      ->Unit(benchmark::kMicrosecond) \
      ->MinTime(0.3)                  \
      ->Repetitions(5)                \
      ->ReportAggregatesOnly(true)

}  // namespace kbit::bench
