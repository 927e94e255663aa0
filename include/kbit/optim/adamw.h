// AdamW steps as bitsandbytes' CUDA kernels compute them, on the CPU and on CUDA devices (spec
// bnb-compat.md 7).
//
// One step of AdamW on a parameter p [n] with gradient g [n], t = the step being applied (1 for
// the first), all in float32:
//   m = beta1·m + (1 − beta1)·g                       first moment  ("state1")
//   v = beta2·v + (1 − beta2)·g²                      second moment ("state2")
//   c1 = 1 − beta1^t,  c2 = sqrt(1 − beta2^t),  step_size = −lr·c2 / c1
//   p = p + step_size · m / (sqrt(v) + c2·eps)        bias correction in the "eps-hat" form
//   p = p · (1 − lr·weight_decay)                     decoupled decay, AFTER the step (CUDA order)
// m and v are stored uncorrected. The two flavours differ in how m and v are stored:
//
//   32-bit: m and v are float32 [n] (bitsandbytes' `AdamW(optim_bits=32)`, `PagedAdamW32bit`,
//           and the 8-bit optimizers for parameters of fewer than 4096 elements).
//   8-bit:  m and v are blockwise 8-bit codes (`AdamW8bit`, `PagedAdamW8bit`): per block of 256
//           consecutive elements, state1 holds codes of m / absmax1[b] in the signed dynamic map,
//           state2 codes of v / absmax2[b] in the unsigned map (codebooks.h). Each step
//           dequantizes, updates, and requantizes with the new block maxima. The zero state
//           (all codes 0, absmax 0) is the initial one. Paging changes where bitsandbytes keeps
//           the state, not the arithmetic: PagedAdamW8bit steps with adamw8bit_step.
//
// Where the step runs: on the device of its tensors. On the CPU, one block of the state at a
// time over the thread pool; on a CUDA device, one kernel queued on options.stream (the call
// returns once it is queued). The tensors of one call must all be on one device; the state may be
// in managed memory (paged optimizers).
//
// What matches bitsandbytes' CUDA results:
//   * CUDA: the parameters and the state bit for bit. The kernels issue the instructions
//     bitsandbytes' compile to under --use_fast_math (kernels/cuda/adamw.cu).
//   * CPU: the state bit for bit (the CPU reproduces the GPU's approximate division and the fused
//     multiply-adds nvcc forms, spec 7.3); the parameters within a few float32 ulps plus a small
//     relative error of the update: beta^t and the square root are the correctly rounded ones,
//     not the GPU's approximate __powf and sqrt.approx (adamw_test.cc derives the bound), and
//     subnormal values are not flushed to zero.
//
// Not supported: gradient-norm scaling (percentile clipping), max_unorm, skip_zeros, parameters
// other than float32.
//
// Thread safety: the functions touch only their arguments; calls on distinct tensors may run
// concurrently.
#pragma once

#include <cstdint>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::optim {

// bitsandbytes' AdamW defaults (spec 7.1).
struct AdamWHyperparameters {
  float lr = 1e-3f;            // learning rate, finite and >= 0
  float beta1 = 0.9f;          // first-moment decay, 0 <= beta1 < 1
  float beta2 = 0.999f;        // second-moment decay, 0 <= beta2 < 1
  float eps = 1e-8f;           // finite and >= 0
  float weight_decay = 0.01f;  // decoupled, finite and >= 0; 0 turns it off
};

// Ok, or kInvalidArgument naming the first hyperparameter out of its range above.
Status check_adamw_hyperparameters(const AdamWHyperparameters& hyperparameters);

// bitsandbytes keeps the state of a parameter with fewer elements than this in 32 bits even in
// an 8-bit optimizer (`min_8bit_size`, spec 7.2).
inline constexpr std::int64_t kMin8bitStateSize = 4096;

// Elements per block of the 8-bit state.
inline constexpr std::int64_t kAdamW8bitBlockSize = 256;

// Number of absmax values of an 8-bit state for a parameter of n elements: ceil(n / 256).
std::int64_t adamw8bit_block_count(std::int64_t n);

// Whether the state of a parameter of n elements is kept in 8 bits: under an 8-bit optimizer
// when n >= kMin8bitStateSize, never under a 32-bit one.
bool adamw_state_is_8bit(std::int64_t n, bool eight_bit_optimizer);

// Bytes of the AdamW state of a parameter of n >= 0 elements, as adamw_state_is_8bit decides its
// kind: 8·n when 32-bit (two f32 moments); 2·n + 8·ceil(n / 256) when 8-bit (two u8 codes per
// element, two f32 absmax per block).
std::int64_t adamw_state_bytes(std::int64_t n, bool eight_bit_optimizer);

// The state of one parameter of n elements under 32-bit AdamW. The views are the caller's;
// start with zeros and step = 0.
struct AdamW32bitState {
  TensorView state1;      // f32 [n]: m, the first moment
  TensorView state2;      // f32 [n]: v, the second moment
  std::int64_t step = 0;  // completed steps; bitsandbytes' state["step"]
};

// The state of one parameter of n elements under 8-bit AdamW (spec 7.2). The views are the
// caller's; start with all zeros (every code 0, every absmax 0) and step = 0.
struct AdamW8bitState {
  TensorView state1;      // u8 [n]: codes of m in the signed dynamic map
  TensorView state2;      // u8 [n]: codes of v in the unsigned dynamic map
  TensorView absmax1;     // f32 [ceil(n/256)]: per-block max |m|
  TensorView absmax2;     // f32 [ceil(n/256)]: per-block max v
  std::int64_t step = 0;  // completed steps; bitsandbytes' state["step"]
};

// Applies step state->step + 1 to `param` with `grad` (both f32 with n >= 1 elements, any shape,
// contiguous, with the state on one device) and updates *state in place, including its step
// count (at once, also for CUDA work still queued).
// Fails with kInvalidArgument, changing nothing, on: a bad hyperparameter; a parameter, gradient
// or state tensor of the wrong dtype, element count, layout or device; a step count below 0 or at
// 2^31 − 1 (bitsandbytes' kernels take an int). kUnimplemented for CUDA tensors in a build
// without CUDA; kInternal if the kernel cannot be queued.
// A gradient of NaN or ±inf is used as it is (as bitsandbytes' 32-bit kernel does).
Status adamw32bit_step(const AdamWHyperparameters& hyperparameters, TensorView param,
                       const TensorView& grad, AdamW32bitState* state,
                       const ExecutionOptions& options = {});

// As adamw32bit_step, with the 8-bit state. On the CPU it also fails if an absmax is negative or
// not finite (on a CUDA device that check would cost a copy per step, and is not made).
// Where a gradient element is NaN or ±inf, its m and v are reset to 0 and its parameter element
// is left as it is (bitsandbytes' kernel). Where a block's new max |m| is 0 (m identically 0 in the
// block), its state1 codes become 255 (= +1 · 0), as in bitsandbytes' kernel (spec 7.3).
Status adamw8bit_step(const AdamWHyperparameters& hyperparameters, TensorView param,
                      const TensorView& grad, AdamW8bitState* state,
                      const ExecutionOptions& options = {});

}  // namespace kbit::optim
