// Reproducible random tensors: element i depends only on (seed, i), so a fill gives the same
// values whatever the thread count, and any slice can be regenerated alone.
#pragma once

#include <cstdint>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit {

// Fills a contiguous host tensor (f32, f16 or bf16) with normal(mean, stddev) samples, rounded
// to its dtype. Fails for other dtypes, device tensors or non-contiguous views.
Status fill_normal(TensorView tensor, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f);

// The standard normal sample number `index` of stream `seed` (Box-Muller on a counter hash).
double normal_sample(std::uint64_t seed, std::uint64_t index);

// 64 uniform random bits, number `index` of stream `seed` (a counter hash; not cryptographic).
std::uint64_t random_bits(std::uint64_t seed, std::uint64_t index);

}  // namespace kbit
