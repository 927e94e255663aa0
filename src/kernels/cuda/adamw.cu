// AdamW steps on the GPU (contract: kbit/optim/adamw.h; arithmetic: shared/spec/bnb-compat.md
// 7.3), written with the instructions bitsandbytes' kOptimizer32bit2State and
// kOptimizerStatic8bit2StateBlockwise compile to under --use_fast_math: every operation flushes
// subnormals, __powf and sqrtf are the approximate instructions, divisions are div.approx, and
// the products nvcc contracts are the fma_ftz calls below. The CPU steps (optim/adamw.cc,
// adamw8bit.cc) are the readable reference; they reproduce the same state, and the parameters to
// within the approximate power and square root.
//
// The 8-bit step gives each 256-element block of the state to one warp. Lane l holds elements
// l, l + 32, ..., l + 224 of its block, so every load and store of the warp is one contiguous
// run whatever the alignment, and the block maxima are warp reductions.
#include <cuda_runtime_api.h>

#include <cfloat>
#include <cstdint>

#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dynamic_map_table.cuh"
#include "kernels/cuda/optim_launchers.h"

namespace kbit::kernels::cuda {
namespace {

constexpr int kStateBlock = 256;  // elements per absmax, kAdamW8bitBlockSize
constexpr int kValuesPerLane = kStateBlock / 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;

// Codes bitsandbytes' padding lanes load for elements past n (spec 7.3, padding note).
constexpr std::uint8_t kPaddingCode1 = 128;
constexpr std::uint8_t kPaddingCode2 = 0;

// The factors of step t that bitsandbytes' kernels compute in every thread:
//   c1 = 1 − __powf(beta1, t)   c2 = sqrtf(1 − __powf(beta2, t))   step_size = −lr·c2 / c1
//   decay = 1 − lr·weight_decay (not contracted: nvcc rounds the product first)
struct StepFactors {
  float correction2;
  float step_size;
  float decay;
};

__device__ __forceinline__ StepFactors step_factors(const AdamWKernelHyperparameters& h, int step) {
  const auto t = static_cast<float>(step);
  const float correction1 = sub_ftz(1.0f, pow_approx_ftz(h.beta1, t));
  const float correction2 = sqrt_approx_ftz(sub_ftz(1.0f, pow_approx_ftz(h.beta2, t)));
  StepFactors factors;
  factors.correction2 = correction2;
  factors.step_size = div_approx_ftz(-mul_ftz(h.lr, correction2), correction1);
  factors.decay = sub_ftz(1.0f, mul_ftz(h.lr, h.weight_decay));
  return factors;
}

// p + step_size · m / (sqrt(v) + c2·eps), then the decoupled decay; both sums contracted.
__device__ __forceinline__ float updated_parameter(float p, float m, float v,
                                                   const StepFactors& factors,
                                                   const AdamWKernelHyperparameters& h) {
  const float denominator = fma_ftz(factors.correction2, h.eps, sqrt_approx_ftz(v));
  const float result = fma_ftz(factors.step_size, div_approx_ftz(m, denominator), p);
  return h.weight_decay > 0.0f ? mul_ftz(result, factors.decay) : result;
}

// param, grad, m, v [n]; grid-stride over elements.
__global__ void __launch_bounds__(kThreads)
    adamw32bit_kernel(const AdamWKernelHyperparameters h, int step, float* __restrict__ param,
                      const float* __restrict__ grad, float* __restrict__ m, float* __restrict__ v,
                      std::int64_t n) {
  const StepFactors factors = step_factors(h, step);
  const float one_minus_beta1 = sub_ftz(1.0f, h.beta1);
  const float one_minus_beta2 = sub_ftz(1.0f, h.beta2);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float g = grad[i];
    // `m·beta1 + (1 − beta1)·g` and `v·beta2 + (1 − beta2)·(g·g)` with the first product fused
    // (unlike the 8-bit kernel; the golden 32-bit state decides it, adamw.cc).
    const float new_m = fma_ftz(m[i], h.beta1, mul_ftz(one_minus_beta1, g));
    const float new_v = fma_ftz(v[i], h.beta2, mul_ftz(one_minus_beta2, mul_ftz(g, g)));
    m[i] = new_m;
    v[i] = new_v;
    param[i] = updated_parameter(param[i], new_m, new_v, factors, h);
  }
}

// The moments of one element from its codes, the block's absmax before the step and its
// gradient: `v·beta2 + (1 − beta2)·g·g` and `m·beta1 + (1 − beta1)·g`, contracted as nvcc does.
struct Moments {
  float m;
  float v;
};

__device__ __forceinline__ Moments updated_moments(float old_m, float old_v, float g,
                                                   const AdamWKernelHyperparameters& h,
                                                   float one_minus_beta1, float one_minus_beta2) {
  Moments moments;
  moments.v = fma_ftz(mul_ftz(one_minus_beta2, g), g, mul_ftz(old_v, h.beta2));
  moments.m = fma_ftz(one_minus_beta1, g, mul_ftz(old_m, h.beta1));
  return moments;
}

// param, grad, codes1, codes2 [n]; absmax1, absmax2 [ceil(n / 256)]. A warp per state block.
__global__ void __launch_bounds__(kThreads)
    adamw8bit_kernel(const AdamWKernelHyperparameters h, int step, float* __restrict__ param,
                     const float* __restrict__ grad, std::uint8_t* __restrict__ codes1,
                     std::uint8_t* __restrict__ codes2, float* __restrict__ absmax1,
                     float* __restrict__ absmax2, std::int64_t n,
                     const __grid_constant__ DynamicMapTable signed_map,
                     const __grid_constant__ DynamicMapTable unsigned_map) {
  __shared__ float map1[256];
  __shared__ float map2[256];
  load_map(signed_map, map1);
  load_map(unsigned_map, map2);

  const std::int64_t block =
      static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + static_cast<int>(threadIdx.x) / 32;
  const std::int64_t blocks = (n + kStateBlock - 1) / kStateBlock;
  if (block >= blocks) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t first = block * kStateBlock + lane;
  const StepFactors factors = step_factors(h, step);
  const float one_minus_beta1 = sub_ftz(1.0f, h.beta1);
  const float one_minus_beta2 = sub_ftz(1.0f, h.beta2);
  const float old_absmax1 = absmax1[block];
  const float old_absmax2 = absmax2[block];

  // 1. New moments, unquantized. A non-finite gradient resets the element's moments to 0; lanes
  //    past n take bitsandbytes' padding (gradient 0, codes 128 and 0) into the maxima.
  float g[kValuesPerLane];
  Moments moments[kValuesPerLane];
  float new_absmax1 = -FLT_MAX;
  float new_absmax2 = -FLT_MAX;
#pragma unroll
  for (int k = 0; k < kValuesPerLane; ++k) {
    const std::int64_t i = first + 32 * k;
    const bool in_range = i < n;
    g[k] = in_range ? grad[i] : 0.0f;
    const std::uint8_t code1 = in_range ? codes1[i] : kPaddingCode1;
    const std::uint8_t code2 = in_range ? codes2[i] : kPaddingCode2;
    moments[k] = isfinite(g[k]) ? updated_moments(mul_ftz(map1[code1], old_absmax1),
                                                  mul_ftz(map2[code2], old_absmax2), g[k], h,
                                                  one_minus_beta1, one_minus_beta2)
                                : Moments{0.0f, 0.0f};
    new_absmax1 = max_ftz(new_absmax1, fabsf(moments[k].m));
    new_absmax2 = max_ftz(new_absmax2, fabsf(moments[k].v));
  }
  new_absmax1 = group_max(new_absmax1, 32, nullptr);
  new_absmax2 = group_max(new_absmax2, 32, nullptr);
  if (lane == 0) {
    absmax1[block] = new_absmax1;
    absmax2[block] = new_absmax2;
  }

  // 2. The parameter steps with the unquantized moments; the moments are requantized against the
  //    new maxima. A block of zeros gives 0/0 = NaN, code 0, which the sign fix wraps to 255.
#pragma unroll
  for (int k = 0; k < kValuesPerLane; ++k) {
    const std::int64_t i = first + 32 * k;
    if (i >= n) break;
    const Moments& element = moments[k];
    if (isfinite(g[k])) param[i] = updated_parameter(param[i], element.m, element.v, factors, h);
    std::uint8_t code1 = search_dynamic_map(div_approx_ftz(element.m, new_absmax1), map1);
    if (signbit(map1[code1]) != signbit(element.m)) {
      code1 = static_cast<std::uint8_t>(element.m > 0.0f ? code1 + 1 : code1 - 1);
    }
    codes1[i] = code1;
    codes2[i] = search_dynamic_map(div_approx_ftz(element.v, new_absmax2), map2);
  }
}

}  // namespace

cudaError_t adamw32bit_step(const AdamWKernelHyperparameters& hyperparameters, int step,
                            float* param, const float* grad, float* m, float* v, std::int64_t n,
                            cudaStream_t stream) {
  int blocks = 0;
  const cudaError_t error = grid_stride_blocks(adamw32bit_kernel, kThreads, n, &blocks);
  if (error != cudaSuccess) return error;
  adamw32bit_kernel<<<blocks, kThreads, 0, stream>>>(hyperparameters, step, param, grad, m, v, n);
  return cudaGetLastError();
}

cudaError_t adamw8bit_step(const AdamWKernelHyperparameters& hyperparameters, int step,
                           float* param, const float* grad, std::uint8_t* codes1,
                           std::uint8_t* codes2, float* absmax1, float* absmax2, std::int64_t n,
                           cudaStream_t stream) {
  const std::int64_t state_blocks = (n + kStateBlock - 1) / kStateBlock;
  const auto blocks = static_cast<unsigned>((state_blocks + kWarpsPerBlock - 1) / kWarpsPerBlock);
  adamw8bit_kernel<<<blocks, kThreads, 0, stream>>>(
      hyperparameters, step, param, grad, codes1, codes2, absmax1, absmax2, n,
      make_map_table(quant::DynamicMap::kSigned), make_map_table(quant::DynamicMap::kUnsigned));
  return cudaGetLastError();
}

}  // namespace kbit::kernels::cuda
