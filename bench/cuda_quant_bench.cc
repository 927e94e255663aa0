// GPU throughput of the quantization kernels, against the device's own copy bandwidth.
//
// Each case times one launcher call (kernels/cuda/quant_launchers.h) between two CUDA events,
// on 2^28 values (512 MiB of bf16, far beyond the 60 MB L2), rotating among three buffer sets so
// that no call finds its data in the cache. Inputs are normal random values (never zeros: they
// would hide wrong indexing and can run faster than real data).
//
// Counters (cuda_bench_timing.h): GB/s = bytes read + bytes written per second (each input read
// once, each output written once: the fewest bytes the operation must move), and copy_fraction.
// The `copy` case times the device-to-device copy on these buffers. Read the medians.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <string>

#include "cuda_bench_timing.h"
#include "kbit/core/device.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kernels/cuda/quant_launchers.h"

namespace {

using kbit::DType;
using kbit::Tensor;
using kbit::bench::report_fraction;

constexpr std::int64_t kValues = std::int64_t{1} << 28;
constexpr int kBufferSets = 3;
constexpr std::int64_t kFourBitBlock = 64;
constexpr std::int64_t kEightBitBlock = 256;

// One set of device buffers for every case: a bf16 input, its NF4 and 8-bit quantizations, and a
// bf16 output.
struct BufferSet {
  Tensor input;    // bf16 [kValues]
  Tensor packed;   // u8 [kValues / 2]
  Tensor absmax4;  // f32 [kValues / 64]
  Tensor codes8;   // u8 [kValues]
  Tensor absmax8;  // f32 [kValues / 256]
  Tensor output;   // bf16 [kValues]
};

struct Buffers {
  std::array<BufferSet, kBufferSets> sets;
  std::string error;  // why the buffers could not be made, if they could not
};

template <typename T>
bool take(kbit::Result<T> result, T* out, std::string* error) {
  if (!result.ok()) {
    *error = result.status().to_string();
    return false;
  }
  *out = std::move(result).value();
  return true;
}

Buffers make_buffers() {
  Buffers buffers;
  if (!kbit::cuda_available()) {
    buffers.error = "no CUDA device: these benchmarks run on a GPU";
    return buffers;
  }
  const kbit::Device gpu = kbit::Device::cuda(0);
  Tensor host;
  if (!take(Tensor::empty(kbit::Shape{kValues}, DType::kBF16), &host, &buffers.error)) {
    return buffers;
  }
  const kbit::Status filled = kbit::fill_normal(host.view(), 2024);
  if (!filled.ok()) {
    buffers.error = filled.to_string();
    return buffers;
  }
  for (BufferSet& set : buffers.sets) {
    std::string& error = buffers.error;
    if (!take(Tensor::empty(kbit::Shape{kValues}, DType::kBF16, gpu), &set.input, &error) ||
        !take(Tensor::empty(kbit::Shape{kValues / 2}, DType::kU8, gpu), &set.packed, &error) ||
        !take(Tensor::empty(kbit::Shape{kValues / kFourBitBlock}, DType::kF32, gpu), &set.absmax4,
              &error) ||
        !take(Tensor::empty(kbit::Shape{kValues}, DType::kU8, gpu), &set.codes8, &error) ||
        !take(Tensor::empty(kbit::Shape{kValues / kEightBitBlock}, DType::kF32, gpu), &set.absmax8,
              &error) ||
        !take(Tensor::empty(kbit::Shape{kValues}, DType::kBF16, gpu), &set.output, &error)) {
      return buffers;
    }
    const kbit::Status copied = kbit::copy_tensor(host.view(), set.input.view());
    if (!copied.ok()) {
      error = copied.to_string();
      return buffers;
    }
    // Real codes for the dequantize cases.
    namespace cuda = kbit::kernels::cuda;
    if (cuda::quantize_4bit(set.input.view().data(), DType::kBF16, kValues,
                            kbit::quant::FourBitType::kNf4, kFourBitBlock,
                            set.packed.data_as<std::uint8_t>(), set.absmax4.data_as<float>(),
                            nullptr) != cudaSuccess ||
        cuda::quantize_8bit_blockwise(set.input.view().data(), DType::kBF16, kValues, 0.0f,
                                      kbit::quant::DynamicMap::kSigned, kEightBitBlock,
                                      set.codes8.data_as<std::uint8_t>(),
                                      set.absmax8.data_as<float>(), nullptr) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess) {
      error = "preparing the quantized inputs failed";
      return buffers;
    }
  }
  return buffers;
}

Buffers& buffers() {
  static Buffers instance = make_buffers();
  return instance;
}

// Times launch(set) once per iteration, rotating over the buffer sets (cuda_bench_timing.h).
template <typename Launch>
double run_timed(benchmark::State& state, double bytes_per_call, Launch launch) {
  Buffers& all = buffers();
  if (!all.error.empty()) {
    state.SkipWithError(all.error.c_str());
    return 0.0;
  }
  return kbit::bench::run_timed(state, bytes_per_call, kBufferSets, [&](int index) {
    return launch(all.sets[static_cast<std::size_t>(index)]);
  });
}

// A device-to-device copy of one bf16 buffer into another: the bandwidth ceiling.
cudaError_t copy_once(BufferSet& set) {
  return cudaMemcpyAsync(set.output.view().data(), set.input.view().data(), set.input.nbytes(),
                         cudaMemcpyDeviceToDevice);
}

constexpr double kCopyBytes = 2.0 * 2.0 * static_cast<double>(kValues);

void BM_Copy(benchmark::State& state) {
  report_fraction(state, run_timed(state, kCopyBytes, copy_once));
}

void BM_Nf4DequantizeBf16(benchmark::State& state) {
  const double bytes = static_cast<double>(kValues / 2 + kValues / kFourBitBlock * 4 + kValues * 2);
  report_fraction(state, run_timed(state, bytes, [](BufferSet& set) {
                    return kbit::kernels::cuda::dequantize_4bit(
                        set.packed.data_as<std::uint8_t>(), set.absmax4.data_as<float>(),
                        kbit::quant::FourBitType::kNf4, kFourBitBlock, kValues,
                        set.output.view().data(), DType::kBF16, nullptr);
                  }));
}

void BM_Nf4QuantizeBf16(benchmark::State& state) {
  const double bytes = static_cast<double>(kValues * 2 + kValues / 2 + kValues / kFourBitBlock * 4);
  report_fraction(state, run_timed(state, bytes, [](BufferSet& set) {
                    return kbit::kernels::cuda::quantize_4bit(
                        set.input.view().data(), DType::kBF16, kValues,
                        kbit::quant::FourBitType::kNf4, kFourBitBlock,
                        set.packed.data_as<std::uint8_t>(), set.absmax4.data_as<float>(), nullptr);
                  }));
}

void BM_Dynamic8bitQuantizeBf16(benchmark::State& state) {
  const double bytes = static_cast<double>(kValues * 2 + kValues + kValues / kEightBitBlock * 4);
  report_fraction(state, run_timed(state, bytes, [](BufferSet& set) {
                    return kbit::kernels::cuda::quantize_8bit_blockwise(
                        set.input.view().data(), DType::kBF16, kValues, 0.0f,
                        kbit::quant::DynamicMap::kSigned, kEightBitBlock,
                        set.codes8.data_as<std::uint8_t>(), set.absmax8.data_as<float>(), nullptr);
                  }));
}

void BM_Dynamic8bitDequantizeBf16(benchmark::State& state) {
  const double bytes = static_cast<double>(kValues + kValues / kEightBitBlock * 4 + kValues * 2);
  report_fraction(state, run_timed(state, bytes, [](BufferSet& set) {
                    return kbit::kernels::cuda::dequantize_8bit_blockwise(
                        set.codes8.data_as<std::uint8_t>(), set.absmax8.data_as<float>(),
                        kbit::quant::DynamicMap::kSigned, kEightBitBlock, kValues, std::nullopt,
                        set.output.view().data(), DType::kBF16, nullptr);
                  }));
}

KBIT_GPU_BENCHMARK(BM_Copy);
KBIT_GPU_BENCHMARK(BM_Nf4DequantizeBf16);
KBIT_GPU_BENCHMARK(BM_Nf4QuantizeBf16);
KBIT_GPU_BENCHMARK(BM_Dynamic8bitQuantizeBf16);
KBIT_GPU_BENCHMARK(BM_Dynamic8bitDequantizeBf16);

}  // namespace
