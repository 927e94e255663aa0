#include "kbit/quant/int8_rowwise.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/cuda_runtime.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/int8_rowwise.h"
#include "quant/checks.h"
#if defined(KBIT_WITH_CUDA)
#include "kernels/cuda/quant_launchers.h"
#endif

namespace kbit::quant {
namespace {

constexpr std::int64_t kValuesPerChunk = 1 << 14;

const kernels::cpu::KernelVariants<kernels::cpu::Int8RowwiseJob> kQuantizeKernels = {
    kernels::cpu::quantize_int8_rowwise_reference, kernels::cpu::quantize_int8_rowwise_avx2,
    kernels::cpu::quantize_int8_rowwise_avx512};
// Dequantization is one multiply per value; the reference loop is the fast path too.
const kernels::cpu::KernelVariants<kernels::cpu::Int8DequantizeJob> kDequantizeKernels = {
    kernels::cpu::dequantize_int8_rowwise_reference,
    kernels::cpu::dequantize_int8_rowwise_reference,
    kernels::cpu::dequantize_int8_rowwise_reference};

Status check_matrix(const TensorView& tensor, std::string_view name) {
  if (tensor.rank() != 2 || tensor.shape()[0] < 1 || tensor.shape()[1] < 1) {
    return invalid_argument(std::string(name) + " is " + tensor.describe() +
                            "; it must be a matrix [rows, cols] with rows, cols >= 1");
  }
  return ok_status();
}

Status check_rows_finite(const float* row_absmax, std::int64_t rows, const TensorView& input) {
  for (std::int64_t row = 0; row < rows; ++row) {
    if (!std::isfinite(row_absmax[row])) {
      return invalid_argument("input " + input.describe() + " row " + std::to_string(row) +
                              " holds NaN, Inf or a value beyond the f16 range (|x| > 65504); "
                              "int8 quantization needs finite f16 values");
    }
  }
  return ok_status();
}

std::vector<std::int64_t> flagged_columns(const std::vector<std::uint8_t>& is_outlier) {
  std::vector<std::int64_t> columns;
  for (std::size_t j = 0; j < is_outlier.size(); ++j) {
    if (is_outlier[j] != 0) columns.push_back(static_cast<std::int64_t>(j));
  }
  return columns;
}

}  // namespace

Status quantize_int8_rowwise(const TensorView& input, float threshold, TensorView codes,
                             TensorView row_absmax, std::vector<std::int64_t>* outlier_columns,
                             const ExecutionOptions& options) {
  if (!(threshold >= 0.0f) || !std::isfinite(threshold)) {
    return invalid_argument("int8 outlier threshold " + std::to_string(threshold) +
                            " must be a finite number >= 0 (0 turns outliers off; LLM.int8 "
                            "uses 6.0)");
  }
  KBIT_RETURN_IF_ERROR(check_float_tensor(input, "input"));
  KBIT_RETURN_IF_ERROR(check_matrix(input, "input"));
  const std::int64_t rows = input.shape()[0];
  const std::int64_t cols = input.shape()[1];
  KBIT_RETURN_IF_ERROR(check_tensor(codes, "int8 codes", {DType::kI8}, rows * cols));
  KBIT_RETURN_IF_ERROR(check_tensor(row_absmax, "row_absmax", {DType::kF32}, rows));
  KBIT_RETURN_IF_ERROR(check_same_device({&input, &codes, &row_absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(input));

  std::vector<float> host_row_absmax(static_cast<std::size_t>(rows));
  std::vector<std::uint8_t> is_outlier(static_cast<std::size_t>(cols), 0);
  if (input.device().is_cpu()) {
    const kernels::cpu::Int8RowwiseJob job{input.data(),
                                           input.dtype(),
                                           rows,
                                           cols,
                                           threshold,
                                           codes.data_as<std::int8_t>(),
                                           row_absmax.data_as<float>()};
    kernels::cpu::run_kernel(kQuantizeKernels, job, rows,
                             std::max<std::int64_t>(1, kValuesPerChunk / cols), options);
    host_row_absmax.assign(row_absmax.data_as<float>(), row_absmax.data_as<float>() + rows);
    KBIT_RETURN_IF_ERROR(check_rows_finite(host_row_absmax.data(), rows, input));
    if (threshold > 0.0f) {
      kernels::cpu::mark_outlier_columns(job, is_outlier.data());
      if (rows > 1) {
        for (std::int64_t row = 0; row < rows; ++row) {
          std::int8_t* row_codes = codes.data_as<std::int8_t>() + row * cols;
          for (std::int64_t j = 0; j < cols; ++j) {
            if (is_outlier[static_cast<std::size_t>(j)] != 0) row_codes[j] = 0;
          }
        }
      }
    }
  } else {
#if defined(KBIT_WITH_CUDA)
    KBIT_ASSIGN_OR_RETURN(Tensor device_flags,
                          Tensor::empty(Shape{cols}, DType::kU8, input.device()));
    KBIT_RETURN_IF_ERROR(
        copy_tensor(TensorView(is_outlier.data(), DType::kU8, Shape{cols}), device_flags.view()));
    const auto stream = static_cast<cudaStream_t>(options.stream.handle);
    KBIT_RETURN_IF_ERROR(detail::status_from_cuda_error(
        kernels::cuda::quantize_int8_rowwise(
            input.data(), input.dtype(), rows, cols, threshold, codes.data_as<std::int8_t>(),
            row_absmax.data_as<float>(), device_flags.data_as<std::uint8_t>(), stream),
        "quantize_int8_rowwise"));
    if (threshold > 0.0f && rows > 1) {
      KBIT_RETURN_IF_ERROR(detail::status_from_cuda_error(
          kernels::cuda::zero_outlier_columns(codes.data_as<std::int8_t>(), rows, cols,
                                              device_flags.data_as<std::uint8_t>(), stream),
          "zero_outlier_columns"));
    }
    KBIT_RETURN_IF_ERROR(detail::cuda_copy_on_stream(host_row_absmax.data(), row_absmax.data(),
                                                     row_absmax.nbytes(), options.stream.handle));
    KBIT_RETURN_IF_ERROR(detail::cuda_copy_on_stream(is_outlier.data(), device_flags.view().data(),
                                                     device_flags.nbytes(), options.stream.handle));
    KBIT_RETURN_IF_ERROR(check_rows_finite(host_row_absmax.data(), rows, input));
#endif
  }
  if (outlier_columns != nullptr) *outlier_columns = flagged_columns(is_outlier);
  return ok_status();
}

Status dequantize_int8_rowwise(const TensorView& codes, const TensorView& row_absmax,
                               TensorView output, const ExecutionOptions& options) {
  KBIT_RETURN_IF_ERROR(check_float_tensor(output, "output"));
  KBIT_RETURN_IF_ERROR(check_matrix(output, "output"));
  const std::int64_t rows = output.shape()[0];
  const std::int64_t cols = output.shape()[1];
  KBIT_RETURN_IF_ERROR(check_tensor(codes, "int8 codes", {DType::kI8}, rows * cols));
  KBIT_RETURN_IF_ERROR(check_tensor(row_absmax, "row_absmax", {DType::kF32}, rows));
  KBIT_RETURN_IF_ERROR(check_same_device({&output, &codes, &row_absmax}));
  KBIT_RETURN_IF_ERROR(check_device_supported(output));
  if (output.device().is_cpu()) {
    const kernels::cpu::Int8DequantizeJob job{codes.data_as<std::int8_t>(),
                                              row_absmax.data_as<float>(),
                                              rows,
                                              cols,
                                              output.data(),
                                              output.dtype()};
    kernels::cpu::run_kernel(kDequantizeKernels, job, rows,
                             std::max<std::int64_t>(1, kValuesPerChunk / cols), options);
    return ok_status();
  }
#if defined(KBIT_WITH_CUDA)
  return detail::status_from_cuda_error(
      kernels::cuda::dequantize_int8_rowwise(
          codes.data_as<std::int8_t>(), row_absmax.data_as<float>(), rows, cols, output.data(),
          output.dtype(), static_cast<cudaStream_t>(options.stream.handle)),
      "dequantize_int8_rowwise");
#else
  return internal_error("unreachable: CUDA tensor in a build without CUDA");
#endif
}

}  // namespace kbit::quant
