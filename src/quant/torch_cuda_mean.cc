// Emulates, value by value, the float32 additions that PyTorch's CUDA reduction
// kernel performs for `mean()` of a contiguous 1-D float32 tensor.
//
// What PyTorch runs (torch 2.11; ATen/native/cuda/Reduce.cuh and
// ReduceMomentKernel.cu):
//
//   mean_kernel_impl -> gpu_reduce_kernel<float, float, vt0 = 4,
//   input_vec_size = 4>(iter, MeanOps{factor}) with
//     factor  = float(1) / float(n)         (computed on the host in float32)
//     reduce  = acc + value                 (float32 accumulator, start 0.0f)
//     combine = a + b
//     project = sum * factor                (one float32 multiply)
//
// A full reduction of a 1-D tensor has one output and n inputs, reduced along
// the fastest (contiguous) dimension, so setReduceConfig chooses:
//
//   * vectorized input (float4 loads) iff n >= 128; then dim0 = n / 4,
//     otherwise dim0 = n.
//   * a block of `threads` x 1 threads, threads = last_pow2(dim0) capped at 512
//     (the y dimension collapses to 1 because there is a single output).
//   * values_per_thread = ceil(n / threads) (n, not n / 4: PyTorch counts
//     scalars here even when it loads vectors).
//   * several CTAs for the one output (a "global reduction") iff
//     values_per_thread >= 256, with
//       ctas = max(min(132 SMs * (2048 / threads), ceil(vpt / 16)),
//                  ceil(vpt / 256)).
//     Because dim0 >= 512 whenever this triggers, threads = 512 and the
//     first size with several CTAs is n = 130561.
//
// Per thread (lane x of CTA c, T threads, C CTAs, stride S = T * C loads):
//   * vectorized: four accumulators acc[0..3]; the thread reads the float4
//     vectors x + c*T, x + c*T + S, x + c*T + 2S, ... (while the whole vector
//     lies inside [0, n)) and adds component i to acc[i].  The n % 4 trailing
//     scalars are added afterwards to acc[0] of lanes 0..n%4-1 of CTA 0.
//   * scalar (n < 128): four accumulators; rounds of four loads at
//     x, x+S, x+2S, x+3S go to acc[0..3] while all four are in range, then the
//     remaining in-range loads go to acc[0], acc[1], ... in order.
//   * either way the thread's value is ((acc[0] + acc[1]) + acc[2]) + acc[3].
//
// Per CTA (block_x_reduce): a pairwise tree over the T lanes, halving the
// distance each step: lane x < d takes lane[x] + lane[x + d] for
// d = T/2, T/4, ..., 1 (shared memory for d >= 32, then warp shuffles with
// decreasing offsets 16, 8, 4, 2, 1).  block_y_reduce is a no-op (blockDim.y
// is 1).
//
// Across CTAs (global_reduce): each CTA stores its value in a staging buffer at
// index c; the last CTA to finish has lane x sum (0 + p[x]) + p[x + T] + ...
// over the partials p[k] with k = x mod T (k < C), then runs the same lane tree.
// The result therefore does not depend on which CTA finishes last.
//
// The multi-CTA configuration depends on the GPU: the constants below are the H200's (and
// H100's) 132 SMs; sizes above 4 325 376 values would be summed differently on other GPUs.
//
// Assumption: the device pointer is 16-byte aligned (fresh allocations from
// the CUDA caching allocator are 512-byte aligned), so the kernel's
// "misaligned head" branch is never taken.

#include "kbit/quant/nested_absmax.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace kbit::quant {
namespace {

// Properties of the H200 that enter PyTorch's launch configuration.
constexpr std::int64_t kSmCount = 132;
constexpr std::int64_t kMaxThreadsPerSm = 2048;

// Constants of PyTorch's reduction kernel for float32.
constexpr std::int64_t kMaxThreadsPerBlock = 512;  // mnt_wrapper<float>
constexpr std::int64_t kVectorWidth = 4;           // input_vec_size
constexpr std::int64_t kScalarUnroll = 4;          // vt0
constexpr std::int64_t kMinCountForVectorLoads = 128;
constexpr std::int64_t kMinValuesPerThread = 16;
constexpr std::int64_t kMaxValuesPerThread = 256;

struct LaunchConfig {
  bool vectorized = false;       // float4 loads (input_vectorized path)
  std::int64_t threads = 1;      // blockDim.x (blockDim.y == 1)
  std::int64_t ctas = 1;         // gridDim.y, CTAs cooperating on the output
  std::int64_t load_stride = 1;  // step_input, in loads (vectors or scalars)
};

std::int64_t div_up(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// Largest power of two <= v, at least 1 (PyTorch's last_pow2).
std::int64_t floor_pow2(std::int64_t v) {
  std::int64_t p = 1;
  while (p * 2 <= v) p *= 2;
  return p;
}

LaunchConfig choose_launch_config(std::int64_t n) {
  LaunchConfig config;
  config.vectorized = n >= kMinCountForVectorLoads;
  const std::int64_t dim0 = config.vectorized ? n / kVectorWidth : n;
  config.threads = dim0 < kMaxThreadsPerBlock ? floor_pow2(dim0) : kMaxThreadsPerBlock;

  // setReduceConfig also requires "split across warps" (values_per_thread >=
  // 16), which the >= 256 test below implies.  The grid has one column, which
  // is always <= the target grid size.
  const std::int64_t values_per_thread = div_up(n, config.threads);
  if (values_per_thread >= kMaxValuesPerThread) {
    const std::int64_t target_grid_size = kSmCount * (kMaxThreadsPerSm / config.threads);
    config.ctas =
        std::max(std::min(target_grid_size, div_up(values_per_thread, kMinValuesPerThread)),
                 div_up(values_per_thread, kMaxValuesPerThread));
  }
  config.load_stride = config.threads * config.ctas;
  return config;
}

// The order in which a thread folds its accumulators together.
float combine_accumulators(const float (&acc)[4]) {
  return ((acc[0] + acc[1]) + acc[2]) + acc[3];
}

// input_vectorized_thread_reduce_impl for the thread that starts at vector
// `first_vector`.
float vectorized_thread_value(const float* values, std::int64_t n, std::int64_t first_vector,
                              std::int64_t stride, std::int64_t lane, bool adds_tail) {
  float acc[kVectorWidth] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (std::int64_t vec = first_vector; vec * kVectorWidth + kVectorWidth - 1 < n; vec += stride) {
    const float* v = values + vec * kVectorWidth;
    for (std::int64_t i = 0; i < kVectorWidth; ++i) acc[i] += v[i];
  }
  if (adds_tail) {
    const std::int64_t tail_index = n - n % kVectorWidth + lane;
    if (tail_index < n) acc[0] += values[tail_index];
  }
  return combine_accumulators(acc);
}

// thread_reduce_impl (scalar loads, vt0 = 4) for the thread that starts at
// element `first`.
float scalar_thread_value(const float* values, std::int64_t n, std::int64_t first,
                          std::int64_t stride) {
  float acc[kScalarUnroll] = {0.0f, 0.0f, 0.0f, 0.0f};
  std::int64_t idx = first;
  while (idx + (kScalarUnroll - 1) * stride < n) {
    for (std::int64_t i = 0; i < kScalarUnroll; ++i) acc[i] += values[idx + i * stride];
    idx += kScalarUnroll * stride;
  }
  for (std::int64_t i = 0; i < kScalarUnroll && idx < n; ++i, idx += stride) {
    acc[i] += values[idx];
  }
  return combine_accumulators(acc);
}

// block_x_reduce: lane 0's result of the halving tree over a power-of-two
// number of lanes (shared memory steps, then warp shuffles; same pattern).
float lane_tree_sum(std::vector<float>& lanes) {
  for (std::size_t half = lanes.size() / 2; half > 0; half /= 2) {
    for (std::size_t x = 0; x < half; ++x) lanes[x] += lanes[x + half];
  }
  return lanes[0];
}

// The value one CTA contributes: each lane's thread value, then the lane tree.
float cta_value(const float* values, std::int64_t n, const LaunchConfig& config, std::int64_t cta,
                std::vector<float>& lanes) {
  for (std::int64_t lane = 0; lane < config.threads; ++lane) {
    const std::int64_t first = lane + cta * config.threads;
    lanes[static_cast<std::size_t>(lane)] =
        config.vectorized ? vectorized_thread_value(values, n, first, config.load_stride, lane,
                                                    /*adds_tail=*/cta == 0)
                          : scalar_thread_value(values, n, first, config.load_stride);
  }
  return lane_tree_sum(lanes);
}

// global_reduce in the last CTA: lane x folds the staged partials x, x + T,
// x + 2T, ... starting from 0, then the lane tree combines the lanes.
float combine_cta_values(const std::vector<float>& cta_values, std::vector<float>& lanes) {
  const std::size_t threads = lanes.size();
  for (std::size_t lane = 0; lane < threads; ++lane) {
    float value = 0.0f;
    for (std::size_t k = lane; k < cta_values.size(); k += threads) value += cta_values[k];
    lanes[lane] = value;
  }
  return lane_tree_sum(lanes);
}

float sum_in_torch_cuda_order(const float* values, std::int64_t n) {
  const LaunchConfig config = choose_launch_config(n);
  std::vector<float> lanes(static_cast<std::size_t>(config.threads));
  if (config.ctas == 1) return cta_value(values, n, config, 0, lanes);

  std::vector<float> cta_values(static_cast<std::size_t>(config.ctas));
  for (std::int64_t cta = 0; cta < config.ctas; ++cta) {
    cta_values[static_cast<std::size_t>(cta)] = cta_value(values, n, config, cta, lanes);
  }
  return combine_cta_values(cta_values, lanes);
}

}  // namespace

float mean_in_torch_cuda_order(const float* values, std::int64_t count) {
  // MeanOps::project multiplies by factor = float(1) / numel, both in float32.
  const float factor = 1.0f / static_cast<float>(count);
  return sum_in_torch_cuda_order(values, count) * factor;
}

}  // namespace kbit::quant
