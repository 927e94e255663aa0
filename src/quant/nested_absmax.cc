#include "kbit/quant/nested_absmax.h"

#include <cmath>
#include <vector>

#include "core/cuda_runtime.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"
#include "quant/checks.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/quant_launchers.h"
#endif

namespace kbit::quant {
namespace {

Status check_nested_tensors(const TensorView& codes, const TensorView& nested_absmax,
                            std::int64_t n) {
  KBIT_RETURN_IF_ERROR(check_tensor(codes, "nested absmax codes", {DType::kU8}, n));
  return check_tensor(nested_absmax, "nested_absmax", {DType::kF32},
                      block_count(n, kNestedBlockSize));
}

}  // namespace

Status quantize_absmax_nested(const TensorView& absmax, TensorView codes, TensorView nested_absmax,
                              float* offset, const ExecutionOptions& options) {
  if (offset == nullptr) return invalid_argument("quantize_absmax_nested needs an offset output");
  if (absmax.numel() == 0) return invalid_argument("absmax is empty; nothing to quantize");
  const std::int64_t n = absmax.numel();
  if (n > kMaxTorchCudaMeanCount) {
    return invalid_argument("absmax has " + std::to_string(n) + " blocks, more than the " +
                            std::to_string(kMaxTorchCudaMeanCount) +
                            " that double quantization supports; quantize the tensor in parts");
  }
  KBIT_RETURN_IF_ERROR(check_tensor(absmax, "absmax", {DType::kF32}, n));
  KBIT_RETURN_IF_ERROR(check_nested_tensors(codes, nested_absmax, n));
  KBIT_RETURN_IF_ERROR(check_same_device({&absmax, &codes, &nested_absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(absmax));

  std::vector<float> host_absmax(static_cast<std::size_t>(n));
  if (absmax.device().is_cpu()) {
    host_absmax.assign(absmax.data_as<float>(), absmax.data_as<float>() + n);
  } else {
    KBIT_RETURN_IF_ERROR(detail::cuda_copy_on_stream(host_absmax.data(), absmax.data(),
                                                     absmax.nbytes(), options.stream.handle));
  }
  KBIT_RETURN_IF_ERROR(check_blocks_finite(host_absmax.data(), n, 1, n, "absmax"));
  *offset = mean_in_torch_cuda_order(host_absmax.data(), n);

  if (absmax.device().is_cpu()) {
    // bitsandbytes subtracts the mean in float32, then quantizes the differences.
    for (float& value : host_absmax) value -= *offset;
    const TensorView centred(host_absmax.data(), DType::kF32, Shape{n});
    return quantize_8bit_blockwise(centred, DynamicMap::kSigned, kNestedBlockSize, codes,
                                   nested_absmax, options);
  }
#if defined(KBIT_WITH_CUDA)
  return detail::status_from_cuda_error(
      kernels::cuda::quantize_8bit_blockwise(
          absmax.data(), DType::kF32, n, *offset, DynamicMap::kSigned, kNestedBlockSize,
          codes.data_as<std::uint8_t>(), nested_absmax.data_as<float>(),
          static_cast<cudaStream_t>(options.stream.handle)),
      "quantize_absmax_nested");
#else
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

Status dequantize_absmax_nested(const TensorView& codes, const TensorView& nested_absmax,
                                float offset, TensorView absmax, const ExecutionOptions& options) {
  if (!std::isfinite(offset)) {
    return invalid_argument("nested absmax offset " + std::to_string(offset) + " is not finite");
  }
  if (absmax.numel() == 0) return invalid_argument("absmax output is empty");
  const std::int64_t n = absmax.numel();
  KBIT_RETURN_IF_ERROR(check_tensor(absmax, "absmax output", {DType::kF32}, n));
  KBIT_RETURN_IF_ERROR(check_nested_tensors(codes, nested_absmax, n));
  KBIT_RETURN_IF_ERROR(check_same_device({&absmax, &codes, &nested_absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(absmax));
  if (absmax.device().is_cpu()) {
    KBIT_RETURN_IF_ERROR(dequantize_8bit_blockwise(codes, nested_absmax, DynamicMap::kSigned,
                                                   kNestedBlockSize, absmax, options));
    // A second rounding, as bitsandbytes' separate `+= offset`.
    float* values = absmax.data_as<float>();
    for (std::int64_t i = 0; i < n; ++i) values[i] += offset;
    return ok_status();
  }
#if defined(KBIT_WITH_CUDA)
  return detail::status_from_cuda_error(
      kernels::cuda::dequantize_8bit_blockwise(
          codes.data_as<std::uint8_t>(), nested_absmax.data_as<float>(), DynamicMap::kSigned,
          kNestedBlockSize, n, offset, absmax.data(), DType::kF32,
          static_cast<cudaStream_t>(options.stream.handle)),
      "dequantize_absmax_nested");
#else
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

}  // namespace kbit::quant
