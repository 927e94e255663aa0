// The global gradient norm and the scaling of gradient clipping on the GPU (contract:
// optim_launchers.h; the CPU path and the clipping rule: optim/clip_grad_norm.cc).
//
// Many gradients, often hundreds of small LoRA matrices, are one array to these kernels: the
// concatenation of their spans, cut into `blocks` equal ranges (a multiple of 32 values each, the
// last one shorter or empty). Block b finds the span holding the start of its range by binary
// search over the spans' beginnings and walks the spans overlapping the range, its threads
// striding over each overlap. So one launch covers every tensor, with the work balanced whatever
// their sizes.
//
// The sum of squares is deterministic: each thread adds its elements in index order, each block
// reduces its threads' sums by a fixed tree (warp shuffles, then the warps' sums), and one block
// adds the per-block partial sums by the same fixed tree.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/optim_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Fewer blocks for small totals: at least this many values per block where there are enough.
constexpr std::int64_t kMinValuesPerBlock = 4 * kThreads;

// The blocks over `total` values, and the values in each block's range.
struct Partition {
  int blocks;
  std::int64_t per_block;
};

Partition partition(std::int64_t total) {
  const std::int64_t wanted = (total + kMinValuesPerBlock - 1) / kMinValuesPerBlock;
  const auto blocks = static_cast<int>(std::clamp<std::int64_t>(wanted, 1, kGradNormMaxBlocks));
  const std::int64_t per_block = ((total + blocks - 1) / blocks + 31) / 32 * 32;
  return {blocks, per_block};
}

// The last span that begins at or before `index` (spans ordered by begin, the first at 0).
__device__ int span_holding(const GradientSpan* spans, int tensors, std::int64_t index) {
  int low = 0;
  int high = tensors - 1;
  while (low < high) {
    const int middle = low + (high - low + 1) / 2;
    if (spans[middle].begin <= index) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// visit(value pointer) for each element of this block's range, each thread taking every
// blockDim.x-th element of each span's overlap with the range, in index order.
template <typename Visit>
__device__ __forceinline__ void for_block_range(const GradientSpan* spans, int tensors,
                                                std::int64_t total, std::int64_t per_block,
                                                Visit visit) {
  const std::int64_t start = static_cast<std::int64_t>(blockIdx.x) * per_block;
  const std::int64_t end = std::min(total, start + per_block);
  if (start >= end) return;
  for (int t = span_holding(spans, tensors, start); t < tensors && spans[t].begin < end; ++t) {
    const GradientSpan span = spans[t];
    const std::int64_t first = std::max(start, span.begin) - span.begin;
    const std::int64_t last = std::min(end, span.begin + span.count) - span.begin;
    for (std::int64_t i = first + threadIdx.x; i < last; i += blockDim.x) visit(span.data + i);
  }
}

// The sum of `value` over the block's kThreads threads, by a fixed tree; valid in thread 0.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) warp_sums[warp] = value;
  __syncthreads();
  double sum = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[w];
  }
  return sum;
}

// partials[b] = Σ g² over block b's range.
__global__ void __launch_bounds__(kThreads)
    partial_sums_kernel(const GradientSpan* __restrict__ spans, int tensors, std::int64_t total,
                        std::int64_t per_block, double* __restrict__ partials) {
  double sum = 0.0;
  for_block_range(spans, tensors, total, per_block, [&](const float* value) {
    const double g = *value;
    sum += g * g;
  });
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *sum = Σ partials[0, blocks), one block.
__global__ void __launch_bounds__(kThreads)
    final_sum_kernel(const double* __restrict__ partials, int blocks, double* __restrict__ sum) {
  double part = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < blocks; i += kThreads) part += partials[i];
  part = block_sum(part);
  if (threadIdx.x == 0) *sum = part;
}

__global__ void __launch_bounds__(kThreads)
    scale_kernel(const GradientSpan* __restrict__ spans, int tensors, std::int64_t total,
                 std::int64_t per_block, float coefficient) {
  for_block_range(spans, tensors, total, per_block,
                  [&](float* value) { *value = __fmul_rn(*value, coefficient); });
}

bool valid_call(const GradientSpan* spans, int tensors, std::int64_t total) {
  return spans != nullptr && tensors >= 1 && total >= 1;
}

}  // namespace

cudaError_t grad_sum_of_squares(const GradientSpan* spans, int tensors, std::int64_t total,
                                double* partials, double* sum, cudaStream_t stream) {
  if (!valid_call(spans, tensors, total) || partials == nullptr || sum == nullptr) {
    return cudaErrorInvalidValue;
  }
  const Partition shape = partition(total);
  partial_sums_kernel<<<shape.blocks, kThreads, 0, stream>>>(spans, tensors, total, shape.per_block,
                                                             partials);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  final_sum_kernel<<<1, kThreads, 0, stream>>>(partials, shape.blocks, sum);
  return cudaGetLastError();
}

cudaError_t grad_scale(const GradientSpan* spans, int tensors, std::int64_t total,
                       float coefficient, cudaStream_t stream) {
  if (!valid_call(spans, tensors, total)) return cudaErrorInvalidValue;
  const Partition shape = partition(total);
  scale_kernel<<<shape.blocks, kThreads, 0, stream>>>(spans, tensors, total, shape.per_block,
                                                      coefficient);
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda
