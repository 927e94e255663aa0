// Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_(parameters,
// max_norm) (norm type 2) that transformers' Trainer applies with max_grad_norm:
//   total = sqrt(Σ over every gradient element of g²)
//   every g *= min(1, max_norm / (total + 1e-6))          (in float32, as torch multiplies)
// The sum is taken in double precision. Where the total is not finite (an inf or NaN gradient)
// the gradients are left as they are and the total is returned, so that the caller can skip the
// step; torch would spread the NaN.
//
// Thread safety: touches only its arguments.
#pragma once

#include <span>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::optim {

// gradients: float32 host tensors, written in place. Returns the total norm before clipping, or
// kInvalidArgument for max_norm not finite and > 0, or a gradient not f32, and kUnimplemented for
// a gradient not on the host.
Result<float> clip_grad_norm(std::span<const TensorView> gradients, float max_norm);

}  // namespace kbit::optim
