// Deciding whether a difference between two quantizers is one that the GPU's approximate
// arithmetic legitimately decides (shared/spec/bnb-compat.md 0.1).
//
// bitsandbytes' CUDA kernels normalise with rcp.approx (4-bit and 8-bit blockwise, error within
// 1 ulp of 1/absmax) and div.approx (int8, within 2 ulp of 127/absmax); kbit's CPU kernels use
// IEEE arithmetic. A code that differs is acceptable only when some scale within those error
// bounds produces it: the value sits on a decision boundary. Anything else is a bug.
#pragma once

#include <cstdint>

#include "kbit/quant/blockwise_4bit.h"

namespace kbit::testing {

// True when both codes are produced for `value` by some reciprocal within 1 ulp of
// 1/absmax (IEEE), i.e. the approximate reciprocal decides between them.
bool is_4bit_boundary_case(float value, float absmax, quant::FourBitType type, std::uint8_t code_a,
                           std::uint8_t code_b);
bool is_8bit_boundary_case(float value, float absmax, const float* map, std::uint8_t code_a,
                           std::uint8_t code_b);
// Same for int8 row-wise codes: a scale within 2 ulp of 127/absmax gives both. `value` is the
// input already rounded to f16.
bool is_int8_boundary_case(float value, float absmax, std::int8_t code_a, std::int8_t code_b);

}  // namespace kbit::testing
