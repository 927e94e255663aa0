#include "kbit/quant/blockwise_4bit.h"

#include <vector>

#include "core/cuda_runtime.h"
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/dispatch.h"
#include "quant/checks.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/quant_launchers.h"
#endif

namespace kbit::quant {
namespace {

// Enough work per thread chunk to pay for the hand-off: about 64 KiB of input values.
constexpr std::int64_t kValuesPerChunk = 1 << 14;

const kernels::cpu::KernelVariants<kernels::cpu::Quantize4bitJob> kQuantizeKernels = {
    kernels::cpu::quantize_4bit_reference, kernels::cpu::quantize_4bit_avx2,
    kernels::cpu::quantize_4bit_avx512};
const kernels::cpu::KernelVariants<kernels::cpu::Dequantize4bitJob> kDequantizeKernels = {
    kernels::cpu::dequantize_4bit_reference, kernels::cpu::dequantize_4bit_avx2,
    kernels::cpu::dequantize_4bit_avx512};

Status check_block_size(std::int64_t block_size) {
  if (is_valid_4bit_block_size(block_size)) return ok_status();
  return invalid_argument("block size " + std::to_string(block_size) +
                          " is not supported for 4-bit quantization; use one of 32, 64, 128, "
                          "256, 512, 1024, 2048, 4096 (bitsandbytes' default is 64)");
}

// Checks what quantize and dequantize share: the packed codes and absmax of n values.
Status check_packed_and_absmax(const TensorView& packed, const TensorView& absmax, std::int64_t n,
                               std::int64_t block_size) {
  KBIT_RETURN_IF_ERROR(
      check_tensor(packed, "packed 4-bit codes", {DType::kU8}, packed_4bit_bytes(n)));
  return check_tensor(absmax, "absmax", {DType::kF32}, block_count(n, block_size));
}

// Reads absmax back to the host and fails if a block held NaN or Inf.
Status check_input_finite(const TensorView& input, const TensorView& absmax,
                          std::int64_t block_size, const ExecutionOptions& options) {
  std::vector<float> host_absmax(static_cast<std::size_t>(absmax.numel()));
  if (absmax.device().is_cpu()) {
    host_absmax.assign(absmax.data_as<float>(), absmax.data_as<float>() + absmax.numel());
  } else {
    KBIT_RETURN_IF_ERROR(detail::cuda_copy_on_stream(host_absmax.data(), absmax.data(),
                                                     absmax.nbytes(), options.stream.handle));
  }
  return check_blocks_finite(host_absmax.data(), absmax.numel(), block_size, input.numel(),
                             "input " + input.describe());
}

}  // namespace

std::string_view four_bit_type_name(FourBitType type) {
  return type == FourBitType::kNf4 ? "nf4" : "fp4";
}

std::optional<FourBitType> parse_four_bit_type(std::string_view name) {
  if (name == "nf4") return FourBitType::kNf4;
  if (name == "fp4") return FourBitType::kFp4;
  return std::nullopt;
}

bool is_valid_4bit_block_size(std::int64_t block_size) {
  return block_size >= 32 && block_size <= 4096 && (block_size & (block_size - 1)) == 0;
}

std::int64_t block_count(std::int64_t n, std::int64_t block_size) {
  return (n + block_size - 1) / block_size;
}

std::int64_t packed_4bit_bytes(std::int64_t n) {
  return (n + 1) / 2;
}

Status quantize_4bit(const TensorView& input, FourBitType type, std::int64_t block_size,
                     TensorView packed, TensorView absmax, const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_block_size(block_size));
  KBIT_RETURN_IF_ERROR(check_float_tensor(input, "input"));
  const std::int64_t n = input.numel();
  KBIT_RETURN_IF_ERROR(check_packed_and_absmax(packed, absmax, n, block_size));
  KBIT_RETURN_IF_ERROR(check_same_device({&input, &packed, &absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(input));
  const std::int64_t blocks = block_count(n, block_size);
  if (input.device().is_cpu()) {
    const kernels::cpu::Quantize4bitJob job{
        input.data(),           input.dtype(), n, type, block_size, packed.data_as<std::uint8_t>(),
        absmax.data_as<float>()};
    kernels::cpu::run_kernel(kQuantizeKernels, job, blocks,
                             std::max<std::int64_t>(1, kValuesPerChunk / block_size), options);
  } else {
#if defined(KBIT_WITH_CUDA)
    KBIT_RETURN_IF_ERROR(detail::status_from_cuda_error(
        kernels::cuda::quantize_4bit(input.data(), input.dtype(), n, type, block_size,
                                     packed.data_as<std::uint8_t>(), absmax.data_as<float>(),
                                     static_cast<cudaStream_t>(options.stream.handle)),
        "quantize_4bit"));
#endif
  }
  return check_input_finite(input, absmax, block_size, options);
}

Status dequantize_4bit(const TensorView& packed, const TensorView& absmax, FourBitType type,
                       std::int64_t block_size, TensorView output,
                       const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_block_size(block_size));
  KBIT_RETURN_IF_ERROR(check_float_tensor(output, "output"));
  const std::int64_t n = output.numel();
  KBIT_RETURN_IF_ERROR(check_packed_and_absmax(packed, absmax, n, block_size));
  KBIT_RETURN_IF_ERROR(check_same_device({&output, &packed, &absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(output));
  const std::int64_t blocks = block_count(n, block_size);
  if (output.device().is_cpu()) {
    const kernels::cpu::Dequantize4bitJob job{packed.data_as<std::uint8_t>(),
                                              absmax.data_as<float>(),
                                              type,
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
      kernels::cuda::dequantize_4bit(packed.data_as<std::uint8_t>(), absmax.data_as<float>(), type,
                                     block_size, n, output.data(), output.dtype(),
                                     static_cast<cudaStream_t>(options.stream.handle)),
      "dequantize_4bit");
#else
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

}  // namespace kbit::quant
