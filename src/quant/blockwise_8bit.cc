#include "kbit/quant/blockwise_8bit.h"

#include <vector>

#include "core/cuda_runtime.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/dispatch.h"
#include "quant/checks.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/quant_launchers.h"
#endif

namespace kbit::quant {
namespace {

constexpr std::int64_t kValuesPerChunk = 1 << 14;

const kernels::cpu::KernelVariants<kernels::cpu::Quantize8bitJob> kQuantizeKernels = {
    kernels::cpu::quantize_8bit_reference, kernels::cpu::quantize_8bit_avx2,
    kernels::cpu::quantize_8bit_avx512};
const kernels::cpu::KernelVariants<kernels::cpu::Dequantize8bitJob> kDequantizeKernels = {
    kernels::cpu::dequantize_8bit_reference, kernels::cpu::dequantize_8bit_avx2,
    kernels::cpu::dequantize_8bit_avx512};

const float* map_values(DynamicMap map) {
  return map == DynamicMap::kSigned ? kDynamicSignedMap.data() : kDynamicUnsignedMap.data();
}

Status check_block_size(std::int64_t block_size) {
  if (is_valid_8bit_block_size(block_size)) return ok_status();
  return invalid_argument("block size " + std::to_string(block_size) +
                          " is not supported for 8-bit blockwise quantization; use one of 64, "
                          "128, 256, 512, 1024, 2048, 4096");
}

Status check_codes_and_absmax(const TensorView& codes, const TensorView& absmax, std::int64_t n,
                              std::int64_t block_size) {
  KBIT_RETURN_IF_ERROR(check_tensor(codes, "8-bit codes", {DType::kU8}, n));
  return check_tensor(absmax, "absmax", {DType::kF32}, block_count(n, block_size));
}

}  // namespace

bool is_valid_8bit_block_size(std::int64_t block_size) {
  return block_size >= 64 && block_size <= 4096 && (block_size & (block_size - 1)) == 0;
}

Status quantize_8bit_blockwise(const TensorView& input, DynamicMap map, std::int64_t block_size,
                               TensorView codes, TensorView absmax,
                               const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_block_size(block_size));
  KBIT_RETURN_IF_ERROR(check_float_tensor(input, "input"));
  const std::int64_t n = input.numel();
  KBIT_RETURN_IF_ERROR(check_codes_and_absmax(codes, absmax, n, block_size));
  KBIT_RETURN_IF_ERROR(check_same_device({&input, &codes, &absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(input));
  const std::int64_t blocks = block_count(n, block_size);
  std::vector<float> host_absmax(static_cast<std::size_t>(blocks));
  if (input.device().is_cpu()) {
    const kernels::cpu::Quantize8bitJob job{
        input.data(),           input.dtype(), n,
        map_values(map),        block_size,    codes.data_as<std::uint8_t>(),
        absmax.data_as<float>()};
    kernels::cpu::run_kernel(kQuantizeKernels, job, blocks,
                             std::max<std::int64_t>(1, kValuesPerChunk / block_size), options);
    host_absmax.assign(absmax.data_as<float>(), absmax.data_as<float>() + blocks);
  } else {
#if defined(KBIT_WITH_CUDA)
    KBIT_RETURN_IF_ERROR(detail::status_from_cuda_error(
        kernels::cuda::quantize_8bit_blockwise(
            input.data(), input.dtype(), n, 0.0f, map, block_size, codes.data_as<std::uint8_t>(),
            absmax.data_as<float>(), static_cast<cudaStream_t>(options.stream.handle)),
        "quantize_8bit_blockwise"));
    KBIT_RETURN_IF_ERROR(detail::cuda_copy_on_stream(host_absmax.data(), absmax.data(),
                                                     absmax.nbytes(), options.stream.handle));
#endif
  }
  return check_blocks_finite(host_absmax.data(), blocks, block_size, n,
                             "input " + input.describe());
}

Status dequantize_8bit_blockwise(const TensorView& codes, const TensorView& absmax, DynamicMap map,
                                 std::int64_t block_size, TensorView output,
                                 const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_block_size(block_size));
  KBIT_RETURN_IF_ERROR(check_float_tensor(output, "output"));
  const std::int64_t n = output.numel();
  KBIT_RETURN_IF_ERROR(check_codes_and_absmax(codes, absmax, n, block_size));
  KBIT_RETURN_IF_ERROR(check_same_device({&output, &codes, &absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(output));
  const std::int64_t blocks = block_count(n, block_size);
  if (output.device().is_cpu()) {
    const kernels::cpu::Dequantize8bitJob job{codes.data_as<std::uint8_t>(),
                                              absmax.data_as<float>(),
                                              map_values(map),
                                              block_size,
                                              n,
                                              output.data(),
                                              output.dtype()};
    kernels::cpu::run_kernel(kDequantizeKernels, job, blocks,
                             std::max<std::int64_t>(1, kValuesPerChunk / block_size), options);
    return ok_status();
  }
#if defined(KBIT_WITH_CUDA)
  return detail::status_from_cuda_error(
      kernels::cuda::dequantize_8bit_blockwise(
          codes.data_as<std::uint8_t>(), absmax.data_as<float>(), map, block_size, n, std::nullopt,
          output.data(), output.dtype(), static_cast<cudaStream_t>(options.stream.handle)),
      "dequantize_8bit_blockwise");
#else
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

}  // namespace kbit::quant
