// The AdamW state of one f32 parameter together with its storage, as an optimizer keeps it per
// parameter: blockwise 8-bit (codes and absmax) where adamw_state_is_8bit says so, two f32
// moments otherwise (kbit/optim/adamw.h), starting from the zero state at step 0, on the
// parameter's device.
//
// Paged optimizers (PagedAdamW8bit, spec 7.5) keep the two per-element tensors of parameters of
// kPagedStateMinSize elements or more in CUDA managed memory, which the driver moves to the host
// when the device runs short; each step prefetches them back first. The absmax vectors and the
// state of smaller parameters stay in device memory. On the CPU, paging changes nothing.
//
// Thread safety: one object per parameter; distinct objects may step concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kbit/core/device.h"
#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/optim/adamw.h"

namespace kbit::optim {

// bitsandbytes pages the state only of parameters with at least this many elements.
inline constexpr std::int64_t kPagedStateMinSize = 100000;

// Where a parameter's state lives.
struct AdamWStatePlacement {
  Device device;       // the parameter's device
  bool paged = false;  // a paged optimizer (managed memory on CUDA devices)
};

class AdamWParameterState {
 public:
  // The zero state of a parameter of n >= 0 elements under an 8-bit or a 32-bit optimizer.
  // Fails with kOutOfMemory where the storage cannot be had (naming the size), kUnimplemented for
  // a CUDA device in a build without CUDA.
  static Result<AdamWParameterState> create(std::int64_t n, bool eight_bit_optimizer,
                                            const AdamWStatePlacement& placement = {});

  bool eight_bit() const { return eight_bit_; }
  // Whether state1 and state2 are in managed memory.
  bool paged() const { return paged_; }
  // Completed steps (bitsandbytes' state["step"]); set when restoring a saved state.
  std::int64_t step() const { return step_; }
  void set_step(std::int64_t step) { step_ = step; }

  // The state's tensors, named by role: "state1" and "state2" (f32 [n], or the u8 [n] codes),
  // then, when 8-bit, "absmax1" and "absmax2" (f32 [ceil(n / 256)]). Views of this object's
  // storage on its device, for saving or restoring it.
  std::vector<std::pair<std::string, TensorView>> tensors() const;

  // The bytes of the state's tensors: adamw_state_bytes(n, eight_bit_optimizer).
  std::int64_t bytes() const;

  // One AdamW step of param (f32 [n]) with grad (f32 [n]), both on the state's device:
  // adamw8bit_step or adamw32bit_step, queued on options.stream for a CUDA device (paged state is
  // prefetched to the device on that stream first).
  Status apply(const AdamWHyperparameters& hyperparameters, const TensorView& param,
               const TensorView& grad, const ExecutionOptions& options = {});

 private:
  AdamWParameterState() = default;

  bool eight_bit_ = false;
  bool paged_ = false;
  std::int64_t step_ = 0;
  Tensor state1_, state2_;    // f32 moments, or the u8 codes when 8-bit
  Tensor absmax1_, absmax2_;  // 8-bit only
};

}  // namespace kbit::optim
