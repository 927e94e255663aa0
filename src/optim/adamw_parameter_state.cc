#include "kbit/optim/adamw_parameter_state.h"

namespace kbit::optim {
namespace {

// A one-dimensional view of a vector's elements.
template <typename T>
TensorView view_of(std::vector<T>& values) {
  const DType dtype = sizeof(T) == 1 ? DType::kU8 : DType::kF32;
  return TensorView(values.data(), dtype, Shape{static_cast<std::int64_t>(values.size())});
}

}  // namespace

AdamWParameterState::AdamWParameterState(std::int64_t n, bool eight_bit_optimizer)
    : eight_bit_(adamw_state_is_8bit(n, eight_bit_optimizer)) {
  const auto size = static_cast<std::size_t>(n);
  if (eight_bit_) {
    codes1_.assign(size, 0);
    codes2_.assign(size, 0);
    absmax1_.assign(static_cast<std::size_t>(adamw8bit_block_count(n)), 0.0f);
    absmax2_.assign(absmax1_.size(), 0.0f);
  } else {
    state1_.assign(size, 0.0f);
    state2_.assign(size, 0.0f);
  }
}

std::vector<std::pair<std::string, TensorView>> AdamWParameterState::tensors() {
  if (eight_bit_) {
    return {{"state1", view_of(codes1_)},
            {"state2", view_of(codes2_)},
            {"absmax1", view_of(absmax1_)},
            {"absmax2", view_of(absmax2_)}};
  }
  return {{"state1", view_of(state1_)}, {"state2", view_of(state2_)}};
}

std::int64_t AdamWParameterState::bytes() const {
  const std::size_t floats = state1_.size() + state2_.size() + absmax1_.size() + absmax2_.size();
  return static_cast<std::int64_t>(floats * sizeof(float) + codes1_.size() + codes2_.size());
}

Status AdamWParameterState::apply(const AdamWHyperparameters& hyperparameters,
                                  const TensorView& param, const TensorView& grad) {
  if (eight_bit_) {
    AdamW8bitState state{view_of(codes1_), view_of(codes2_), view_of(absmax1_), view_of(absmax2_),
                         step_};
    KBIT_RETURN_IF_ERROR(adamw8bit_step(hyperparameters, param, grad, &state));
    step_ = state.step;
  } else {
    AdamW32bitState state{view_of(state1_), view_of(state2_), step_};
    KBIT_RETURN_IF_ERROR(adamw32bit_step(hyperparameters, param, grad, &state));
    step_ = state.step;
  }
  return ok_status();
}

}  // namespace kbit::optim
