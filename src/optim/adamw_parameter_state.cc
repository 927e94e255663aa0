#include "kbit/optim/adamw_parameter_state.h"

#include "core/cuda_runtime.h"
#include "kbit/core/allocator.h"

namespace kbit::optim {
namespace {

// A zero-filled tensor of n elements from `allocator`.
Result<Tensor> zeros(Allocator& allocator, std::int64_t n, DType dtype, Device device) {
  KBIT_ASSIGN_OR_RETURN(Tensor tensor, Tensor::empty_from(allocator, Shape{n}, dtype, device));
  KBIT_RETURN_IF_ERROR(zero_tensor(tensor.view()));
  return tensor;
}

}  // namespace

Result<AdamWParameterState> AdamWParameterState::create(std::int64_t n, bool eight_bit_optimizer,
                                                        const AdamWStatePlacement& placement) {
  const Device device = placement.device;
  Allocator* allocator = &host_allocator();
  if (device.is_cuda()) {
    KBIT_ASSIGN_OR_RETURN(allocator, cuda_allocator(device.index));
  }
  AdamWParameterState state;
  state.eight_bit_ = adamw_state_is_8bit(n, eight_bit_optimizer);
  state.paged_ = placement.paged && device.is_cuda() && n >= kPagedStateMinSize;
  Allocator* per_element_allocator = allocator;
  if (state.paged_) {
    KBIT_ASSIGN_OR_RETURN(per_element_allocator, cuda_managed_allocator(device.index));
  }
  const DType per_element = state.eight_bit_ ? DType::kU8 : DType::kF32;
  KBIT_ASSIGN_OR_RETURN(state.state1_, zeros(*per_element_allocator, n, per_element, device));
  KBIT_ASSIGN_OR_RETURN(state.state2_, zeros(*per_element_allocator, n, per_element, device));
  if (state.eight_bit_) {
    const std::int64_t blocks = adamw8bit_block_count(n);
    KBIT_ASSIGN_OR_RETURN(state.absmax1_, zeros(*allocator, blocks, DType::kF32, device));
    KBIT_ASSIGN_OR_RETURN(state.absmax2_, zeros(*allocator, blocks, DType::kF32, device));
  }
  return state;
}

std::vector<std::pair<std::string, TensorView>> AdamWParameterState::tensors() const {
  if (eight_bit_) {
    return {{"state1", state1_.view()},
            {"state2", state2_.view()},
            {"absmax1", absmax1_.view()},
            {"absmax2", absmax2_.view()}};
  }
  return {{"state1", state1_.view()}, {"state2", state2_.view()}};
}

std::int64_t AdamWParameterState::bytes() const {
  std::size_t bytes = 0;
  for (const auto& [role, tensor] : tensors()) bytes += tensor.nbytes();
  return static_cast<std::int64_t>(bytes);
}

Status AdamWParameterState::apply(const AdamWHyperparameters& hyperparameters,
                                  const TensorView& param, const TensorView& grad,
                                  const ExecutionOptions& options) {
  if (paged_) {
    for (const Tensor* tensor : {&state1_, &state2_}) {
      KBIT_RETURN_IF_ERROR(detail::cuda_prefetch_to_device(
          tensor->view().data(), tensor->nbytes(), tensor->device().index, options.stream.handle));
    }
  }
  if (eight_bit_) {
    AdamW8bitState state{state1_.view(), state2_.view(), absmax1_.view(), absmax2_.view(), step_};
    KBIT_RETURN_IF_ERROR(adamw8bit_step(hyperparameters, param, grad, &state, options));
    step_ = state.step;
  } else {
    AdamW32bitState state{state1_.view(), state2_.view(), step_};
    KBIT_RETURN_IF_ERROR(adamw32bit_step(hyperparameters, param, grad, &state, options));
    step_ = state.step;
  }
  return ok_status();
}

}  // namespace kbit::optim
