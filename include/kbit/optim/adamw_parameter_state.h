// The AdamW state of one f32 parameter together with its storage, as an optimizer keeps it per
// parameter: blockwise 8-bit (codes and absmax) where adamw_state_is_8bit says so, two f32
// moments otherwise (kbit/optim/adamw.h), starting from the zero state at step 0.
//
// Thread safety: one object per parameter; distinct objects may step concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/optim/adamw.h"

namespace kbit::optim {

class AdamWParameterState {
 public:
  // The zero state of a parameter of n >= 0 elements under an 8-bit or a 32-bit optimizer.
  AdamWParameterState(std::int64_t n, bool eight_bit_optimizer);

  bool eight_bit() const { return eight_bit_; }
  // Completed steps (bitsandbytes' state["step"]); set when restoring a saved state.
  std::int64_t step() const { return step_; }
  void set_step(std::int64_t step) { step_ = step; }

  // The state's tensors, named by role: "state1" and "state2" (f32 [n], or the u8 [n] codes),
  // then, when 8-bit, "absmax1" and "absmax2" (f32 [ceil(n / 256)]). Views of this object's
  // storage, for saving or restoring it.
  std::vector<std::pair<std::string, TensorView>> tensors();

  // The bytes of the state's tensors: adamw_state_bytes(n, eight_bit_optimizer).
  std::int64_t bytes() const;

  // One AdamW step of param (f32 [n]) with grad (f32 [n]): adamw8bit_step or adamw32bit_step.
  Status apply(const AdamWHyperparameters& hyperparameters, const TensorView& param,
               const TensorView& grad);

 private:
  bool eight_bit_;
  std::int64_t step_ = 0;
  std::vector<float> state1_, state2_;         // 32-bit moments
  std::vector<std::uint8_t> codes1_, codes2_;  // 8-bit codes
  std::vector<float> absmax1_, absmax2_;
};

}  // namespace kbit::optim
