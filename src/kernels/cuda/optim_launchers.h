// Host-side launchers of the CUDA AdamW steps (contract: kbit/optim/adamw.h; arithmetic:
// shared/spec/bnb-compat.md 7.3).
//
// Every pointer is device-accessible memory (device or managed), n >= 1 elements, no alignment
// required. Each launcher queues one kernel on `stream` and returns the launch error; it does not
// synchronise. The kernels issue the instructions bitsandbytes' kernels compile to under
// --use_fast_math (bnb_fast_math.cuh), so parameters and state equal theirs bit for bit.
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

}  // namespace kbit::kernels::cuda
