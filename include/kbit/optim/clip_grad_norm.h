// Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_(parameters,
// max_norm) (norm type 2) that transformers' Trainer applies with max_grad_norm:
//   total = sqrt(Σ over every gradient element of g²)
//   every g *= min(1, max_norm / (total + 1e-6))          (in float32, as torch multiplies)
// The sum is taken in double precision. Where the total is not finite (an inf or NaN gradient)
// the gradients are left as they are and the total is returned, so that the caller can skip the
// step; torch would spread the NaN.
//
// On the host or on one CUDA device, with the same results: the double sums differ only in their
// order (the total within the rounding of that order, normally the same float), and each gradient
// is scaled by the float32 coefficient computed from the total as above, so the same total gives
// the same scaled gradients bit for bit. The CUDA sum's order depends on the gradients' sizes
// alone, so it gives the same bits on every run.
//
// Thread safety: touches only its arguments.
#pragma once

#include <span>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::optim {

// gradients: contiguous float32 tensors, all on the host or all on one CUDA device, written in
// place. Returns the total norm before clipping (0 for no elements), or kInvalidArgument for
// max_norm not finite and > 0, a gradient not f32 or not contiguous, or gradients on different
// devices (host and CUDA, or two CUDA devices; the message names both), and kUnimplemented for
// CUDA gradients in a build without CUDA; nothing is changed then. kInternal (or kOutOfMemory) for
// a CUDA error.
//
// On a CUDA device the work is queued on options.stream, which must be a stream of the
// gradients' device (null: the default stream of the current device, which must be theirs). The
// call synchronises that stream: it waits for the work queued before it, then copies the sum of
// squares to the host. The scaling, only where the coefficient is below 1, is queued on the
// stream after that and not waited for. It takes a little device memory (8 KiB plus 24 bytes per
// gradient) from the caching allocator, in use on that stream until the scaling has run.
Result<float> clip_grad_norm(std::span<const TensorView> gradients, float max_norm,
                             const ExecutionOptions& options = {});

}  // namespace kbit::optim
