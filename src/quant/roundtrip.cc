#include "kbit/quant/roundtrip.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/parallel.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"

namespace kbit::quant {
namespace {

// The quantized state of one round trip, on the device.
struct QuantizedBuffers {
  Tensor codes;
  Tensor absmax;
  Tensor nested_codes;
  Tensor nested_absmax;
  float offset = 0;
};

Status check_config(const RoundtripConfig& config) {
  if (config.numel < 1) return invalid_argument("--numel must be at least 1");
  if (config.iterations < 1) return invalid_argument("--iterations must be at least 1");
  if (!is_floating(config.dtype)) {
    return invalid_argument("--dtype must be f32, f16 or bf16");
  }
  if (config.double_quant && config.format == RoundtripFormat::kDynamic8bit) {
    return invalid_argument("--double-quant applies to nf4 and fp4 only");
  }
  return ok_status();
}

Result<QuantizedBuffers> allocate_buffers(const RoundtripConfig& config) {
  const std::int64_t n = config.numel;
  const std::int64_t blocks = block_count(n, config.block_size);
  const bool four_bit = config.format != RoundtripFormat::kDynamic8bit;
  QuantizedBuffers buffers;
  KBIT_ASSIGN_OR_RETURN(buffers.codes, Tensor::empty(Shape{four_bit ? packed_4bit_bytes(n) : n},
                                                     DType::kU8, config.device));
  KBIT_ASSIGN_OR_RETURN(buffers.absmax, Tensor::empty(Shape{blocks}, DType::kF32, config.device));
  if (config.double_quant) {
    KBIT_ASSIGN_OR_RETURN(buffers.nested_codes,
                          Tensor::empty(Shape{blocks}, DType::kU8, config.device));
    KBIT_ASSIGN_OR_RETURN(
        buffers.nested_absmax,
        Tensor::empty(Shape{block_count(blocks, kNestedBlockSize)}, DType::kF32, config.device));
  }
  return buffers;
}

Status quantize(const RoundtripConfig& config, const TensorView& input, QuantizedBuffers& q) {
  const ExecutionOptions& options = config.execution;
  if (config.format == RoundtripFormat::kDynamic8bit) {
    return quantize_8bit_blockwise(input, DynamicMap::kSigned, config.block_size, q.codes, q.absmax,
                                   options);
  }
  const FourBitType type =
      config.format == RoundtripFormat::kNf4 ? FourBitType::kNf4 : FourBitType::kFp4;
  KBIT_RETURN_IF_ERROR(quantize_4bit(input, type, config.block_size, q.codes, q.absmax, options));
  if (!config.double_quant) return ok_status();
  return quantize_absmax_nested(q.absmax, q.nested_codes, q.nested_absmax, &q.offset, options);
}

Status dequantize(const RoundtripConfig& config, QuantizedBuffers& q, TensorView output) {
  const ExecutionOptions& options = config.execution;
  if (config.format == RoundtripFormat::kDynamic8bit) {
    return dequantize_8bit_blockwise(q.codes, q.absmax, DynamicMap::kSigned, config.block_size,
                                     output, options);
  }
  if (config.double_quant) {
    KBIT_RETURN_IF_ERROR(
        dequantize_absmax_nested(q.nested_codes, q.nested_absmax, q.offset, q.absmax, options));
  }
  const FourBitType type =
      config.format == RoundtripFormat::kNf4 ? FourBitType::kNf4 : FourBitType::kFp4;
  return dequantize_4bit(q.codes, q.absmax, type, config.block_size, output, options);
}

// Runs `step` `iterations` times and returns the median wall time; each step ends by waiting
// for the device.
template <typename Step>
Result<double> median_seconds(int iterations, Step&& step) {
  std::vector<double> seconds;
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    KBIT_RETURN_IF_ERROR(step());
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

template <typename T>
void accumulate_error(const T* original, const T* roundtrip, std::int64_t n,
                      RoundtripReport& report) {
  double error_sq = 0;
  double norm_sq = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double x = kernels::cpu::to_f32(original[i]);
    const double error = kernels::cpu::to_f32(roundtrip[i]) - x;
    error_sq += error * error;
    norm_sq += x * x;
    report.max_abs_error = std::max(report.max_abs_error, std::fabs(error));
  }
  report.relative_rms_error = std::sqrt(error_sq / norm_sq);
}

}  // namespace

Result<RoundtripReport> measure_roundtrip(const RoundtripConfig& config) {
  KBIT_RETURN_IF_ERROR(check_config(config));
  const Shape shape{config.numel};
  KBIT_ASSIGN_OR_RETURN(Tensor host_input, Tensor::empty(shape, config.dtype));
  KBIT_RETURN_IF_ERROR(fill_normal(host_input.view(), config.seed));
  KBIT_ASSIGN_OR_RETURN(Tensor host_output, Tensor::empty(shape, config.dtype));
  KBIT_ASSIGN_OR_RETURN(Tensor input, Tensor::empty(shape, config.dtype, config.device));
  KBIT_ASSIGN_OR_RETURN(Tensor output, Tensor::empty(shape, config.dtype, config.device));
  KBIT_RETURN_IF_ERROR(copy_tensor(host_input, input.view()));
  KBIT_ASSIGN_OR_RETURN(QuantizedBuffers buffers, allocate_buffers(config));

  RoundtripReport report;
  KBIT_ASSIGN_OR_RETURN(report.quantize_seconds, median_seconds(config.iterations, [&] {
                          KBIT_RETURN_IF_ERROR(quantize(config, input, buffers));
                          return synchronize(config.device);
                        }));
  KBIT_ASSIGN_OR_RETURN(report.dequantize_seconds, median_seconds(config.iterations, [&] {
                          KBIT_RETURN_IF_ERROR(dequantize(config, buffers, output.view()));
                          return synchronize(config.device);
                        }));
  KBIT_RETURN_IF_ERROR(copy_tensor(output, host_output.view()));
  kernels::cpu::visit_float_dtype(config.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    accumulate_error(host_input.data_as<T>(), host_output.data_as<T>(), config.numel, report);
  });
  const double bytes = static_cast<double>(host_input.nbytes());
  report.quantize_gb_per_s = bytes / report.quantize_seconds / 1e9;
  report.dequantize_gb_per_s = bytes / report.dequantize_seconds / 1e9;
  report.quantized_bytes = static_cast<std::int64_t>(buffers.codes.nbytes());
  report.quantized_bytes += static_cast<std::int64_t>(
      config.double_quant ? buffers.nested_codes.nbytes() + buffers.nested_absmax.nbytes()
                          : buffers.absmax.nbytes());
  if (config.device.is_cpu()) {
    report.cpu_kernel =
        config.execution.cpu_kernel == CpuKernel::kReference
            ? std::string("reference, 1 thread")
            : std::string(cpu_isa_name(active_cpu_isa())) + ", " +
                  std::to_string(config.execution.threads > 0 ? config.execution.threads
                                                              : max_threads()) +
                  " threads";
  }
  return report;
}

}  // namespace kbit::quant
