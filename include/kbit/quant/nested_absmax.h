// Double ("nested") quantization of 4-bit absmax values (spec section 3).
//
// The float32 absmax of a 4-bit tensor is stored as 8-bit codes:
//   offset     = mean(absmax), summed in the order of PyTorch's CUDA reduction, so that the
//                float32 result is the one bitsandbytes stores
//   codes      = quantize_8bit_blockwise(absmax - offset, signed map, block size 256)
//   nested_absmax = the absmax of that 8-bit quantization, float32 [ceil(blocks / 256)]
// Reconstruction, with the two roundings of bitsandbytes' dequantize_4bit:
//   absmax[b]  = fl32(fl32(map[codes[b]] * nested_absmax[b / 256]) + offset)
#pragma once

#include <cstdint>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::quant {

inline constexpr std::int64_t kNestedBlockSize = 256;

// Requires: absmax f32 with n >= 1 finite elements; codes u8 with n elements; nested_absmax f32
//           with ceil(n/256) elements; all on one device; offset not null.
// Writes codes, nested_absmax and *offset (a host float).
Status quantize_absmax_nested(const TensorView& absmax, TensorView codes, TensorView nested_absmax,
                              float* offset, const ExecutionOptions& options = {});

// Requires: codes u8 [n], nested_absmax f32 [ceil(n/256)], absmax f32 [n] (the output).
Status dequantize_absmax_nested(const TensorView& codes, const TensorView& nested_absmax,
                                float offset, TensorView absmax,
                                const ExecutionOptions& options = {});

// Most values PyTorch reduces in one kernel launch (2^29); more are split and summed otherwise.
inline constexpr std::int64_t kMaxTorchCudaMeanCount = std::int64_t{1} << 29;

// The float32 mean that torch.Tensor.mean() returns for a contiguous float32 tensor holding
// `values[0..count)` on an H100/H200 (132 SMs): the same summation order, hence the same bits
// (checked against torch 2.11 on an H200 for 2920 sizes up to 2^26 + 1).
// Requires 1 <= count <= kMaxTorchCudaMeanCount.
float mean_in_torch_cuda_order(const float* values, std::int64_t count);

}  // namespace kbit::quant
