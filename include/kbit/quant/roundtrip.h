// A quantize -> dequantize round trip on a generated tensor: the error it introduces and the
// throughput of each direction. What `kbit roundtrip` reports.
#pragma once

#include <cstdint>
#include <string>

#include "kbit/core/device.h"
#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"
#include "kbit/core/status.h"

namespace kbit::quant {

enum class RoundtripFormat { kNf4, kFp4, kDynamic8bit };

struct RoundtripConfig {
  RoundtripFormat format = RoundtripFormat::kNf4;
  std::int64_t block_size = 64;
  bool double_quant = false;   // 4-bit formats only
  DType dtype = DType::kBF16;  // input and output dtype
  std::int64_t numel = std::int64_t{1} << 24;
  Device device = Device::cpu();
  std::uint64_t seed = 0;
  int iterations = 5;  // timed repetitions; the median is reported
  ExecutionOptions execution;
};

struct RoundtripReport {
  double relative_rms_error = 0;  // ||dequantized - x|| / ||x||, in float64
  double max_abs_error = 0;
  double quantize_seconds = 0;       // median of the iterations
  double dequantize_seconds = 0;     // median of the iterations
  double quantize_gb_per_s = 0;      // input bytes / quantize time
  double dequantize_gb_per_s = 0;    // output bytes / dequantize time
  std::int64_t quantized_bytes = 0;  // codes + absmax (+ nested state)
  std::string cpu_kernel;            // "avx512 x 2 threads", "reference", or "" on CUDA
};

// Draws numel standard-normal values (rounded to dtype) from seed, round-trips them on the
// device and measures. Fails on an invalid configuration, naming the field and the fix.
Result<RoundtripReport> measure_roundtrip(const RoundtripConfig& config);

}  // namespace kbit::quant
