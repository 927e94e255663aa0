// Element-type conversion of whole tensors, rounding as PyTorch's `tensor.to(dtype)` does on the
// CPU:
//   float -> float   round to nearest, ties to even; Inf and NaN preserved (see dtype.h)
//   int   -> float   round to nearest, ties to even (int64 -> f32 may round)
//   int   -> int     two's-complement wrap-around (int64 300 -> int8 44)
//   float -> int     truncation toward zero
// Where PyTorch's result is undefined (NaN, Inf or an out-of-range float converted to an
// integer type) this fails instead, naming the first such element.
#pragma once

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit {

// Requires: contiguous host tensors with the same number of elements (shapes may differ).
Status convert_tensor(const TensorView& src, TensorView dst);

}  // namespace kbit
