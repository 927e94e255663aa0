// Argument checks shared by the quant API functions. Each returns kInvalidArgument with a message
// that names the argument, what it is, and what it must be.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::quant {

// `tensor` is contiguous, has a dtype in `dtypes` and exactly `numel` elements.
Status check_tensor(const TensorView& tensor, std::string_view name,
                    std::initializer_list<DType> dtypes, std::int64_t numel);
// `tensor` is a contiguous f32, f16 or bf16 tensor of at least one element.
Status check_float_tensor(const TensorView& tensor, std::string_view name);
// Every tensor lives on the device of the first.
Status check_same_device(std::initializer_list<const TensorView*> tensors);
// The device exists in this build (CUDA tensors need a CUDA build).
Status check_device_supported(const TensorView& tensor);

// Fails if any of absmax[0..count) (host f32) is not finite: the kernels store NaN for a block
// that holds NaN or Inf. Names the block and the element range of the input it covers.
Status check_blocks_finite(const float* absmax, std::int64_t count, std::int64_t block_size,
                           std::int64_t n, std::string_view what);

}  // namespace kbit::quant
