// The CUDA backward kernels of training other than attention's (contract:
// llama_backward_launchers.h; definitions: the CPU references of kernels/cpu/llama_backward.h).
//
// Activations T are float or __nv_bfloat16, read and written through activation_parts.cuh;
// arithmetic is f32. No kernel uses atomics: where a sum runs over rows (a norm weight's
// gradient), blocks write partial sums of fixed row ranges and a second kernel adds them in
// order, so a run's bits never depend on scheduling.
//
// Shapes of work:
//   - rms_norm_backward: a block per row computes the row's r and mean(g · x) in one pass over x
//     and dy, then dx in a second; the weight's gradient, when wanted, is a column-parallel pass
//     over row ranges (a thread per column, coalesced across the warp) into partial sums, then
//     their ordered sum.
//   - rope_backward: a block per (token, group of heads), cos and sin of the token's angles in
//     shared memory, then a thread per (head, pair), as the forward's rope_append_kv.
//   - silu_mul_backward: a grid-stride loop over chunks of 8 values (16-byte vectors) when every
//     pointer is aligned, else over single values.
//   - cross_entropy_backward: a block per row; one pass keeps each thread's running max and sum
//     of exp (an online softmax), two block reductions give the row's log-sum-exp, and a second
//     pass writes the gradient.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/llama_backward.h"
#include "kernels/cuda/activation_parts.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/llama_backward_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kColumnThreads = 128;
constexpr std::int64_t kMaxRowRanges = 32;     // partial sums of a norm weight's gradient
constexpr std::int64_t kMinRowsPerRange = 64;  // fewer rows per range than this: fewer ranges
constexpr int kRopeThreads = 128;
constexpr int kRopeHeadsPerBlock = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kElementwiseThreads = 256;
constexpr std::int64_t kElementwiseMaxBlocks = 4096;  // grid-stride beyond this

// ---- rms_norm ----------------------------------------------------------------------------------

std::int64_t row_ranges(std::int64_t rows) {
  const std::int64_t ranges = (rows + kMinRowsPerRange - 1) / kMinRowsPerRange;
  return ranges < 1 ? 1 : (ranges < kMaxRowRanges ? ranges : kMaxRowRanges);
}

// x, dy, dx [rows, cols]; weight [cols]; rms_inverse [rows] receives each row's r. Block r takes
// row r; each thread reads and writes the same elements in both passes, so dx may equal dy.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_backward_rows_kernel(const T* __restrict__ x, const float* __restrict__ weight,
                                  const T* dy, std::int64_t cols, float eps, T* dx,
                                  float* __restrict__ rms_inverse) {
  __shared__ float warp_partials[kRowThreads / kWarpSize];
  const std::int64_t offset = static_cast<std::int64_t>(blockIdx.x) * cols;
  float sum_of_squares = 0.0f;
  float g_dot_x = 0.0f;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float value = to_float(x[offset + c]);
    sum_of_squares += value * value;
    g_dot_x += weight[c] * to_float(dy[offset + c]) * value;
  }
  sum_of_squares = block_reduce(sum_of_squares, Sum{}, warp_partials);
  g_dot_x = block_reduce(g_dot_x, Sum{}, warp_partials);
  const float r = 1.0f / sqrtf(sum_of_squares / static_cast<float>(cols) + eps);
  // mean(g · x) · r³: the component along x that the normalisation takes out.
  const float correction = r * r * r * g_dot_x / static_cast<float>(cols);
  if (threadIdx.x == 0) rms_inverse[blockIdx.x] = r;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = weight[c] * to_float(dy[offset + c]);
    dx[offset + c] = from_float<T>(r * g - to_float(x[offset + c]) * correction);
  }
}

// partial [ranges, cols]: block (column block, range) sums dy · x · r over its rows of each
// column, a thread per column.
template <typename T>
__global__ void __launch_bounds__(kColumnThreads)
    rms_norm_weight_partials_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                    const float* __restrict__ rms_inverse, std::int64_t rows,
                                    std::int64_t cols, std::int64_t rows_per_range,
                                    float* __restrict__ partial) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.y) * rows_per_range;
  const std::int64_t end = first + rows_per_range < rows ? first + rows_per_range : rows;
  float sum = 0.0f;
  for (std::int64_t r = first; r < end; ++r) {
    sum += to_float(dy[r * cols + c]) * to_float(x[r * cols + c]) * rms_inverse[r];
  }
  partial[blockIdx.y * cols + c] = sum;
}

// dweight[c] += Σ over ranges of partial[range, c], in range order.
__global__ void __launch_bounds__(kColumnThreads)
    add_weight_partials_kernel(const float* __restrict__ partial, std::int64_t ranges,
                               std::int64_t cols, float* __restrict__ dweight) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (std::int64_t range = 0; range < ranges; ++range) sum += partial[range * cols + c];
  dweight[c] += sum;
}

template <typename T>
cudaError_t launch_rms_norm_backward(const RmsNormBackwardJob& job, cudaStream_t stream) {
  const T* x = static_cast<const T*>(job.x);
  const T* dy = static_cast<const T*>(job.dy);
  float* rms_inverse = job.workspace;
  rms_norm_backward_rows_kernel<T><<<static_cast<unsigned>(job.rows), kRowThreads, 0, stream>>>(
      x, job.weight, dy, job.cols, job.eps, static_cast<T*>(job.dx), rms_inverse);
  if (job.dweight == nullptr) return cudaGetLastError();
  // The partials read dy after the rows kernel wrote dx: they must not alias (the launcher
  // refuses that).
  const std::int64_t ranges = row_ranges(job.rows);
  const std::int64_t rows_per_range = (job.rows + ranges - 1) / ranges;
  const auto column_blocks =
      static_cast<unsigned>((job.cols + kColumnThreads - 1) / kColumnThreads);
  float* partial = job.workspace + job.rows;
  rms_norm_weight_partials_kernel<T>
      <<<dim3(column_blocks, static_cast<unsigned>(ranges)), kColumnThreads, 0, stream>>>(
          x, dy, rms_inverse, job.rows, job.cols, rows_per_range, partial);
  add_weight_partials_kernel<<<column_blocks, kColumnThreads, 0, stream>>>(partial, ranges,
                                                                           job.cols, job.dweight);
  return cudaGetLastError();
}

// ---- rope --------------------------------------------------------------------------------------

// d [tokens, heads, head_dim]; block (t, g) takes token t's heads [g · kRopeHeadsPerBlock, ...).
// The transpose of the forward's rotation by angle a is the rotation by −a:
//   d[i] = d[i]·cos + d[i + half]·sin,  d[i + half] = d[i + half]·cos − d[i]·sin
// with cos and sin as the forward computes them (rounded to T, as the forward's are in bf16).
template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_backward_kernel(T* __restrict__ d, std::int64_t tokens_per_sequence, int heads,
                         int head_dim, const float* __restrict__ inv_freq) {
  __shared__ float cos_of[kMaxHeadDim / 2];
  __shared__ float sin_of[kMaxHeadDim / 2];
  const std::int64_t t = blockIdx.x;
  const auto position = static_cast<float>(t % tokens_per_sequence);
  const int half = head_dim / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = __fmul_rn(position, inv_freq[i]);
    cos_of[i] = round_as<T>(cosf(angle));
    sin_of[i] = round_as<T>(sinf(angle));
  }
  __syncthreads();
  const int first_head = static_cast<int>(blockIdx.y) * kRopeHeadsPerBlock;
  const int block_heads = min(kRopeHeadsPerBlock, heads - first_head);
  T* row = d + t * heads * head_dim;
  for (int pair = threadIdx.x; pair < block_heads * half; pair += blockDim.x) {
    T* head = row + (first_head + pair / half) * head_dim;
    const int i = pair % half;
    const float a = to_float(head[i]);
    const float b = to_float(head[i + half]);
    head[i] = from_float<T>(a * cos_of[i] + b * sin_of[i]);
    head[i + half] = from_float<T>(b * cos_of[i] - a * sin_of[i]);
  }
}

// ---- silu_mul ----------------------------------------------------------------------------------

// d_gate and d_up of one element (silu_mul_backward_reference).
__device__ __forceinline__ void silu_mul_gradients(float gate, float up, float d_out, float* d_gate,
                                                   float* d_up) {
  const float sigmoid = 1.0f / (1.0f + expf(-gate));
  const float silu = gate * sigmoid;
  const float silu_derivative = sigmoid * (1.0f + gate * (1.0f - sigmoid));
  *d_gate = d_out * up * silu_derivative;
  *d_up = d_out * silu;
}

// gate, up, d_out, d_gate, d_up [count]; chunks of kWidth values, then the count % kWidth tail
// one per thread.
template <int kWidth, typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
    silu_mul_backward_kernel(const T* gate, const T* up, const T* __restrict__ d_out,
                             std::int64_t count, T* d_gate, T* d_up) {
  const std::int64_t thread = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t chunks = count / kWidth;
  for (std::int64_t chunk = thread; chunk < chunks; chunk += stride) {
    const std::int64_t first = chunk * kWidth;
    float g[kWidth], u[kWidth], d[kWidth], dg[kWidth], du[kWidth];
    load_values<kWidth>(gate + first, g);
    load_values<kWidth>(up + first, u);
    load_values<kWidth>(d_out + first, d);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) silu_mul_gradients(g[k], u[k], d[k], &dg[k], &du[k]);
    store_values<kWidth>(d_gate + first, dg);
    store_values<kWidth>(d_up + first, du);
  }
  const std::int64_t tail = chunks * kWidth + thread;
  if (tail < count) {
    float dg = 0.0f;
    float du = 0.0f;
    silu_mul_gradients(to_float(gate[tail]), to_float(up[tail]), to_float(d_out[tail]), &dg, &du);
    d_gate[tail] = from_float<T>(dg);
    d_up[tail] = from_float<T>(du);
  }
}

unsigned elementwise_blocks(std::int64_t count, int width) {
  const std::int64_t needed = (count / width + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(
      needed < 1 ? 1 : (needed < kElementwiseMaxBlocks ? needed : kElementwiseMaxBlocks));
}

// ---- cross_entropy -----------------------------------------------------------------------------

// logits [rows, vocab], labels and row_loss [rows]; block r takes row r.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_backward_kernel(T* __restrict__ logits, const std::int32_t* __restrict__ labels,
                                  std::int64_t vocab, float gradient_scale,
                                  float* __restrict__ row_loss) {
  __shared__ float warp_partials[kRowThreads / kWarpSize];
  T* z = logits + static_cast<std::int64_t>(blockIdx.x) * vocab;
  const std::int32_t label = labels[blockIdx.x];
  if (label == cpu::kIgnoreLabel) {
    for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) z[c] = from_float<T>(0.0f);
    if (threadIdx.x == 0) row_loss[blockIdx.x] = 0.0f;
    return;
  }
  // Each thread's running max and sum of exp(z − max) over its logits, then the block's.
  float thread_max = -FLT_MAX;
  float thread_sum = 0.0f;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float value = to_float(z[c]);
    if (value > thread_max) {
      thread_sum *= expf(thread_max - value);
      thread_max = value;
    }
    thread_sum += expf(value - thread_max);
  }
  const float row_max = block_reduce(thread_max, Max{}, warp_partials);
  const float sum = block_reduce(thread_sum * expf(thread_max - row_max), Sum{}, warp_partials);
  const float log_sum_exp = row_max + logf(sum);
  // Every thread reads z[label] before any rewrites the row (the barrier).
  const float label_logit = to_float(z[label]);
  __syncthreads();
  if (threadIdx.x == 0) row_loss[blockIdx.x] = log_sum_exp - label_logit;
  for (std::int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float probability = expf(to_float(z[c]) - log_sum_exp);
    const float gradient = probability * gradient_scale - (c == label ? gradient_scale : 0.0f);
    z[c] = from_float<T>(gradient);
  }
}

}  // namespace

std::size_t rms_norm_backward_workspace_floats(std::int64_t rows, std::int64_t cols) {
  if (rows <= 0 || cols <= 0) return 0;
  return static_cast<std::size_t>(rows + row_ranges(rows) * cols);
}

cudaError_t rms_norm_backward(const RmsNormBackwardJob& job, cudaStream_t stream) {
  if (job.rows < 0 || job.cols < 0 || job.rows > INT32_MAX ||
      (job.rows > 0 && (job.x == nullptr || job.weight == nullptr || job.dy == nullptr ||
                        job.dx == nullptr || job.workspace == nullptr)) ||
      (job.dweight != nullptr && job.dx == job.dy)) {
    return cudaErrorInvalidValue;
  }
  if (job.rows == 0 || job.cols == 0) return cudaSuccess;
  return visit_activation_dtype(job.dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_rms_norm_backward<T>(job, stream);
  });
}

cudaError_t rope_backward(void* d, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                          const float* inv_freq, std::int64_t sequences, DType dtype,
                          cudaStream_t stream) {
  if (tokens < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxHeadDim ||
      tokens > INT32_MAX || heads * head_dim > INT32_MAX ||
      heads > std::int64_t{kRopeHeadsPerBlock} * 65535 || sequences < 1 ||
      tokens % sequences != 0 || (tokens > 0 && (d == nullptr || inv_freq == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0) return cudaSuccess;
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const auto head_groups =
        static_cast<unsigned>((heads + kRopeHeadsPerBlock - 1) / kRopeHeadsPerBlock);
    rope_backward_kernel<T>
        <<<dim3(static_cast<unsigned>(tokens), head_groups), kRopeThreads, 0, stream>>>(
            static_cast<T*>(d), tokens / sequences, static_cast<int>(heads),
            static_cast<int>(head_dim), inv_freq);
    return cudaGetLastError();
  });
}

cudaError_t silu_mul_backward(const void* gate, const void* up, const void* d_out,
                              std::int64_t count, void* d_gate, void* d_up, DType dtype,
                              cudaStream_t stream) {
  if (count < 0 || (count > 0 && (gate == nullptr || up == nullptr || d_out == nullptr ||
                                  d_gate == nullptr || d_up == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (count == 0) return cudaSuccess;
  const bool vectors = is_aligned_16(gate) && is_aligned_16(up) && is_aligned_16(d_out) &&
                       is_aligned_16(d_gate) && is_aligned_16(d_up);
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const T* typed_gate = static_cast<const T*>(gate);
    const T* typed_up = static_cast<const T*>(up);
    const T* typed_d_out = static_cast<const T*>(d_out);
    T* typed_d_gate = static_cast<T*>(d_gate);
    T* typed_d_up = static_cast<T*>(d_up);
    if (vectors) {
      silu_mul_backward_kernel<kChunk>
          <<<elementwise_blocks(count, kChunk), kElementwiseThreads, 0, stream>>>(
              typed_gate, typed_up, typed_d_out, count, typed_d_gate, typed_d_up);
    } else {
      silu_mul_backward_kernel<1><<<elementwise_blocks(count, 1), kElementwiseThreads, 0, stream>>>(
          typed_gate, typed_up, typed_d_out, count, typed_d_gate, typed_d_up);
    }
    return cudaGetLastError();
  });
}

cudaError_t cross_entropy_backward(void* logits, const std::int32_t* labels, std::int64_t rows,
                                   std::int64_t vocab, float gradient_scale, float* row_loss,
                                   DType dtype, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || rows > INT32_MAX ||
      (rows > 0 && (logits == nullptr || labels == nullptr || row_loss == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  return visit_activation_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    cross_entropy_backward_kernel<T><<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
        static_cast<T*>(logits), labels, vocab, gradient_scale, row_loss);
    return cudaGetLastError();
  });
}

}  // namespace kbit::kernels::cuda
