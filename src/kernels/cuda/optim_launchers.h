// Host-side launchers of the CUDA optimizer work: the AdamW steps (contract: kbit/optim/adamw.h;
// arithmetic: shared/spec/bnb-compat.md 7.3) and the global gradient norm and scaling of
// gradient clipping (contract: kbit/optim/clip_grad_norm.h).
//
// Every pointer is device-accessible memory (device or managed), n >= 1 elements, no alignment
// required. Each launcher queues its kernels on `stream` and returns the first launch error; none
// allocates or synchronises. The AdamW kernels issue the instructions bitsandbytes' kernels
// compile to under --use_fast_math (bnb_fast_math.cuh), so parameters and state equal theirs bit
// for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kbit::kernels::cuda {

// The hyperparameters in the form the kernels take them (checked by the caller).
struct AdamWKernelHyperparameters {
  float lr = 0;
  float beta1 = 0;
  float beta2 = 0;
  float eps = 0;
  float weight_decay = 0;
};

// Step `step` (>= 1, the one being applied) of 32-bit AdamW: param f32 [n] and its moments
// m, v f32 [n] updated in place from grad f32 [n].
cudaError_t adamw32bit_step(const AdamWKernelHyperparameters& hyperparameters, int step,
                            float* param, const float* grad, float* m, float* v, std::int64_t n,
                            cudaStream_t stream);

// Step `step` of 8-bit blockwise AdamW: param f32 [n], codes1 (m) and codes2 (v) u8 [n], absmax1
// and absmax2 f32 [ceil(n / 256)], updated in place from grad f32 [n].
cudaError_t adamw8bit_step(const AdamWKernelHyperparameters& hyperparameters, int step,
                           float* param, const float* grad, std::uint8_t* codes1,
                           std::uint8_t* codes2, float* absmax1, float* absmax2, std::int64_t n,
                           cudaStream_t stream);

// ---- Gradient clipping.
// The gradients are taken as one array, the concatenation of `spans` in order, of `total` >= 1
// elements, and split into equal ranges, one per CUDA block; the number of blocks depends on
// `total` alone (at most kGradNormMaxBlocks). So both launchers cost one launch for any number of
// tensors, and the sum's order, hence its bits, depends on the tensors' sizes alone: the same on
// every run and every GPU. Both return cudaErrorInvalidValue, queueing nothing, for null spans
// (or partials or sum), tensors < 1 or total < 1.

// count >= 1 f32 values at `data`: elements [begin, begin + count) of the concatenation, so the
// first span begins at 0 and each next one where the one before ends.
struct GradientSpan {
  float* data;
  std::int64_t begin;
  std::int64_t count;
};

inline constexpr int kGradNormMaxBlocks = 1024;

// *sum [1] = Σ g² over every element g of every span of spans [tensors], each square and sum in
// double (a square of an f32 value is exact in double). Each block sums its range in a fixed
// order into partials [kGradNormMaxBlocks] (scratch, no initial value), then one block adds the
// partials in a fixed order: no atomics, the same bits on every run. Two kernels.
cudaError_t grad_sum_of_squares(const GradientSpan* spans, int tensors, std::int64_t total,
                                double* partials, double* sum, cudaStream_t stream);

// Every element g of every span of spans [tensors] becomes g · coefficient, rounded to nearest
// f32 (as the CPU's `g *= coefficient`). One kernel.
cudaError_t grad_scale(const GradientSpan* spans, int tensors, std::int64_t total,
                       float coefficient, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
