// Random device tensors, the same stream of samples as kbit/core/random.h's fill_normal.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/core/dtype.h"

namespace kbit::kernels::cuda {

// out[i] = dtype(mean + stddev · normal_sample(seed, i)) for i in [0, n), out device memory of
// an f32, f16 or bf16 dtype. The sample is kbit::normal_sample's definition (SplitMix64 counter
// hash, Box-Muller) in double precision on the device, so a value may differ from the host's
// in its last double bit and, rarely, in the rounding to dtype.
cudaError_t fill_normal(void* out, DType dtype, std::int64_t n, std::uint64_t seed, float mean,
                        float stddev, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
