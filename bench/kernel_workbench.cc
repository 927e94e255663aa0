// The kernel workbench: each hot kernel of the GPU forward, run through the library's own
// launchers at the shapes of a Llama-3.1-8B decode step (every numbered variant of a kernel that
// has several), checked against its CPU reference on fresh random data, then timed against the
// device's copy bandwidth.
//
//   kbit_kernel_workbench [--json FILE]
//
// For each case: the largest |GPU − CPU reference| relative to its tolerance (the case fails
// above 1), the median time of kRuns launches each alone between CUDA events and the mean of kRuns
// launches queued back to back (each launch reading another of kCopies copies of the weights,
// which together exceed the 60 MB L2), and GB/s of the back-to-back time counting the bytes the
// kernel must read (weights, scales, activations, KV cache). The ceiling is a device-to-device
// cudaMemcpy of 1 GiB, counting bytes read and written. Exit status 1 if a check fails.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kbit/core/convert.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/decode_tiles.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_launchers.h"

namespace {

namespace kc = kbit::kernels::cuda;
namespace cpu = kbit::kernels::cpu;
using kbit::DType;
using kbit::Tensor;

constexpr int kRuns = 50;
constexpr int kCopies = 4;
// Rows of a case checked against the float64 reference (all of them up to this many).
constexpr std::int64_t kMaxCheckedRows = 8;

// Plumbing failures end the program with the message: the workbench has no partial results.
template <typename T>
T must(kbit::Result<T> result) {
  if (!result.ok()) {
    std::fprintf(stderr, "kernel_workbench: %s\n", result.status().to_string().c_str());
    std::exit(2);
  }
  return std::move(result).value();
}
void must(const kbit::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "kernel_workbench: %s\n", status.to_string().c_str());
    std::exit(2);
  }
}
void must(cudaError_t error) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "kernel_workbench: %s\n", cudaGetErrorString(error));
    std::exit(2);
  }
}

// f32 values of a normal(0, stddev) random vector rounded to bf16 (what a bf16 model holds).
std::vector<float> random_bf16_values(std::int64_t n, std::uint64_t seed, float stddev) {
  Tensor bf16 = must(Tensor::empty({n}, DType::kBF16));
  must(kbit::fill_normal(bf16.view(), seed, 0.0f, stddev));
  std::vector<float> values(static_cast<std::size_t>(n));
  must(kbit::convert_tensor(bf16.view(), kbit::TensorView(values.data(), DType::kF32, {n})));
  return values;
}

Tensor to_device(const std::vector<float>& values, DType dtype) {
  const auto n = static_cast<std::int64_t>(values.size());
  Tensor host = must(Tensor::empty({n}, dtype));
  must(kbit::convert_tensor(kbit::TensorView(const_cast<float*>(values.data()), DType::kF32, {n}),
                            host.view()));
  Tensor device = must(Tensor::empty({n}, dtype, kbit::Device::cuda(0)));
  must(kbit::copy_tensor(host.view(), device.view()));
  return device;
}

std::vector<float> to_host_f32(const kbit::TensorView& device) {
  Tensor host = must(Tensor::empty(device.shape(), device.dtype()));
  must(kbit::copy_tensor(device, host.view()));
  std::vector<float> values(static_cast<std::size_t>(device.numel()));
  must(kbit::convert_tensor(host.view(),
                            kbit::TensorView(values.data(), DType::kF32, {device.numel()})));
  return values;
}

// The times of a launch in milliseconds: the median of kRuns calls of launch(run), each alone
// between two events on `stream` (so each carries the launch's latency), and the mean of kRuns
// calls queued back to back between two events (as a decode step's graph runs them).
struct Timing {
  double single_ms = 0;
  double back_to_back_ms = 0;
};

template <typename Launch>
Timing time_launches(cudaStream_t stream, Launch launch) {
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  must(cudaEventCreate(&start));
  must(cudaEventCreate(&stop));
  for (int run = 0; run < 3; ++run) launch(run);  // warm-up
  std::vector<double> times;
  float ms = 0;
  for (int run = 0; run < kRuns; ++run) {
    must(cudaEventRecord(start, stream));
    launch(run);
    must(cudaEventRecord(stop, stream));
    must(cudaEventSynchronize(stop));
    must(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  Timing timing;
  timing.single_ms = times[times.size() / 2];
  must(cudaEventRecord(start, stream));
  for (int run = 0; run < kRuns; ++run) launch(run);
  must(cudaEventRecord(stop, stream));
  must(cudaEventSynchronize(stop));
  must(cudaEventElapsedTime(&ms, start, stop));
  timing.back_to_back_ms = ms / kRuns;
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return timing;
}

// GB/s and the fraction of the copy count the back-to-back time.
struct Report {
  nlohmann::json cases = nlohmann::json::array();
  double copy_gb_per_s = 0;
  bool failed = false;

  // `flops`: the case's multiply-adds times two where it is a matrix product worth rating by
  // them (TFLOP/s of the back-to-back time), else 0.
  void add(const std::string& name, double ratio, Timing timing, double bytes, double flops = 0) {
    const double gb_per_s = bytes / (timing.back_to_back_ms * 1e-3) / 1e9;
    const double tflop_per_s = flops / (timing.back_to_back_ms * 1e-3) / 1e12;
    const bool ok = ratio <= 1.0;
    failed = failed || !ok;
    std::printf(
        "%-52s %s  error/tolerance %.3f  %8.2f us alone  %8.2f us back to back  "
        "%7.1f GB/s  %.2f of copy",
        name.c_str(), ok ? "ok  " : "FAIL", ratio, timing.single_ms * 1e3,
        timing.back_to_back_ms * 1e3, gb_per_s, gb_per_s / copy_gb_per_s);
    if (flops > 0) std::printf("  %6.1f TFLOP/s", tflop_per_s);
    std::printf("\n");
    nlohmann::json entry{{"case", name},
                         {"ok", ok},
                         {"error_over_tolerance", ratio},
                         {"median_us", timing.single_ms * 1e3},
                         {"back_to_back_us", timing.back_to_back_ms * 1e3},
                         {"gb_per_s", gb_per_s},
                         {"copy_fraction", gb_per_s / copy_gb_per_s}};
    if (flops > 0) entry["tflop_per_s"] = tflop_per_s;
    cases.push_back(std::move(entry));
  }
};

void measure_copy(Report& report, cudaStream_t stream) {
  const std::int64_t bytes = std::int64_t{1} << 30;
  Tensor a = must(Tensor::empty({bytes}, DType::kU8, kbit::Device::cuda(0)));
  Tensor b = must(Tensor::empty({bytes}, DType::kU8, kbit::Device::cuda(0)));
  must(cudaMemsetAsync(a.view().data(), 1, static_cast<std::size_t>(bytes), stream));
  const double ms =
      time_launches(stream, [&](int) {
        must(cudaMemcpyAsync(b.view().data(), a.view().data(), static_cast<std::size_t>(bytes),
                             cudaMemcpyDeviceToDevice, stream));
      }).single_ms;
  report.copy_gb_per_s = 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
  std::printf("%-44s %9.2f us  %8.1f GB/s (read + written: the ceiling)\n", "copy 1 GiB", ms * 1e3,
              report.copy_gb_per_s);
}

// max over outputs of |got − want| / (2^-7·|want| + 2·in·2^-24·Σ|x·w| + 1e-30): one bf16 rounding
// of the output and f32 accumulation in any order.
double error_over_tolerance(const std::vector<float>& got, const std::vector<float>& want,
                            const std::vector<double>& magnitudes, std::int64_t in) {
  double worst = 0;
  for (std::size_t o = 0; o < want.size(); ++o) {
    const double tolerance = std::ldexp(std::fabs(want[o]), -7) +
                             2.0 * static_cast<double>(in) * std::ldexp(magnitudes[o], -24) + 1e-30;
    worst = std::max(worst, std::fabs(static_cast<double>(got[o]) - want[o]) / tolerance);
  }
  return worst;
}

// The 4-bit GEMV variants: kernel, weight decode and layout, its number and what it is, and
// whether the weight carries its absmax rounded to bf16 (kc::round_4bit_absmax), which the
// product decode then reads in place of the absmax (what the model does for nf4_dq).
struct FourBitVariant {
  kc::Linear4bitKernel kernel;
  cpu::FourBitDecode decode;
  const char* name;
  kbit::quant::FourBitLayout layout = kbit::quant::FourBitLayout::kBitsandbytes;
  bool rounded_absmax = false;
};
constexpr auto kDecodeTiles = kbit::quant::FourBitLayout::kDecodeTiles;
constexpr FourBitVariant kFourBitVariants[] = {
    {kc::Linear4bitKernel::kGemv, cpu::FourBitDecode::kExact, "v1 CUDA-core GEMV"},
    {kc::Linear4bitKernel::kTensorCoreGemv, cpu::FourBitDecode::kExact, "v2 tensor-core GEMV"},
    {kc::Linear4bitKernel::kTensorCoreGemv, cpu::FourBitDecode::kBitsandbytes,
     "v3 tensor-core GEMV, bitsandbytes' batch-1 decode"},
    {kc::Linear4bitKernel::kTensorCoreGemvLines, cpu::FourBitDecode::kBitsandbytes,
     "v5 whole-line tensor-core GEMV, bitsandbytes' decode"},
    {kc::Linear4bitKernel::kTensorCoreGemvLines, cpu::FourBitDecode::kBitsandbytes,
     "v11 v5 on the decode tiles", kDecodeTiles},
    {kc::Linear4bitKernel::kTensorCoreGemv, cpu::FourBitDecode::kBitsandbytes,
     "v12 v3 on the decode tiles", kDecodeTiles},
    {kc::Linear4bitKernel::kTensorCoreGemv, cpu::FourBitDecode::kBitsandbytes,
     "v14 v12 with the absmax rounded", kDecodeTiles, true},
};
// The many-row (prompt) variants.
constexpr FourBitVariant kFourBitGemmVariants[] = {
    {kc::Linear4bitKernel::kManyRows, cpu::FourBitDecode::kExact, "v6 dequantized into cuBLAS"},
    {kc::Linear4bitKernel::kTensorCoreGemm, cpu::FourBitDecode::kExact,
     "v7 tensor-core GEMM (wgmma)"},
    {kc::Linear4bitKernel::kTensorCoreGemm, cpu::FourBitDecode::kExact,
     "v13 v7 on the decode tiles", kDecodeTiles},
};

// The weight values as the product decode takes them: bf16(bf16(code) · bf16(absmax)).
std::vector<float> product_decoded(const Tensor& packed, const Tensor& absmax, std::int64_t n) {
  const std::vector<float> block_absmax = to_host_f32(absmax.view());
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(n / 2));
  must(cudaMemcpy(bytes.data(), packed.view().data(), bytes.size(), cudaMemcpyDeviceToHost));
  std::vector<float> values(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t byte = bytes[static_cast<std::size_t>(i / 2)];
    const float code = kbit::quant::kNf4Values[i % 2 == 0 ? byte >> 4 : byte & 0xf];
    const float scale = cpu::round_to_bf16(block_absmax[static_cast<std::size_t>(i / 64)]);
    values[static_cast<std::size_t>(i)] = cpu::round_to_bf16(cpu::round_to_bf16(code) * scale);
  }
  return values;
}

// kCopies copies of one NF4 weight (block 64, optionally double-quantized) on the device, and the
// weight values the float64 reference multiplies with.
struct FourBitCopies {
  std::vector<Tensor> tensors;  // what `weights` point into
  std::vector<kc::FourBitWeightDevice> weights;
  std::vector<float> dequantized;  // as `decode` takes them, rounded to bf16
  double bytes = 0;                // of one copy: codes and absmax
};

// The copy's codes and absmax (or absmax codes) in the decode tiles of a weight [out, in].
void move_to_decode_tiles(std::vector<Tensor>& tensors, kc::FourBitWeightDevice& weight,
                          std::int64_t out, std::int64_t in) {
  const std::int64_t bytes = out * in / 2;
  const std::int64_t blocks = out * in / 64;
  const bool nested = weight.absmax == nullptr;
  const DType absmax_dtype = nested ? DType::kU8 : DType::kF32;
  const void* absmax = nested ? static_cast<const void*>(weight.absmax_codes) : weight.absmax;
  Tensor packed = must(Tensor::empty({bytes}, DType::kU8, kbit::Device::cuda(0)));
  Tensor tiled_absmax = must(Tensor::empty({blocks}, absmax_dtype, kbit::Device::cuda(0)));
  const kbit::Device device = kbit::Device::cuda(0);
  must(kbit::quant::tile_4bit_for_decode(
      kbit::TensorView(const_cast<std::uint8_t*>(weight.packed), DType::kU8, {bytes}, device),
      kbit::TensorView(const_cast<void*>(absmax), absmax_dtype, {blocks}, device), out, in,
      packed.view(), tiled_absmax.view()));
  must(cudaDeviceSynchronize());
  weight.packed = packed.data_as<const std::uint8_t>();
  if (nested) {
    weight.absmax_codes = tiled_absmax.data_as<const std::uint8_t>();
  } else {
    weight.absmax = tiled_absmax.data_as<const float>();
  }
  weight.layout = kDecodeTiles;
  tensors.push_back(std::move(packed));
  tensors.push_back(std::move(tiled_absmax));
}

FourBitCopies make_four_bit_copies(const std::vector<float>& w, bool nested,
                                   cpu::FourBitDecode decode,
                                   const FourBitVariant* variant = nullptr, std::int64_t out = 0,
                                   std::int64_t in = 0) {
  const auto n = static_cast<std::int64_t>(w.size());
  FourBitCopies copies;
  Tensor w_device = to_device(w, DType::kBF16);
  const std::int64_t blocks = kbit::quant::block_count(n, 64);
  for (int c = 0; c < kCopies; ++c) {
    Tensor packed = must(Tensor::empty({n / 2}, DType::kU8, kbit::Device::cuda(0)));
    Tensor absmax = must(Tensor::empty({blocks}, DType::kF32, kbit::Device::cuda(0)));
    must(kbit::quant::quantize_4bit(w_device.view(), kbit::quant::FourBitType::kNf4, 64,
                                    packed.view(), absmax.view()));
    kc::FourBitWeightDevice weight{packed.data_as<const std::uint8_t>(),
                                   kbit::quant::FourBitType::kNf4,
                                   64,
                                   absmax.data_as<const float>(),
                                   nullptr,
                                   nullptr,
                                   0.0f,
                                   DType::kBF16};
    if (nested) {
      Tensor codes = must(Tensor::empty({blocks}, DType::kU8, kbit::Device::cuda(0)));
      Tensor nested_absmax =
          must(Tensor::empty({kbit::quant::block_count(blocks, kbit::quant::kNestedBlockSize)},
                             DType::kF32, kbit::Device::cuda(0)));
      must(kbit::quant::quantize_absmax_nested(absmax.view(), codes.view(), nested_absmax.view(),
                                               &weight.nested_offset));
      // The reference's absmax: what the kernel decodes from the 8-bit codes.
      must(kbit::quant::dequantize_absmax_nested(codes.view(), nested_absmax.view(),
                                                 weight.nested_offset, absmax.view()));
      weight.absmax = nullptr;
      weight.absmax_codes = codes.data_as<const std::uint8_t>();
      weight.nested_absmax = nested_absmax.data_as<const float>();
      copies.tensors.push_back(std::move(codes));
      copies.tensors.push_back(std::move(nested_absmax));
    }
    if (c == 0 && decode == cpu::FourBitDecode::kBitsandbytes) {
      copies.dequantized = product_decoded(packed, absmax, n);
    } else if (c == 0) {
      // The reference multiplies with this copy's dequantized weight, rounded to bf16.
      Tensor values = must(Tensor::empty({n}, DType::kF32, kbit::Device::cuda(0)));
      must(kbit::quant::dequantize_4bit(packed.view(), absmax.view(),
                                        kbit::quant::FourBitType::kNf4, 64, values.view()));
      copies.dequantized = to_host_f32(values.view());
      for (float& value : copies.dequantized) value = cpu::round_to_bf16(value);
    }
    if (variant != nullptr && variant->layout == kDecodeTiles) {
      move_to_decode_tiles(copies.tensors, weight, out, in);
    }
    if (variant != nullptr && variant->rounded_absmax) {
      Tensor rounded = must(Tensor::empty({blocks}, DType::kBF16, kbit::Device::cuda(0)));
      must(kc::round_4bit_absmax(weight, out, in, DType::kBF16, rounded.view().data(), nullptr));
      must(cudaDeviceSynchronize());
      weight.rounded_absmax = rounded.view().data();
      weight.rounded_absmax_dtype = DType::kBF16;
      copies.tensors.push_back(std::move(rounded));
    }
    copies.weights.push_back(weight);
    copies.tensors.push_back(std::move(packed));
    copies.tensors.push_back(std::move(absmax));
  }
  // The bytes the GEMV reads: the codes and one absmax form.
  int absmax_bytes = nested ? 1 : 4;
  if (variant != nullptr && variant->rounded_absmax) absmax_bytes = 2;
  copies.bytes = static_cast<double>(n) / 2 + static_cast<double>(blocks * absmax_bytes);
  return copies;
}

// `rows` tokens through a 4-bit (NF4, optionally double-quantized) Linear [out, in] with the
// given kernel, or through a bf16 one (variant nullptr).
void measure_linear(Report& report, cudaStream_t stream, std::int64_t out, std::int64_t in,
                    std::int64_t rows, bool nested, const FourBitVariant* variant) {
  const bool four_bit = variant != nullptr;
  const std::int64_t n = out * in;
  const std::vector<float> w = random_bf16_values(n, 11, 0.02f);
  const std::vector<float> x = random_bf16_values(rows * in, 12, 1.0f);
  std::unique_ptr<kc::LinearContext> context =
      must(kc::LinearContext::create(stream, rows, in, out));
  Tensor x_device = to_device(x, DType::kBF16);
  Tensor y_device = must(Tensor::empty({rows * out}, DType::kBF16, kbit::Device::cuda(0)));
  std::vector<Tensor> weights;  // the bf16 weight's kCopies copies
  FourBitCopies four_bit_copies;
  double bytes = static_cast<double>(rows * in) * 2;
  if (!four_bit) {
    for (int c = 0; c < kCopies; ++c) weights.push_back(to_device(w, DType::kBF16));
    bytes += static_cast<double>(n) * 2;
  } else {
    four_bit_copies = make_four_bit_copies(w, nested, variant->decode, variant, out, in);
    bytes += four_bit_copies.bytes;
  }
  const std::vector<float>& dequantized = four_bit ? four_bit_copies.dequantized : w;
  const auto launch = [&](int run) {
    const int c = run % kCopies;
    if (four_bit) {
      must(kc::linear_4bit(*context, x_device.view().data(), four_bit_copies.weights[c], nullptr,
                           rows, in, out, DType::kBF16, y_device.view().data(), DType::kBF16,
                           variant->decode, variant->kernel));
    } else {
      must(kc::linear_float(*context, x_device.view().data(), weights[c].view().data(), nullptr,
                            rows, in, out, y_device.view().data(), DType::kBF16));
    }
  };
  launch(0);
  must(cudaStreamSynchronize(stream));
  const std::vector<float> all = to_host_f32(y_device.view());
  // Every row up to kMaxCheckedRows, else that many spread over the rows, the last included.
  std::vector<std::int64_t> checked;
  for (std::int64_t i = 0; i < std::min(rows, kMaxCheckedRows); ++i) {
    checked.push_back(rows <= kMaxCheckedRows ? i : i * (rows - 1) / (kMaxCheckedRows - 1));
  }
  std::vector<float> got;
  for (const std::int64_t r : checked) {
    got.insert(got.end(), all.begin() + r * out, all.begin() + (r + 1) * out);
  }
  std::vector<float> want(got.size());
  std::vector<double> magnitudes(want.size());
  for (std::size_t c = 0; c < checked.size(); ++c) {
    const std::int64_t r = checked[c];
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = 0;
      double magnitude = 0;
      for (std::int64_t i = 0; i < in; ++i) {
        const double product = static_cast<double>(x[static_cast<std::size_t>(r * in + i)]) *
                               dequantized[static_cast<std::size_t>(o * in + i)];
        sum += product;
        magnitude += std::fabs(product);
      }
      want[c * static_cast<std::size_t>(out) + static_cast<std::size_t>(o)] =
          static_cast<float>(sum);
      magnitudes[c * static_cast<std::size_t>(out) + static_cast<std::size_t>(o)] = magnitude;
    }
  }
  const double error = error_over_tolerance(got, want, magnitudes, in);
  const Timing timing = time_launches(stream, launch);
  const std::string name = std::string(four_bit ? (nested ? "nf4_dq " : "nf4 ") : "bf16 ") +
                           (four_bit    ? variant->name
                            : rows == 1 ? "linear_float GEMV"
                                        : "linear_float cuBLAS") +
                           ", " + std::to_string(rows) + (rows == 1 ? " token, " : " tokens, ") +
                           std::to_string(out) + "x" + std::to_string(in);
  report.add(name, error, timing, bytes,
             rows > kc::kLinear4bitGemvMaxRows ? 2.0 * static_cast<double>(rows * n) : 0.0);
}

// `rows` tokens through an LLM.int8 Linear [out, in] at the model's threshold of 6, checked
// against the CPU's definition, linear_int8_reference (the same bits where no column reaches the
// threshold, as N(0, 1) activations almost never do); the weight is the CPU's row-wise
// quantization of N(0, 0.02) values. GB/s counts the int8 codes, their row absmax and x.
// With `normed_codes` (one row of at most kMaxInt8QuantizedNormCols) x is add_rms_norm's output,
// which also quantizes it (once, before the timing), and the Linear reads those codes: the
// model's path for q/k/v and gate/up.
void measure_int8_linear(Report& report, cudaStream_t stream, std::int64_t out, std::int64_t in,
                         std::int64_t rows, bool normed_codes) {
  constexpr float kThreshold = 6.0f;
  std::vector<float> w = random_bf16_values(out * in, 11, 0.02f);
  std::vector<float> x = random_bf16_values(rows * in, 12, 1.0f);
  Tensor codes = must(Tensor::empty({out, in}, DType::kI8));
  Tensor absmax = must(Tensor::empty({out}, DType::kF32));
  must(kbit::quant::quantize_int8_rowwise(kbit::TensorView(w.data(), DType::kF32, {out, in}), 0.0f,
                                          codes.view(), absmax.view(), nullptr));
  std::vector<Tensor> device_codes;
  std::vector<Tensor> device_absmax;
  for (int c = 0; c < kCopies; ++c) {
    device_codes.push_back(must(Tensor::empty({out, in}, DType::kI8, kbit::Device::cuda(0))));
    must(kbit::copy_tensor(codes.view(), device_codes.back().view()));
    device_absmax.push_back(must(Tensor::empty({out}, DType::kF32, kbit::Device::cuda(0))));
    must(kbit::copy_tensor(absmax.view(), device_absmax.back().view()));
  }
  std::unique_ptr<kc::LinearContext> context =
      must(kc::LinearContext::create(stream, rows, in, out));
  Tensor x_device = to_device(x, DType::kBF16);
  Tensor quantized_buffer =
      must(Tensor::empty({static_cast<std::int64_t>(kc::int8_quantized_row_bytes(in))}, DType::kU8,
                         kbit::Device::cuda(0)));
  const kc::Int8QuantizedRow quantized =
      kc::int8_quantized_row_in(quantized_buffer.view().data(), in);
  if (normed_codes) {
    Tensor hidden = to_device(x, DType::kBF16);
    Tensor norm_weight = to_device(random_bf16_values(in, 13, 1.0f), DType::kF32);
    must(kc::add_rms_norm(hidden.view().data(), nullptr, norm_weight.data_as<const float>(), 1, in,
                          1e-5f, x_device.view().data(), DType::kBF16, stream, &quantized,
                          kThreshold));
    must(cudaStreamSynchronize(stream));
    x = to_host_f32(x_device.view());
  }
  std::vector<float> want(static_cast<std::size_t>(rows * out));
  cpu::linear_int8_reference(
      {x.data(),
       cpu::Int8Weight{codes.data_as<const std::int8_t>(), absmax.data_as<const float>(), nullptr},
       nullptr, DType::kBF16, rows, in, out, kThreshold, DType::kBF16, want.data()});
  Tensor y_device = must(Tensor::empty({rows * out}, DType::kBF16, kbit::Device::cuda(0)));
  const auto launch = [&](int run) {
    const int c = run % kCopies;
    const kc::Int8Layer layer{
        {device_codes[c].data_as<const std::int8_t>(), device_absmax[c].data_as<const float>()},
        nullptr,
        out,
        y_device.view().data()};
    must(kc::linear_int8_layers(*context, x_device.view().data(), {&layer, 1}, rows, in, kThreshold,
                                DType::kBF16, kc::LinearEpilogue::kStore,
                                normed_codes ? &quantized : nullptr));
  };
  launch(0);
  must(cudaStreamSynchronize(stream));
  const std::vector<float> got = to_host_f32(y_device.view());
  // The tolerance of one bf16 rounding: what outlier columns' f32 sums in another order could
  // cost where a column did reach the threshold.
  const std::vector<double> magnitudes(want.size(), 0.0);
  report.add(std::string("int8 LLM.int8 GEMV") + (normed_codes ? " on the norm's codes, " : ", ") +
                 std::to_string(rows) + (rows == 1 ? " token, " : " tokens, ") +
                 std::to_string(out) + "x" + std::to_string(in),
             error_over_tolerance(got, want, magnitudes, in), time_launches(stream, launch),
             static_cast<double>(out * in) + static_cast<double>(out) * 4 +
                 static_cast<double>(rows * in) * 2);
}

// The first half of v6: the whole NF4 weight [out, in] dequantized to bf16, as the many-row path
// does chunk by chunk before cuBLAS. Checked bit for bit (the ratio is the fraction of values that
// differ, scaled so that any difference fails); GB/s counts the codes and absmax read and the bf16
// values written.
void measure_dequantize(Report& report, cudaStream_t stream, std::int64_t out, std::int64_t in,
                        bool nested) {
  const std::vector<float> w = random_bf16_values(out * in, 11, 0.02f);
  const FourBitCopies copies = make_four_bit_copies(w, nested, cpu::FourBitDecode::kExact);
  Tensor values = must(Tensor::empty({out * in}, DType::kBF16, kbit::Device::cuda(0)));
  const auto launch = [&](int run) {
    must(kc::dequantize_4bit_weight(copies.weights[run % kCopies], out, in, DType::kBF16,
                                    values.view().data(), stream));
  };
  launch(0);
  must(cudaStreamSynchronize(stream));
  const std::vector<float> got = to_host_f32(values.view());
  std::int64_t differing = 0;
  for (std::size_t i = 0; i < got.size(); ++i) differing += got[i] != copies.dequantized[i];
  report.add(std::string(nested ? "nf4_dq" : "nf4") + " dequantized to bf16 (v6's first half), " +
                 std::to_string(out) + "x" + std::to_string(in),
             static_cast<double>(differing) * 2, time_launches(stream, launch),
             copies.bytes + static_cast<double>(out * in) * 2);
}

// Decode attention of one token at position `position` (GQA 32/8 heads, head_dim 128, bf16).
void measure_decode_attention(Report& report, cudaStream_t stream, std::int64_t position) {
  constexpr std::int64_t kHeads = 32;
  constexpr std::int64_t kKvHeads = 8;
  constexpr std::int64_t kHeadDim = 128;
  const std::int64_t capacity = position + 1;
  const std::int64_t cache = capacity * kKvHeads * kHeadDim;
  const std::vector<float> q = random_bf16_values(kHeads * kHeadDim, 21, 1.0f);
  const std::vector<float> k = random_bf16_values(cache, 22, 1.0f);
  const std::vector<float> v = random_bf16_values(cache, 23, 1.0f);
  Tensor q_device = to_device(q, DType::kBF16);
  std::vector<Tensor> keys;
  std::vector<Tensor> values;
  for (int c = 0; c < kCopies; ++c) {
    keys.push_back(to_device(k, DType::kBF16));
    values.push_back(to_device(v, DType::kBF16));
  }
  Tensor out = must(Tensor::empty({kHeads * kHeadDim}, DType::kBF16, kbit::Device::cuda(0)));
  const auto position32 = static_cast<std::int32_t>(position);
  Tensor position_device = must(Tensor::empty({1}, DType::kI32, kbit::Device::cuda(0)));
  must(kbit::copy_tensor(kbit::TensorView(const_cast<std::int32_t*>(&position32), DType::kI32, {1}),
                         position_device.view()));
  Tensor workspace = must(Tensor::empty(
      {static_cast<std::int64_t>(kc::attention_workspace_floats(1, kHeads, kHeadDim, capacity))},
      DType::kF32, kbit::Device::cuda(0)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const auto launch = [&](int run) {
    const int c = run % kCopies;
    const kc::AttentionJob job{q_device.view().data(),
                               keys[c].view().data(),
                               values[c].view().data(),
                               1,
                               kHeads,
                               kKvHeads,
                               kHeadDim,
                               position_device.data_as<const std::int32_t>(),
                               capacity,
                               0,
                               scale,
                               out.view().data(),
                               DType::kBF16,
                               workspace.data_as<float>()};
    must(kc::attention(job, stream));
  };
  launch(0);
  must(cudaStreamSynchronize(stream));
  const std::vector<float> got = to_host_f32(out.view());
  std::vector<float> want(got.size());
  const cpu::AttentionJob reference{q.data(), k.data(), v.data(), 1,     kHeads,      kKvHeads,
                                    kHeadDim, position, 0,        scale, want.data(), true};
  cpu::attention_reference(reference, 0, kHeads);
  // The bf16 output and the block-relative rounding of the probabilities: a few bf16 ulps of the
  // values' scale (|v| ~ 1).
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]) / (4 * 0x1p-7));
  }
  const double bytes = 2.0 * static_cast<double>(cache) * 2 + static_cast<double>(q.size()) * 2;
  report.add("decode attention, 32/8 heads x 128, " + std::to_string(capacity) + " keys", worst,
             time_launches(stream, launch), bytes);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::string families = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (argument == "--cases" && i + 1 < argc &&
               (std::string(argv[i + 1]) == "all" || std::string(argv[i + 1]) == "decode" ||
                std::string(argv[i + 1]) == "prompt")) {
      families = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: kbit_kernel_workbench [--json FILE] [--cases all|decode|prompt]\n");
      return 2;
    }
  }
  const bool decode = families != "prompt";
  const bool prompt = families != "decode";
  if (!kbit::cuda_available()) {
    std::fprintf(stderr, "kernel_workbench: no CUDA device is usable here\n");
    return 2;
  }
  cudaStream_t stream = nullptr;
  must(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Report report;
  measure_copy(report, stream);
  const std::pair<std::int64_t, std::int64_t> shapes[] = {
      {14336, 4096}, {4096, 14336}, {4096, 4096}};
  for (const auto& [out, in] : shapes) {
    for (const std::int64_t rows : {1, 4, 8}) {
      if (!decode) break;
      for (const FourBitVariant& variant : kFourBitVariants) {
        measure_linear(report, stream, out, in, rows, /*nested=*/false, &variant);
        measure_linear(report, stream, out, in, rows, /*nested=*/true, &variant);
      }
      measure_linear(report, stream, out, in, rows, /*nested=*/false, nullptr);
      measure_int8_linear(report, stream, out, in, rows, /*normed_codes=*/false);
      if (rows == 1 && in <= kc::kMaxInt8QuantizedNormCols) {
        measure_int8_linear(report, stream, out, in, rows, /*normed_codes=*/true);
      }
    }
    if (prompt) {
      measure_dequantize(report, stream, out, in, /*nested=*/false);
      measure_dequantize(report, stream, out, in, /*nested=*/true);
    }
    for (const std::int64_t rows : {16, 64, 512, 2048}) {
      if (!prompt) break;
      for (const FourBitVariant& variant : kFourBitGemmVariants) {
        measure_linear(report, stream, out, in, rows, /*nested=*/false, &variant);
        measure_linear(report, stream, out, in, rows, /*nested=*/true, &variant);
      }
      measure_linear(report, stream, out, in, rows, /*nested=*/false, nullptr);
    }
  }
  for (const std::int64_t position : {639, 4095}) {
    if (decode) measure_decode_attention(report, stream, position);
  }
  if (!json_path.empty()) {
    std::ofstream(json_path)
        << nlohmann::json{{"copy_gb_per_s", report.copy_gb_per_s}, {"cases", report.cases}}.dump(2)
        << "\n";
  }
  cudaStreamDestroy(stream);
  return report.failed ? 1 : 0;
}
