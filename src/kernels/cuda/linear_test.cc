// GPU tests of the float and 4-bit Linear launchers (linear_launchers.h) against the CPU
// reference kernels (linear_reference, linear_4bit_reference) on fresh random data, and of
// linear_float_backward_input against a float64 computation.
//
// The GPU sums in another order than the reference, so results agree within a bound, not bit
// for bit. For one output, with K terms t_i = x_i · w_i (the bias counted as one more):
//   - each f32 sum is within γ_{K+1} · Σ|t_i| of the exact one (γ_n = n·u / (1 - n·u), u = 2^-24;
//     a rounded product costs one more u, which the K + 1 covers);
//   - cuBLAS on tensor cores may truncate inside an MMA instead of rounding, which at most
//     doubles u, so the GPU's sum is within 2·γ_{K+1} · Σ|t_i|;
//   so the two f32 sums differ by at most 3·γ_{K+1} · Σ|t_i|. Each later rounding (to the compute
//   dtype, then to the activation dtype) can put two such sums on either side of a rounding
//   boundary: one ulp of that dtype each. ulp(v) <= 2·u_dtype·|v| + the dtype's smallest spacing.
// Every output is poisoned (0xAB bytes) first, so an element left unwritten shows up.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kbit/core/device.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/decode_tiles.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/device_queries.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/linear_workspace.h"
#include "kernels/cuda/llama_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels::cuda {
namespace {

using cpu::FourBitDecode;
using quant::FourBitType;

// ---- Plumbing. Failures throw; GoogleTest reports them as test failures.

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.to_string());
}

void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
  }
}

template <typename T>
T must(Result<T> result) {
  check(result.status());
  return std::move(result).value();
}

using TestStream = cuda_test::NonBlockingStream;

std::unique_ptr<LinearContext> make_context(const TestStream& stream, std::int64_t rows,
                                            std::int64_t in, std::int64_t out) {
  return must(LinearContext::create(stream.get(), rows, in, out));
}

float value_at(const TensorView& tensor, std::int64_t i) {
  switch (tensor.dtype()) {
    case DType::kF32:
      return tensor.data_as<float>()[i];
    case DType::kF16:
      return f16_to_f32(tensor.data_as<f16>()[i]);
    case DType::kBF16:
      return bf16_to_f32(tensor.data_as<bf16>()[i]);
    default:
      throw std::runtime_error("value_at needs a float tensor");
  }
}

std::vector<float> values_of(const TensorView& host) {
  std::vector<float> values(static_cast<std::size_t>(host.numel()));
  for (std::int64_t i = 0; i < host.numel(); ++i) {
    values[static_cast<std::size_t>(i)] = value_at(host, i);
  }
  return values;
}

float rounded_to(DType dtype, float value) {
  switch (dtype) {
    case DType::kF16:
      return f16_to_f32(f32_to_f16(value));
    case DType::kBF16:
      return bf16_to_f32(f32_to_bf16(value));
    default:
      return value;
  }
}

Tensor random_host(Shape shape, DType dtype, std::uint64_t seed, float stddev) {
  Tensor tensor = must(Tensor::empty(shape, dtype));
  check(fill_normal(tensor.view(), seed, 0.0f, stddev));
  return tensor;
}

// A device copy of `host`, starting `offset_bytes` into its allocation (to test misaligned
// pointers). The returned pointer stays valid while `storage` lives.
const void* upload(const TensorView& host, std::size_t offset_bytes, Tensor& storage) {
  const auto bytes = static_cast<std::int64_t>(host.nbytes() + offset_bytes);
  storage = must(Tensor::empty({bytes}, DType::kU8, Device::cuda(0)));
  char* data = storage.data_as<char>() + offset_bytes;
  check_cuda(cudaMemcpy(data, host.data(), host.nbytes(), cudaMemcpyHostToDevice), "upload");
  return data;
}

Tensor poisoned_device(Shape shape, DType dtype) {
  Tensor tensor = must(Tensor::empty(shape, dtype, Device::cuda(0)));
  check_cuda(cudaMemset(tensor.view().data(), 0xAB, tensor.nbytes()), "cudaMemset");
  // The poison is queued on the legacy stream; the launchers use a non-blocking one.
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return tensor;
}

std::vector<float> download(const Tensor& device) {
  Tensor host = must(Tensor::empty(device.shape(), device.dtype()));
  check(copy_tensor(device.view(), host.view()));
  return values_of(host.view());
}

// Runs body(first, end) over [0, n) split across the CPU's threads (the references are scalar).
void parallel_ranges(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& body) {
  const std::int64_t parts = std::clamp<std::int64_t>(std::thread::hardware_concurrency(), 1,
                                                      std::max<std::int64_t>(n, 1));
  std::vector<std::thread> threads;
  for (std::int64_t p = 0; p < parts; ++p) {
    threads.emplace_back(body, n * p / parts, n * (p + 1) / parts);
  }
  for (std::thread& thread : threads) thread.join();
}

// ---- The tolerance of the header comment.

double unit_roundoff(DType dtype) {
  return dtype == DType::kBF16 ? 0x1p-8 : dtype == DType::kF16 ? 0x1p-11 : 0x1p-24;
}

double smallest_spacing(DType dtype) {
  return dtype == DType::kBF16 ? 0x1p-133 : dtype == DType::kF16 ? 0x1p-24 : 0x1p-149;
}

double ulp_bound(DType dtype, double magnitude) {
  return 2.0 * unit_roundoff(dtype) * magnitude + smallest_spacing(dtype);
}

// abs_sum = Σ|t_i| including the bias; roundings = the dtypes the sum is rounded to after it.
double tolerance(std::int64_t terms, double abs_sum, double reference,
                 const std::vector<DType>& roundings) {
  const double nu = static_cast<double>(terms) * unit_roundoff(DType::kF32);
  const double sums = 3.0 * nu / (1.0 - nu) * abs_sum;
  double bound = sums;
  for (DType dtype : roundings) bound += ulp_bound(dtype, std::fabs(reference) + sums);
  return bound;
}

// Σ_i |x[r, i]| · |w[o, i]| + |bias[o]| for every (r, o), through the CPU linear kernel.
std::vector<float> abs_sums(const std::vector<float>& x, const std::vector<float>& w,
                            const std::vector<float>& bias, std::int64_t rows, std::int64_t in,
                            std::int64_t out) {
  std::vector<float> abs_x(x.size());
  std::vector<float> abs_w(w.size());
  std::vector<float> abs_bias(bias.size());
  std::transform(x.begin(), x.end(), abs_x.begin(), [](float v) { return std::fabs(v); });
  std::transform(w.begin(), w.end(), abs_w.begin(), [](float v) { return std::fabs(v); });
  std::transform(bias.begin(), bias.end(), abs_bias.begin(), [](float v) { return std::fabs(v); });
  std::vector<float> sums(static_cast<std::size_t>(rows * out));
  cpu::LinearJob job{
      abs_x.data(), abs_w.data(), DType::kF32, abs_bias.empty() ? nullptr : abs_bias.data(),
      rows,         in,           out,         sums.data()};
  cpu::linear_op(job, ExecutionOptions{});
  return sums;
}

struct Comparison {
  std::int64_t rows;
  std::int64_t in;  // K: terms per sum, before the bias
  std::int64_t out;
  std::vector<DType> roundings;
};

// The number of outputs outside the tolerance; prints the first few.
std::int64_t count_mismatches(const Comparison& shape, const std::vector<float>& expected,
                              const std::vector<float>& actual, const std::vector<float>& sums,
                              const std::string& label) {
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < shape.rows * shape.out; ++i) {
    const auto k = static_cast<std::size_t>(i);
    const double bound = tolerance(shape.in + 1, sums[k], expected[k], shape.roundings);
    const double difference = std::fabs(static_cast<double>(actual[k]) - expected[k]);
    if (difference <= bound) continue;  // also false for NaN
    if (++mismatches <= 5) {
      ADD_FAILURE() << label << ": y[" << i / shape.out << ", " << i % shape.out
                    << "] = " << actual[k] << ", reference " << expected[k] << ", |difference| "
                    << difference << " > tolerance " << bound;
    }
  }
  return mismatches;
}

// ---- linear_float.

struct FloatCase {
  std::int64_t rows;
  std::int64_t out;
  std::int64_t in;
  DType dtype;
  bool bias;
};

std::string describe(const FloatCase& c) {
  std::ostringstream text;
  text << "linear_float rows " << c.rows << ", out " << c.out << ", in " << c.in << ", "
       << dtype_name(c.dtype) << (c.bias ? ", bias" : "");
  return text.str();
}

void check_float_case(const FloatCase& c, std::uint64_t seed) {
  const Tensor x_host = random_host({c.rows, c.in}, c.dtype, seed, 1.0f);
  const Tensor w_host = random_host({c.out, c.in}, c.dtype, seed + 1, 0.05f);
  const Tensor bias_host = random_host({c.out}, c.dtype, seed + 2, 0.5f);
  const std::vector<float> x = values_of(x_host.view());
  const std::vector<float> w = values_of(w_host.view());
  const std::vector<float> bias = c.bias ? values_of(bias_host.view()) : std::vector<float>{};

  std::vector<float> expected(static_cast<std::size_t>(c.rows * c.out));
  const cpu::LinearJob job{x.data(),
                           w_host.view().data(),
                           c.dtype,
                           c.bias ? bias.data() : nullptr,
                           c.rows,
                           c.in,
                           c.out,
                           expected.data(),
                           c.dtype == DType::kBF16};
  parallel_ranges(
      c.out, [&](std::int64_t first, std::int64_t end) { cpu::linear_reference(job, first, end); });

  TestStream stream;
  const auto context = make_context(stream, c.rows, c.in, c.out);
  Tensor x_storage;
  Tensor w_storage;
  Tensor bias_storage;
  const void* x_device = upload(x_host.view(), 0, x_storage);
  const void* w_device = upload(w_host.view(), 0, w_storage);
  const void* bias_device = c.bias ? upload(bias_host.view(), 0, bias_storage) : nullptr;
  Tensor y = poisoned_device({c.rows, c.out}, c.dtype);
  check(linear_float(*context, x_device, w_device, bias_device, c.rows, c.in, c.out,
                     y.view().data(), c.dtype));
  stream.synchronize();

  const Comparison shape{
      c.rows, c.in, c.out,
      c.dtype == DType::kBF16 ? std::vector<DType>{DType::kBF16} : std::vector<DType>{}};
  EXPECT_EQ(count_mismatches(shape, expected, download(y),
                             abs_sums(x, w, bias, c.rows, c.in, c.out), describe(c)),
            0);
}

TEST(CudaLinearFloat, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  const FloatCase cases[] = {
      {1, 7, 33, DType::kF32, true},
      {3, 64, 32, DType::kBF16, true},
      {64, 96, 160, DType::kF32, false},
      {300, 96, 160, DType::kBF16, true},
      {9, 1000, 777, DType::kF32, true},
      {5, 4096, 512, DType::kBF16, false},
      {300, 512, 1024, DType::kBF16, true},
      {2, 32000, 64, DType::kF32, true},
      // The GEMV: rows of several strides of vectors, a last stride cut short.
      {1, 300, 4096, DType::kBF16, false},
      {1, 100, 1000, DType::kBF16, true},
      {1, 50, 1028, DType::kF32, true},
  };
  std::uint64_t seed = 100;
  for (const FloatCase& c : cases) {
    SCOPED_TRACE(describe(c));
    check_float_case(c, seed);
    seed += 10;
  }
}

TEST(CudaLinearFloat, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 4, 32, 32);
  Tensor y = poisoned_device({4, 32}, DType::kF32);
  const Status f16 = linear_float(*context, y.view().data(), y.view().data(), nullptr, 1, 32, 32,
                                  y.view().data(), DType::kF16);
  EXPECT_EQ(f16.code(), StatusCode::kInvalidArgument) << f16.to_string();
  const Status empty_in = linear_float(*context, y.view().data(), y.view().data(), nullptr, 1, 0,
                                       32, y.view().data(), DType::kF32);
  EXPECT_EQ(empty_in.code(), StatusCode::kInvalidArgument) << empty_in.to_string();
  // No rows: nothing to do, nothing written.
  check(linear_float(*context, nullptr, nullptr, nullptr, 0, 32, 32, nullptr, DType::kF32));
}

// ---- linear_float_layers.

std::string describe_layers(std::int64_t rows, std::int64_t in, std::size_t layers,
                            LinearEpilogue epilogue) {
  return "rows " + std::to_string(rows) + ", in " + std::to_string(in) + ", " +
         std::to_string(layers) + " layers" +
         (epilogue == LinearEpilogue::kSiluMul ? ", SiLU·mul" : "");
}

// The outputs of a fused call (`actual`) equal those of one call per layer (`expected`) bit for
// bit: every layer's, or with the SiLU·mul epilogue gate's, which holds silu_mul(gate, up).
void expect_fused_outputs_equal(const std::vector<Tensor>& expected,
                                const std::vector<Tensor>& actual, bool silu) {
  for (std::size_t i = 0; i < (silu ? 1 : expected.size()); ++i) {
    const std::vector<float> want = download(expected[i]);
    const std::vector<float> got = download(actual[i]);
    std::int64_t differing = 0;
    for (std::size_t k = 0; k < want.size(); ++k) {
      if (std::memcmp(&want[k], &got[k], sizeof(float)) != 0 && ++differing <= 5) {
        ADD_FAILURE() << "layer " << i << ", y[" << k << "] = " << got[k] << ", one call gives "
                      << want[k];
      }
    }
    EXPECT_EQ(differing, 0) << "layer " << i;
  }
}

struct FloatLayersCase {
  std::int64_t rows;
  std::int64_t in;
  std::vector<std::int64_t> outs;
  LinearEpilogue epilogue;
  DType dtype;
  bool bias;
};

// The layers in one call give the bits of one linear_float call per layer (and silu_mul after
// gate and up): the fused GEMV sums each weight row as the single layer's does.
void check_float_layers_case(const FloatLayersCase& c, std::uint64_t seed) {
  TestStream stream;
  const std::int64_t widest = *std::max_element(c.outs.begin(), c.outs.end());
  const auto context = make_context(stream, c.rows, c.in, widest);
  Tensor x_storage;
  const void* x = upload(random_host({c.rows, c.in}, c.dtype, seed, 1.0f).view(), 0, x_storage);
  const std::size_t count = c.outs.size();
  std::vector<Tensor> storage(2 * count);
  std::vector<Tensor> expected;
  std::vector<Tensor> actual;
  std::vector<FloatLayer> layers;
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t out = c.outs[i];
    const void* weight = upload(random_host({out, c.in}, c.dtype, seed + 10 * i + 1, 0.05f).view(),
                                0, storage[2 * i]);
    const void* bias = c.bias ? upload(random_host({out}, c.dtype, seed + 10 * i + 2, 0.5f).view(),
                                       0, storage[2 * i + 1])
                              : nullptr;
    expected.push_back(poisoned_device({c.rows, out}, c.dtype));
    actual.push_back(poisoned_device({c.rows, out}, c.dtype));
    check(linear_float(*context, x, weight, bias, c.rows, c.in, out, expected[i].view().data(),
                       c.dtype));
    layers.push_back({weight, bias, out, actual[i].view().data()});
  }
  const bool silu = c.epilogue == LinearEpilogue::kSiluMul;
  if (silu) {
    check_cuda(silu_mul(expected[0].view().data(), expected[1].view().data(), c.rows * c.outs[0],
                        c.dtype, stream.get()),
               "silu_mul");
  }
  check(linear_float_layers(*context, x, layers, c.rows, c.in, c.dtype, c.epilogue));
  stream.synchronize();
  expect_fused_outputs_equal(expected, actual, silu);
}

TEST(CudaLinearFloatLayers, MatchSeparateCalls) {
  KBIT_REQUIRE_CUDA();
  constexpr auto kStore = LinearEpilogue::kStore;
  constexpr auto kSiluMul = LinearEpilogue::kSiluMul;
  const FloatLayersCase cases[] = {
      // q, k and v; gate and up: the GEMV, outs cut by its blocks.
      {1, 512, {100, 36, 36}, kStore, DType::kBF16, false},
      {1, 264, {40, 24, 20}, kStore, DType::kF32, true},
      {1, 1024, {102, 102}, kSiluMul, DType::kBF16, true},
      {1, 96, {48, 48}, kSiluMul, DType::kF32, false},
      // cuBLAS, one call each (then silu_mul): more rows; in not a multiple of 8.
      {9, 256, {64, 64}, kSiluMul, DType::kBF16, true},
      {2, 100, {64, 32}, kStore, DType::kBF16, true},
  };
  std::uint64_t seed = 9000;
  for (const FloatLayersCase& c : cases) {
    SCOPED_TRACE(describe_layers(c.rows, c.in, c.outs.size(), c.epilogue));
    check_float_layers_case(c, seed);
    seed += 100;
  }
}

TEST(CudaLinearFloatLayers, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 1, 64, 64);
  Tensor buffer = poisoned_device({64 * 64}, DType::kF32);
  float* data = buffer.data_as<float>();
  const FloatLayer layer{data, nullptr, 64, data};
  const FloatLayer narrow{data, nullptr, 32, data};
  const FloatLayer no_weight{nullptr, nullptr, 64, data};
  const auto call = [&](std::vector<FloatLayer> layers, LinearEpilogue epilogue) {
    return linear_float_layers(*context, data, layers, 1, 64, DType::kF32, epilogue).code();
  };
  EXPECT_EQ(call({}, LinearEpilogue::kStore), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, layer, layer, layer}, LinearEpilogue::kStore),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer}, LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, narrow}, LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, no_weight}, LinearEpilogue::kStore), StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
}

// ---- linear_float_backward_input.

struct FloatInputGradientCase {
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
  DType dtype;
  bool misaligned;  // dy and W one element past 16-byte alignment
};

std::string describe(const FloatInputGradientCase& c) {
  std::ostringstream text;
  text << "linear_float_backward_input rows " << c.rows << ", in " << c.in << ", out " << c.out
       << ", " << dtype_name(c.dtype) << (c.misaligned ? ", misaligned" : "");
  return text.str();
}

// dx = dy · W in float64, rounded to the dtype, and each output's Σ_o |dy[r, o]| · |W[o, i]|.
// The bound is the header comment's with K = out terms: the GPU's f32 sum against the exact one,
// and with bf16 one ulp for its one rounding.
void check_float_input_gradient_case(const FloatInputGradientCase& c, std::uint64_t seed) {
  const Tensor dy_host = random_host({c.rows, c.out}, c.dtype, seed, 1.0f);
  const Tensor w_host = random_host({c.out, c.in}, c.dtype, seed + 1, 0.05f);
  const std::vector<float> dy = values_of(dy_host.view());
  const std::vector<float> w = values_of(w_host.view());
  std::vector<float> expected(static_cast<std::size_t>(c.rows * c.in));
  std::vector<float> sums(expected.size());
  parallel_ranges(c.rows, [&](std::int64_t first, std::int64_t end) {
    std::vector<double> exact(static_cast<std::size_t>(c.in));
    std::vector<double> magnitude(exact.size());
    for (std::int64_t r = first; r < end; ++r) {
      std::fill(exact.begin(), exact.end(), 0.0);
      std::fill(magnitude.begin(), magnitude.end(), 0.0);
      for (std::int64_t o = 0; o < c.out; ++o) {
        const double d = dy[static_cast<std::size_t>(r * c.out + o)];
        const float* w_row = w.data() + o * c.in;
        for (std::size_t i = 0; i < exact.size(); ++i) {
          exact[i] += d * w_row[i];
          magnitude[i] += std::fabs(d * w_row[i]);
        }
      }
      for (std::size_t i = 0; i < exact.size(); ++i) {
        const auto k = static_cast<std::size_t>(r * c.in) + i;
        expected[k] = rounded_to(c.dtype, static_cast<float>(exact[i]));
        sums[k] = static_cast<float>(magnitude[i]);
      }
    }
  });

  TestStream stream;
  // The smallest context: the launcher needs no workspace but cuBLAS's.
  const auto context = make_context(stream, 1, 1, 1);
  const std::size_t offset = c.misaligned ? dtype_size(c.dtype) : 0;
  Tensor dy_storage;
  Tensor w_storage;
  const void* dy_device = upload(dy_host.view(), offset, dy_storage);
  const void* w_device = upload(w_host.view(), offset, w_storage);
  Tensor dx = poisoned_device({c.rows, c.in}, c.dtype);
  check(linear_float_backward_input(*context, dy_device, w_device, c.rows, c.in, c.out,
                                    dx.view().data(), c.dtype));
  stream.synchronize();
  const Comparison comparison{
      c.rows, c.out, c.in,
      c.dtype == DType::kBF16 ? std::vector<DType>{DType::kBF16} : std::vector<DType>{}};
  EXPECT_EQ(count_mismatches(comparison, expected, download(dx), sums, describe(c)), 0);
}

TEST(CudaLinearFloatInputGradient, MatchesFloat64Reference) {
  KBIT_REQUIRE_CUDA();
  const FloatInputGradientCase cases[] = {
      {1, 33, 7, DType::kF32, false},
      {7, 160, 96, DType::kBF16, true},
      {300, 777, 1000, DType::kF32, true},
      {300, 4096, 1024, DType::kBF16, false},
      // An lm_head's input gradient: the sum runs over a 32000-token vocabulary.
      {1, 256, 32000, DType::kBF16, false},
      {7, 256, 32000, DType::kF32, false},
      {300, 256, 32000, DType::kF32, false},
      {300, 256, 32000, DType::kBF16, false},
  };
  std::uint64_t seed = 9000;
  for (const FloatInputGradientCase& c : cases) {
    SCOPED_TRACE(describe(c));
    check_float_input_gradient_case(c, seed);
    seed += 10;
  }
}

TEST(CudaLinearFloatInputGradient, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 4, 32, 32);
  Tensor buffer = poisoned_device({4, 32}, DType::kF32);
  void* data = buffer.view().data();
  const auto call = [&](const void* dy, std::int64_t rows, std::int64_t in, DType dtype) {
    return linear_float_backward_input(*context, dy, data, rows, in, 32, data, dtype).code();
  };
  EXPECT_EQ(call(data, 1, 32, DType::kF16), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(data, 1, 0, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(data, -1, 32, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(nullptr, 1, 32, DType::kF32), StatusCode::kInvalidArgument);
  // No rows: nothing to do, nothing read or written.
  EXPECT_EQ(call(nullptr, 0, 32, DType::kF32), StatusCode::kOk);
  stream.synchronize();
}

// ---- linear_4bit.

struct FourBitCase {
  std::int64_t rows;
  std::int64_t out;
  std::int64_t in;
  FourBitType type;
  std::int64_t block_size;
  bool nested;
  DType compute_dtype;
  DType dtype;  // activations
  DType weight_dtype;
  bool bias;
  float weight_stddev;
  bool misaligned = false;  // x and the packed weight one element past a 16-byte boundary
};

// Short names for the case tables below.
constexpr auto kNf4 = FourBitType::kNf4;
constexpr auto kFp4 = FourBitType::kFp4;
constexpr DType kF32 = DType::kF32;
constexpr DType kF16 = DType::kF16;
constexpr DType kBF16 = DType::kBF16;

std::string describe(const FourBitCase& c) {
  std::ostringstream text;
  text << "linear_4bit rows " << c.rows << ", out " << c.out << ", in " << c.in << ", "
       << quant::four_bit_type_name(c.type) << " block " << c.block_size
       << (c.nested ? " nested" : "") << ", compute " << dtype_name(c.compute_dtype)
       << ", activations " << dtype_name(c.dtype) << ", weight " << dtype_name(c.weight_dtype)
       << (c.bias ? ", bias" : "") << ", weight stddev " << c.weight_stddev
       << (c.misaligned ? ", misaligned" : "");
  return text.str();
}

// A quantized random weight on the host, in both the reference's and the device's form.
struct HostFourBitWeight {
  Tensor packed;
  Tensor absmax;        // f32 [blocks], as quantized
  Tensor absmax_codes;  // nested: u8 [blocks]
  Tensor nested_absmax;
  float nested_offset = 0.0f;
  std::vector<float> matmul_values;  // [out, in]: the weight as the matmul sees it
};

HostFourBitWeight quantize_weight(const FourBitCase& c, std::uint64_t seed) {
  const std::int64_t n = c.out * c.in;
  const std::int64_t blocks = quant::block_count(n, c.block_size);
  const Tensor weight = random_host({c.out, c.in}, c.weight_dtype, seed, c.weight_stddev);
  HostFourBitWeight result;
  result.packed = must(Tensor::empty({quant::packed_4bit_bytes(n)}, DType::kU8));
  result.absmax = must(Tensor::empty({blocks}, DType::kF32));
  check(quant::quantize_4bit(weight.view(), c.type, c.block_size, result.packed.view(),
                             result.absmax.view()));
  Tensor decoded_absmax = must(Tensor::empty({blocks}, DType::kF32));
  check(copy_tensor(result.absmax.view(), decoded_absmax.view()));
  if (c.nested) {
    result.absmax_codes = must(Tensor::empty({blocks}, DType::kU8));
    result.nested_absmax = must(Tensor::empty(
        {(blocks + quant::kNestedBlockSize - 1) / quant::kNestedBlockSize}, DType::kF32));
    check(quant::quantize_absmax_nested(result.absmax.view(), result.absmax_codes.view(),
                                        result.nested_absmax.view(), &result.nested_offset));
    check(quant::dequantize_absmax_nested(result.absmax_codes.view(), result.nested_absmax.view(),
                                          result.nested_offset, decoded_absmax.view()));
  }
  Tensor dequantized = must(Tensor::empty({c.out, c.in}, DType::kF32));
  check(quant::dequantize_4bit(result.packed.view(), decoded_absmax.view(), c.type, c.block_size,
                               dequantized.view()));
  result.matmul_values = values_of(dequantized.view());
  for (float& v : result.matmul_values) {
    v = rounded_to(c.compute_dtype, rounded_to(c.weight_dtype, v));
  }
  return result;
}

cpu::FourBitWeight reference_weight(const FourBitCase& c, const HostFourBitWeight& weight) {
  return {weight.packed.data_as<const std::uint8_t>(),
          c.type,
          c.block_size,
          c.nested ? nullptr : weight.absmax.data_as<const float>(),
          c.nested ? weight.absmax_codes.data_as<const std::uint8_t>() : nullptr,
          c.nested ? weight.nested_absmax.data_as<const float>() : nullptr,
          weight.nested_offset,
          c.weight_dtype};
}

// The device copies of a HostFourBitWeight.
struct DeviceFourBitWeight {
  Tensor packed;
  Tensor absmax;  // f32 absmax, or the nested form's codes
  Tensor nested_absmax;
  Tensor rounded_absmax;  // with_rounded_absmax
  FourBitWeightDevice view{};
};

void upload_weight(const FourBitCase& c, const HostFourBitWeight& host,
                   DeviceFourBitWeight& device) {
  const auto* packed = static_cast<const std::uint8_t*>(
      upload(host.packed.view(), c.misaligned ? 1 : 0, device.packed));
  const TensorView& absmax = c.nested ? host.absmax_codes.view() : host.absmax.view();
  const void* absmax_device = upload(absmax, 0, device.absmax);
  device.view = {packed,
                 c.type,
                 c.block_size,
                 c.nested ? nullptr : static_cast<const float*>(absmax_device),
                 c.nested ? static_cast<const std::uint8_t*>(absmax_device) : nullptr,
                 c.nested ? static_cast<const float*>(
                                upload(host.nested_absmax.view(), 0, device.nested_absmax))
                          : nullptr,
                 host.nested_offset,
                 c.weight_dtype};
}

std::vector<float> rounded_all(DType dtype, std::vector<float> values) {
  for (float& v : values) v = rounded_to(dtype, v);
  return values;
}

std::vector<float> row_of(const std::vector<float>& matrix, std::int64_t row, std::int64_t cols) {
  const auto first = matrix.begin() + row * cols;
  return std::vector<float>(first, first + cols);
}

// kAuto last: `actual` below is what the library picks.
constexpr Linear4bitKernel kFourBitKernels[] = {Linear4bitKernel::kTensorCoreGemvLines,
                                                Linear4bitKernel::kTensorCoreGemv,
                                                Linear4bitKernel::kGemv,
                                                Linear4bitKernel::kTensorCoreGemm,
                                                Linear4bitKernel::kManyRows,
                                                Linear4bitKernel::kAuto};

const char* kernel_name(Linear4bitKernel kernel) {
  switch (kernel) {
    case Linear4bitKernel::kTensorCoreGemvLines:
      return "whole-line tensor-core GEMV";
    case Linear4bitKernel::kTensorCoreGemv:
      return "tensor-core GEMV";
    case Linear4bitKernel::kGemv:
      return "GEMV";
    case Linear4bitKernel::kTensorCoreGemm:
      return "tensor-core GEMM";
    case Linear4bitKernel::kManyRows:
      return "many rows";
    case Linear4bitKernel::kAuto:
      break;
  }
  return "auto";
}

// The contract of linear_launchers.h.
bool kernel_applies(const FourBitCase& c, Linear4bitKernel kernel, FourBitDecode decode) {
  const bool gemv = c.rows <= kLinear4bitGemvMaxRows;
  const bool sixteen_bit = c.compute_dtype != DType::kF32;
  const bool tensor_cores = gemv && sixteen_bit && !c.misaligned;
  switch (kernel) {
    case Linear4bitKernel::kTensorCoreGemvLines:
      return tensor_cores && c.in % 256 == 0 && c.block_size >= 64;
    case Linear4bitKernel::kTensorCoreGemv:
      return tensor_cores && c.in % 128 == 0;
    case Linear4bitKernel::kGemv:
      return gemv;
    case Linear4bitKernel::kTensorCoreGemm:
      return current_device_runs_sm90a() && sixteen_bit && !c.misaligned && c.in % 64 == 0 &&
             c.block_size >= 64 && !cpu::takes_4bit_product_decode(decode, c.rows, c.compute_dtype);
    case Linear4bitKernel::kManyRows:
    case Linear4bitKernel::kAuto:
      break;
  }
  return true;
}

// The reference, then the cast back to the activation dtype that Linear4bit does.
std::vector<float> expected_4bit_output(const FourBitCase& c, const HostFourBitWeight& weight,
                                        const std::vector<float>& x, const std::vector<float>& bias,
                                        FourBitDecode decode) {
  std::vector<float> expected(static_cast<std::size_t>(c.rows * c.out));
  const cpu::Linear4bitJob job{x.data(),
                               reference_weight(c, weight),
                               c.bias ? bias.data() : nullptr,
                               c.rows,
                               c.in,
                               c.out,
                               c.compute_dtype,
                               expected.data(),
                               decode};
  parallel_ranges(c.out, [&](std::int64_t first, std::int64_t end) {
    cpu::linear_4bit_reference(job, first, end);
  });
  return rounded_all(c.dtype, std::move(expected));
}

void check_4bit_case(const FourBitCase& c, std::uint64_t seed) {
  const HostFourBitWeight weight = quantize_weight(c, seed);
  const Tensor x_host = random_host({c.rows, c.in}, c.dtype, seed + 1, 1.0f);
  const Tensor bias_host = random_host({c.out}, c.dtype, seed + 2, 0.5f);
  const std::vector<float> x = values_of(x_host.view());
  const std::vector<float> bias = c.bias ? values_of(bias_host.view()) : std::vector<float>{};
  const std::vector<float> sums = abs_sums(rounded_all(c.compute_dtype, x), weight.matmul_values,
                                           rounded_all(c.compute_dtype, bias), c.rows, c.in, c.out);

  TestStream stream;
  const auto context = make_context(stream, c.rows, c.in, c.out);
  DeviceFourBitWeight device;
  upload_weight(c, weight, device);
  Tensor x_storage;
  Tensor bias_storage;
  const std::size_t element = dtype_size(c.dtype);
  const auto* x_device =
      static_cast<const char*>(upload(x_host.view(), c.misaligned ? element : 0, x_storage));
  const void* bias_device = c.bias ? upload(bias_host.view(), 0, bias_storage) : nullptr;
  const std::vector<DType> roundings{c.compute_dtype, c.dtype};
  std::vector<float> actual;  // the exact decode's, of kAuto (the last kernel)
  for (const FourBitDecode decode : {FourBitDecode::kExact, FourBitDecode::kBitsandbytes}) {
    const std::vector<float> expected = expected_4bit_output(c, weight, x, bias, decode);
    for (const Linear4bitKernel kernel : kFourBitKernels) {
      const std::string what = describe(c) + ", kernel " + kernel_name(kernel) + ", " +
                               (decode == FourBitDecode::kExact ? "exact" : "bitsandbytes") +
                               " decode";
      Tensor y = poisoned_device({c.rows, c.out}, c.dtype);
      const Status status =
          linear_4bit(*context, x_device, device.view, bias_device, c.rows, c.in, c.out,
                      c.compute_dtype, y.view().data(), c.dtype, decode, kernel);
      if (!kernel_applies(c, kernel, decode)) {
        EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << what;
        continue;
      }
      check(status);
      stream.synchronize();
      const std::vector<float> output = download(y);
      EXPECT_EQ(count_mismatches({c.rows, c.in, c.out, roundings}, expected, output, sums, what),
                0);
      if (decode == FourBitDecode::kExact) actual = output;
    }
  }
  if (c.rows <= kLinear4bitGemvMaxRows) return;

  // A row alone takes the GEMV kernel: it must agree with its row of the many-row path.
  for (const std::int64_t r : {std::int64_t{0}, c.rows - 1}) {
    Tensor single = poisoned_device({1, c.out}, c.dtype);
    check(linear_4bit(*context, x_device + r * c.in * element, device.view, bias_device, 1, c.in,
                      c.out, c.compute_dtype, single.view().data(), c.dtype));
    stream.synchronize();
    EXPECT_EQ(count_mismatches({1, c.in, c.out, roundings}, row_of(actual, r, c.out),
                               download(single), row_of(sums, r, c.out),
                               describe(c) + ": row " + std::to_string(r) + " alone"),
              0);
  }
}

TEST(CudaLinear4bit, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  // rows, out, in, type, block, nested, compute, activations, weight, bias, weight stddev
  const FourBitCase cases[] = {
      {1, 64, 32, kNf4, 32, false, kF32, kF32, kF32, true, 0.02f},
      {2, 64, 32, kFp4, 4096, false, kBF16, kBF16, kBF16, false, 0.02f},
      {5, 96, 160, kNf4, 32, true, kF16, kBF16, kBF16, true, 1.0f},
      {8, 96, 160, kFp4, 32, false, kBF16, kF32, kF16, true, 0.02f, true},
      {9, 96, 160, kNf4, 32, true, kF16, kF32, kBF16, true, 0.02f, true},
      {64, 64, 32, kFp4, 64, false, kF32, kBF16, kF32, true, 0.001f},
      {300, 96, 160, kNf4, 32, false, kBF16, kBF16, kBF16, true, 0.02f},
      {300, 128, 2048, kFp4, 4096, true, kF32, kF32, kBF16, true, 0.02f},
      {1, 256, 2048, kNf4, 4096, false, kBF16, kBF16, kF32, false, 0.02f},
      {1, 4096, 4096, kNf4, 64, true, kBF16, kBF16, kBF16, false, 0.02f},
      {8, 4096, 4096, kFp4, 128, false, kF16, kBF16, kF16, true, 0.02f},
      // More than one chunk of dequantized weight (kFourBitChunkElements).
      {9, 8200, 4096, kNf4, 64, true, kBF16, kF32, kBF16, true, 0.02f},
      {5, 1024, 14336, kNf4, 64, true, kBF16, kBF16, kBF16, true, 0.02f},
      {2, 32000, 512, kNf4, 64, false, kF32, kF32, kF32, false, 0.02f},
      {9, 32000, 512, kFp4, 128, true, kBF16, kBF16, kBF16, true, 0.02f},
      // The tensor-core GEMV: features not a multiple of its 16, f32 activations, f16 weights
      // under bf16 compute, blocks spanning rows, misaligned (which it declines).
      {3, 100, 256, kNf4, 64, false, kBF16, kF32, kBF16, true, 0.02f},
      {7, 4100, 1024, kFp4, 64, true, kBF16, kBF16, kF16, true, 1.0f},
      {1, 40, 128, kNf4, 256, true, kF16, kF32, kF32, false, 0.02f},
      {4, 48, 256, kNf4, 64, false, kBF16, kBF16, kBF16, false, 0.02f, true},
      // The tensor-core GEMM: tokens and features past a block's last (128 each), as few steps
      // of 64 inputs as the pipeline has stages and more, f16 compute, f32 activations
      // (converted first), f16 and f32 weights, blocks spanning rows.
      {260, 384, 1024, kNf4, 64, true, kBF16, kBF16, kBF16, true, 0.02f},
      {130, 200, 192, kFp4, 64, false, kF16, kF32, kBF16, true, 1.0f},
      {1000, 136, 512, kNf4, 256, false, kBF16, kBF16, kF32, false, 0.02f},
      {17, 520, 2048, kNf4, 4096, true, kF16, kBF16, kF16, true, 0.02f},
  };
  std::uint64_t seed = 1000;
  for (const FourBitCase& c : cases) {
    SCOPED_TRACE(describe(c));
    check_4bit_case(c, seed);
    seed += 10;
  }
}

// A plain NF4 weight (block 64, bf16) over poisoned device memory: for calls that must be refused
// before a kernel reads it.
FourBitWeightDevice placeholder_weight(const Tensor& buffer) {
  return {buffer.data_as<const std::uint8_t>(),
          FourBitType::kNf4,
          64,
          buffer.data_as<const float>(),
          nullptr,
          nullptr,
          0.0f,
          DType::kBF16};
}

TEST(CudaLinear4bit, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 16, 64, 64);
  Tensor buffer = poisoned_device({64 * 64}, DType::kF32);
  float* data = buffer.data_as<float>();
  const auto* bytes = buffer.data_as<const std::uint8_t>();
  const FourBitWeightDevice plain = placeholder_weight(buffer);
  const auto call = [&](const FourBitWeightDevice& weight, std::int64_t rows, std::int64_t in,
                        DType dtype) {
    return linear_4bit(*context, data, weight, nullptr, rows, in, 64, DType::kBF16, data, dtype)
        .code();
  };
  EXPECT_EQ(call(plain, 1, 64, DType::kF16), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(plain, 1, 48, DType::kF32), StatusCode::kInvalidArgument);  // in % 32 != 0
  FourBitWeightDevice straddling = plain;
  straddling.block_size = 128;
  EXPECT_EQ(call(straddling, 1, 96, DType::kF32), StatusCode::kInvalidArgument);
  FourBitWeightDevice both_forms = plain;
  both_forms.absmax_codes = bytes;
  both_forms.nested_absmax = data;
  EXPECT_EQ(call(both_forms, 1, 64, DType::kF32), StatusCode::kInvalidArgument);
  // A rounded absmax is of a 16-bit compute dtype, and round_4bit_absmax makes no other.
  FourBitWeightDevice rounded_f32 = plain;
  rounded_f32.rounded_absmax = data;
  rounded_f32.rounded_absmax_dtype = DType::kF32;
  EXPECT_EQ(call(rounded_f32, 1, 64, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(round_4bit_absmax(plain, 64, 64, DType::kF32, data, stream.get()).code(),
            StatusCode::kInvalidArgument);
  // More rows than the context's workspace was made for.
  EXPECT_EQ(call(plain, 4096, 64, DType::kF32), StatusCode::kInvalidArgument);
  // No rows: nothing to do.
  EXPECT_EQ(call(plain, 0, 64, DType::kF32), StatusCode::kOk);
}

// ---- The decode-tile layout (kbit/quant/decode_tiles.h).

// `host`'s weight in the decode tiles, on the device.
DeviceFourBitWeight upload_tiled_weight(const FourBitCase& c, const HostFourBitWeight& host) {
  HostFourBitWeight tiled;
  tiled.packed = must(Tensor::empty(host.packed.shape(), DType::kU8));
  const Tensor& absmax = c.nested ? host.absmax_codes : host.absmax;
  Tensor tiled_absmax = must(Tensor::empty(absmax.shape(), absmax.dtype()));
  check(quant::tile_4bit_for_decode(host.packed.view(), absmax.view(), c.out, c.in,
                                    tiled.packed.view(), tiled_absmax.view()));
  (c.nested ? tiled.absmax_codes : tiled.absmax) = std::move(tiled_absmax);
  if (c.nested) {
    tiled.nested_absmax = must(Tensor::empty(host.nested_absmax.shape(), DType::kF32));
    check(copy_tensor(host.nested_absmax.view(), tiled.nested_absmax.view()));
  }
  tiled.nested_offset = host.nested_offset;
  DeviceFourBitWeight device;
  upload_weight(c, tiled, device);
  device.view.layout = quant::FourBitLayout::kDecodeTiles;
  return device;
}

// `weight` with its absmax rounded to compute_dtype (round_4bit_absmax), which the tensor-core
// GEMV's product decode reads in place of the absmax.
DeviceFourBitWeight with_rounded_absmax(DeviceFourBitWeight weight, std::int64_t out,
                                        std::int64_t in, DType compute_dtype, cudaStream_t stream) {
  weight.rounded_absmax = poisoned_device({out * in / weight.view.block_size}, compute_dtype);
  check(round_4bit_absmax(weight.view, out, in, compute_dtype, weight.rounded_absmax.view().data(),
                          stream));
  weight.view.rounded_absmax = weight.rounded_absmax.view().data();
  weight.view.rounded_absmax_dtype = compute_dtype;
  return weight;
}

// The same weight in the decode tiles gives the bits of bitsandbytes' layout through every
// kernel: the tiles move bytes, not sums. So does it with its absmax rounded to the compute
// dtype (plain or nested), which only the product decode reads. Whole lines (one row) and half
// lines, the CUDA-core GEMV, the GEMM and the dequantized chunks, plain and nested absmax, both
// decodes.
TEST(CudaLinear4bit, DecodeTilesGiveTheSameBits) {
  KBIT_REQUIRE_CUDA();
  // rows, out, in, type, block, nested, compute, activations, weight, bias, weight stddev
  const FourBitCase cases[] = {
      {1, 64, 256, kNf4, 64, false, kBF16, kBF16, kBF16, false, 0.02f},
      {1, 4096, 4096, kNf4, 64, true, kBF16, kBF16, kBF16, false, 0.02f},
      {1, 48, 14336, kFp4, 64, false, kF16, kF32, kF16, true, 1.0f},
      {3, 96, 768, kNf4, 64, true, kBF16, kBF16, kBF16, true, 0.02f},
      {8, 1024, 1280, kNf4, 64, false, kF16, kBF16, kBF16, false, 0.02f},
      {5, 32, 512, kFp4, 64, true, kBF16, kF32, kF32, false, 0.02f},
      {2, 64, 256, kNf4, 64, true, kF32, kF32, kF32, false, 0.02f},  // f32: dequantized chunks
      {40, 272, 1024, kNf4, 64, true, kBF16, kBF16, kBF16, true, 0.02f},
      {300, 128, 2304, kFp4, 64, false, kF16, kF32, kBF16, false, 0.02f},
  };
  std::uint64_t seed = 7000;
  for (const FourBitCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const HostFourBitWeight host = quantize_weight(c, seed);
    DeviceFourBitWeight plain;
    upload_weight(c, host, plain);
    TestStream stream;
    std::vector<DeviceFourBitWeight> tiled;
    tiled.push_back(upload_tiled_weight(c, host));
    if (c.compute_dtype != DType::kF32) {
      tiled.push_back(with_rounded_absmax(upload_tiled_weight(c, host), c.out, c.in,
                                          c.compute_dtype, stream.get()));
    }
    const auto context = make_context(stream, c.rows, c.in, c.out);
    Tensor x_storage;
    Tensor bias_storage;
    const void* x =
        upload(random_host({c.rows, c.in}, c.dtype, seed + 1, 1.0f).view(), 0, x_storage);
    const void* bias =
        c.bias ? upload(random_host({c.out}, c.dtype, seed + 2, 0.5f).view(), 0, bias_storage)
               : nullptr;
    for (const Linear4bitKernel kernel :
         {Linear4bitKernel::kAuto, Linear4bitKernel::kTensorCoreGemvLines,
          Linear4bitKernel::kTensorCoreGemv, Linear4bitKernel::kGemv,
          Linear4bitKernel::kTensorCoreGemm, Linear4bitKernel::kManyRows}) {
      for (const FourBitDecode decode : {FourBitDecode::kExact, FourBitDecode::kBitsandbytes}) {
        if (kernel != Linear4bitKernel::kAuto && !kernel_applies(c, kernel, decode)) continue;
        SCOPED_TRACE(kernel_name(kernel));
        Tensor expected = poisoned_device({c.rows, c.out}, c.dtype);
        check(linear_4bit(*context, x, plain.view, bias, c.rows, c.in, c.out, c.compute_dtype,
                          expected.view().data(), c.dtype, decode, kernel));
        stream.synchronize();
        const std::vector<float> want = download(expected);
        for (const DeviceFourBitWeight& weight : tiled) {
          const bool rounded = weight.view.rounded_absmax != nullptr;
          // At one row kAuto takes half lines for a rounded absmax where bitsandbytes' layout
          // takes whole ones (whole_lines_preferred), which sum in another order.
          if (rounded && kernel == Linear4bitKernel::kAuto) continue;
          SCOPED_TRACE(rounded ? "rounded absmax" : "tiles");
          Tensor actual = poisoned_device({c.rows, c.out}, c.dtype);
          check(linear_4bit(*context, x, weight.view, bias, c.rows, c.in, c.out, c.compute_dtype,
                            actual.view().data(), c.dtype, decode, kernel));
          stream.synchronize();
          const std::vector<float> got = download(actual);
          EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0);
        }
      }
    }
    Tensor expected = poisoned_device({c.out, c.in}, c.compute_dtype);
    Tensor actual = poisoned_device({c.out, c.in}, c.compute_dtype);
    check(dequantize_4bit_weight(plain.view, c.out, c.in, c.compute_dtype, expected.view().data(),
                                 stream.get()));
    check(dequantize_4bit_weight(tiled.front().view, c.out, c.in, c.compute_dtype,
                                 actual.view().data(), stream.get()));
    stream.synchronize();
    EXPECT_EQ(download(expected), download(actual)) << "dequantize_4bit_weight";
    seed += 10;
  }
}

// Fused q, k and v (and gate and up) in the decode tiles give the bits of the same fused call in
// bitsandbytes' layout, with and without their absmax rounded to the compute dtype.
TEST(CudaLinear4bitLayers, DecodeTilesGiveTheSameBits) {
  KBIT_REQUIRE_CUDA();
  for (const LinearEpilogue epilogue : {LinearEpilogue::kStore, LinearEpilogue::kSiluMul}) {
    const std::vector<std::int64_t> outs = epilogue == LinearEpilogue::kStore
                                               ? std::vector<std::int64_t>{256, 64, 64}
                                               : std::vector<std::int64_t>{512, 512};
    // rows (8: split lookups, kSplitLookupMinRows), the absmax rounded (from 2 rows, where both
    // layouts take half lines: at one row the rounded form takes half lines and bitsandbytes'
    // layout whole ones, which sum in another order)
    const std::pair<std::int64_t, bool> runs[] = {{1, false}, {4, false}, {8, false},
                                                  {2, true},  {4, true},  {8, true}};
    for (const auto& [rows, rounded] : runs) {
      SCOPED_TRACE(describe_layers(rows, 1024, outs.size(), epilogue) +
                   (rounded ? ", rounded absmax" : ""));
      TestStream stream;
      const auto context = make_context(stream, rows, 1024, 512);
      Tensor x_storage;
      const void* x =
          upload(random_host({rows, 1024}, kBF16, 7100 + rows, 1.0f).view(), 0, x_storage);
      std::vector<DeviceFourBitWeight> plain(outs.size());
      std::vector<DeviceFourBitWeight> tiled;
      std::vector<Tensor> expected;
      std::vector<Tensor> actual;
      std::vector<FourBitLayer> plain_layers;
      std::vector<FourBitLayer> tiled_layers;
      for (std::size_t i = 0; i < outs.size(); ++i) {
        const FourBitCase c{rows,  outs[i], 1024,  kNf4,  64,   i % 2 == 0,
                            kBF16, kBF16,   kBF16, false, 0.02f};
        const HostFourBitWeight host = quantize_weight(c, 7200 + 10 * i);
        upload_weight(c, host, plain[i]);
        tiled.push_back(rounded ? with_rounded_absmax(upload_tiled_weight(c, host), outs[i], 1024,
                                                      kBF16, stream.get())
                                : upload_tiled_weight(c, host));
        expected.push_back(poisoned_device({rows, outs[i]}, kBF16));
        actual.push_back(poisoned_device({rows, outs[i]}, kBF16));
      }
      for (std::size_t i = 0; i < outs.size(); ++i) {
        plain_layers.push_back({plain[i].view, nullptr, outs[i], expected[i].view().data()});
        tiled_layers.push_back({tiled[i].view, nullptr, outs[i], actual[i].view().data()});
      }
      check(linear_4bit_layers(*context, x, plain_layers, rows, 1024, kBF16, kBF16,
                               FourBitDecode::kBitsandbytes, epilogue));
      check(linear_4bit_layers(*context, x, tiled_layers, rows, 1024, kBF16, kBF16,
                               FourBitDecode::kBitsandbytes, epilogue));
      stream.synchronize();
      const std::size_t stored = epilogue == LinearEpilogue::kSiluMul ? 1 : outs.size();
      for (std::size_t i = 0; i < stored; ++i) {
        const std::vector<float> want = download(expected[i]);
        const std::vector<float> got = download(actual[i]);
        EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
            << "layer " << i;
      }
    }
  }
}

// Only the decode tiles' shapes take them (out a multiple of 16, in of 256, blocks of 64).
TEST(CudaLinear4bit, DecodeTilesRefuseOtherShapes) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 16, 256, 64);
  Tensor buffer = poisoned_device({256 * 64}, DType::kF32);
  float* data = buffer.data_as<float>();
  FourBitWeightDevice tiled = placeholder_weight(buffer);
  tiled.layout = quant::FourBitLayout::kDecodeTiles;
  const auto call = [&](std::int64_t rows, std::int64_t out, Linear4bitKernel kernel) {
    return linear_4bit(*context, data, tiled, nullptr, rows, 256, out, DType::kBF16, data,
                       DType::kBF16, FourBitDecode::kExact, kernel)
        .code();
  };
  EXPECT_EQ(call(1, 40, Linear4bitKernel::kAuto), StatusCode::kInvalidArgument);  // out % 16
  EXPECT_EQ(call(1, 40, Linear4bitKernel::kGemv), StatusCode::kInvalidArgument);
  FourBitWeightDevice other_blocks = tiled;
  other_blocks.block_size = 128;
  EXPECT_EQ(linear_4bit(*context, data, other_blocks, nullptr, 1, 256, 64, DType::kBF16, data,
                        DType::kBF16)
                .code(),
            StatusCode::kInvalidArgument);
}

// ---- linear_4bit_backward_input.

// dx = dy · W on the CPU: dy rounded to the compute dtype times the weight as the matmul sees it
// (through the CPU linear kernel with Wᵀ as its weight), and the Σ|dy|·|W| of each output.
struct InputGradientReference {
  std::vector<float> dx;    // [rows, in], rounded to the activation dtype
  std::vector<float> sums;  // [rows, in]
};

InputGradientReference input_gradient_reference(const FourBitCase& c,
                                                const HostFourBitWeight& weight,
                                                const std::vector<float>& dy) {
  std::vector<float> transposed(weight.matmul_values.size());
  for (std::int64_t o = 0; o < c.out; ++o) {
    for (std::int64_t i = 0; i < c.in; ++i) {
      transposed[static_cast<std::size_t>(i * c.out + o)] =
          weight.matmul_values[static_cast<std::size_t>(o * c.in + i)];
    }
  }
  const std::vector<float> dy_compute = rounded_all(c.compute_dtype, dy);
  InputGradientReference reference;
  reference.dx.resize(static_cast<std::size_t>(c.rows * c.in));
  const cpu::LinearJob job{
      dy_compute.data(),  transposed.data(), DType::kF32, nullptr, c.rows, c.out, c.in,
      reference.dx.data()};
  cpu::linear_op(job, ExecutionOptions{});
  reference.dx = rounded_all(c.dtype, std::move(reference.dx));
  reference.sums = abs_sums(dy_compute, transposed, {}, c.rows, c.out, c.in);
  return reference;
}

void check_input_gradient_case(const FourBitCase& c, std::uint64_t seed) {
  const HostFourBitWeight weight = quantize_weight(c, seed);
  const Tensor dy_host = random_host({c.rows, c.out}, c.dtype, seed + 1, 1.0f);
  const InputGradientReference reference =
      input_gradient_reference(c, weight, values_of(dy_host.view()));

  TestStream stream;
  const LinearContext::CallShape shape{c.rows, c.in, c.out, /*input_gradient=*/true};
  const auto context = must(
      LinearContext::create(stream.get(), std::span<const LinearContext::CallShape>(&shape, 1)));
  DeviceFourBitWeight device;
  upload_weight(c, weight, device);
  Tensor dy_storage;
  const void* dy_device =
      upload(dy_host.view(), c.misaligned ? dtype_size(c.dtype) : 0, dy_storage);
  Tensor dx = poisoned_device({c.rows, c.in}, c.dtype);
  check(linear_4bit_backward_input(*context, dy_device, device.view, c.rows, c.in, c.out,
                                   c.compute_dtype, dx.view().data(), c.dtype));
  stream.synchronize();
  // K = out terms per sum, rounded once to the activation dtype (the compute dtype's roundings of
  // dy and W are in the reference's inputs).
  const Comparison comparison{c.rows, c.out, c.in, {c.dtype}};
  EXPECT_EQ(count_mismatches(comparison, reference.dx, download(dx), reference.sums, describe(c)),
            0);
}

TEST(CudaLinear4bitInputGradient, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  // rows, out, in, type, block, nested, compute, activations, weight, bias (unused), stddev
  const FourBitCase cases[] = {
      {1, 64, 32, kNf4, 32, false, kF32, kF32, kF32, false, 0.02f},
      {300, 96, 160, kNf4, 32, false, kBF16, kBF16, kBF16, false, 0.02f},
      {9, 96, 160, kFp4, 32, true, kF16, kBF16, kF16, false, 1.0f, true},
      // Several chunks of dequantized weight (kFourBitChunkElements): f32 dx takes the sums,
      // bf16 dx their rounding.
      {64, 8200, 4096, kNf4, 64, true, kBF16, kF32, kBF16, false, 0.02f},
      {17, 8192, 4096, kNf4, 64, false, kBF16, kBF16, kBF16, false, 0.02f},
      // The shapes of a Llama-3.1-8B MLP: down's input gradient (in 14336) and up's (out 14336).
      {33, 4096, 14336, kNf4, 64, true, kBF16, kBF16, kBF16, false, 0.02f},
      {33, 14336, 4096, kFp4, 128, true, kBF16, kBF16, kBF16, false, 0.02f},
  };
  std::uint64_t seed = 5000;
  for (const FourBitCase& c : cases) {
    SCOPED_TRACE(describe(c));
    check_input_gradient_case(c, seed);
    seed += 10;
  }
}

TEST(CudaLinear4bitInputGradient, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  // A context for the forward call of the shape: too small for its input gradient.
  const auto context = make_context(stream, 1024, 32, 64);
  Tensor buffer = poisoned_device({1024 * 64}, DType::kF32);
  float* data = buffer.data_as<float>();
  const FourBitWeightDevice plain = placeholder_weight(buffer);
  const auto call = [&](std::int64_t rows, std::int64_t in, DType dtype) {
    return linear_4bit_backward_input(*context, data, plain, rows, in, 64, DType::kBF16, data,
                                      dtype)
        .code();
  };
  EXPECT_EQ(call(1024, 32, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(1, 32, DType::kF16), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(1, 48, DType::kF32), StatusCode::kInvalidArgument);  // in % 32 != 0
  EXPECT_EQ(call(0, 32, DType::kF32), StatusCode::kOk);
}

// ---- dequantize_4bit_weight.

// The whole weight as the matmul sees it (HostFourBitWeight::matmul_values: the CPU's dequantized
// values rounded to the weight dtype, then to the compute dtype), bit for bit, on a poisoned
// output; sizes whose words do not fill the kernel's last block included.
TEST(CudaDequantize4bitWeight, EqualsTheMatmulValues) {
  KBIT_REQUIRE_CUDA();
  // rows (unused), out, in, type, block, nested, compute, activations (unused), weight, bias
  // (unused), stddev
  const FourBitCase cases[] = {
      {1, 37, 96, kNf4, 32, false, kF32, kF32, kF32, false, 0.02f},
      {1, 96, 160, kFp4, 32, true, kBF16, kBF16, kBF16, false, 1.0f},
      {1, 300, 256, kNf4, 64, true, kF16, kBF16, kF16, false, 0.02f},
      {1, 1024, 4096, kNf4, 64, true, kBF16, kBF16, kBF16, false, 0.02f},
  };
  std::uint64_t seed = 6000;
  for (const FourBitCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const HostFourBitWeight weight = quantize_weight(c, seed);
    seed += 10;
    DeviceFourBitWeight device;
    upload_weight(c, weight, device);
    TestStream stream;
    Tensor output = poisoned_device({c.out, c.in}, c.compute_dtype);
    check(dequantize_4bit_weight(device.view, c.out, c.in, c.compute_dtype, output.view().data(),
                                 stream.get()));
    stream.synchronize();
    const std::vector<float> got = download(output);
    ASSERT_EQ(got.size(), weight.matmul_values.size());
    std::int64_t mismatches = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      mismatches += std::bit_cast<std::uint32_t>(got[i]) !=
                    std::bit_cast<std::uint32_t>(weight.matmul_values[i]);
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(CudaDequantize4bitWeight, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  Tensor buffer = poisoned_device({1024 * 64}, DType::kF32);
  const FourBitWeightDevice plain = placeholder_weight(buffer);
  auto* bytes = static_cast<std::byte*>(buffer.view().data());
  const auto call = [&](std::int64_t in, DType compute, void* output) {
    return dequantize_4bit_weight(plain, 64, in, compute, output, stream.get()).code();
  };
  EXPECT_EQ(call(32, DType::kBF16, nullptr), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(32, DType::kBF16, bytes + 2), StatusCode::kInvalidArgument);  // unaligned
  EXPECT_EQ(call(48, DType::kBF16, bytes), StatusCode::kInvalidArgument);      // in % 32 != 0
  EXPECT_EQ(call(32, DType::kU8, bytes), StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
}

// ---- linear_4bit_layers.

struct LayersCase {
  std::int64_t rows;
  std::int64_t in;
  std::vector<std::int64_t> outs;
  LinearEpilogue epilogue;
  FourBitType type;
  std::int64_t block_size;
  bool nested;
  DType compute_dtype;
  DType dtype;  // activations
  bool bias;
  FourBitDecode decode;
  std::vector<FourBitType> types = {};     // per layer where they differ (which falls back)
  std::vector<bool> nested_by_layer = {};  // likewise for the absmax form
};

// The layers in one launch give the bits of one linear_4bit call per layer (and silu_mul after
// gate and up): the fused kernel sums each layer as the single-layer kernel does.
void check_layers_case(const LayersCase& c, std::uint64_t seed) {
  TestStream stream;
  const std::int64_t widest = *std::max_element(c.outs.begin(), c.outs.end());
  const auto context = make_context(stream, c.rows, c.in, widest);
  const Tensor x_host = random_host({c.rows, c.in}, c.dtype, seed, 1.0f);
  Tensor x_storage;
  const void* x = upload(x_host.view(), 0, x_storage);
  const std::size_t count = c.outs.size();
  std::vector<DeviceFourBitWeight> weights(count);
  std::vector<Tensor> bias_storage(count);
  std::vector<Tensor> expected;
  std::vector<Tensor> actual;
  std::vector<FourBitLayer> layers;
  for (std::size_t i = 0; i < count; ++i) {
    const FourBitType type = c.types.empty() ? c.type : c.types[i];
    const bool nested = c.nested_by_layer.empty() ? c.nested : c.nested_by_layer[i];
    const FourBitCase layer{c.rows,          c.outs[i], c.in,    type,   c.block_size, nested,
                            c.compute_dtype, c.dtype,   c.dtype, c.bias, 0.02f};
    upload_weight(layer, quantize_weight(layer, seed + 10 * (i + 1)), weights[i]);
    const void* bias =
        c.bias ? upload(random_host({c.outs[i]}, c.dtype, seed + 10 * i + 5, 0.5f).view(), 0,
                        bias_storage[i])
               : nullptr;
    expected.push_back(poisoned_device({c.rows, c.outs[i]}, c.dtype));
    actual.push_back(poisoned_device({c.rows, c.outs[i]}, c.dtype));
    check(linear_4bit(*context, x, weights[i].view, bias, c.rows, c.in, c.outs[i], c.compute_dtype,
                      expected[i].view().data(), c.dtype, c.decode));
    layers.push_back({weights[i].view, bias, c.outs[i], actual[i].view().data()});
  }
  const bool silu = c.epilogue == LinearEpilogue::kSiluMul;
  if (silu) {
    check_cuda(silu_mul(expected[0].view().data(), expected[1].view().data(), c.rows * c.outs[0],
                        c.dtype, stream.get()),
               "silu_mul");
  }
  check(linear_4bit_layers(*context, x, layers, c.rows, c.in, c.compute_dtype, c.dtype, c.decode,
                           c.epilogue));
  stream.synchronize();
  expect_fused_outputs_equal(expected, actual, silu);
}

TEST(CudaLinear4bitLayers, MatchSeparateCalls) {
  KBIT_REQUIRE_CUDA();
  constexpr auto kStore = LinearEpilogue::kStore;
  constexpr auto kSiluMul = LinearEpilogue::kSiluMul;
  constexpr auto kBnb = FourBitDecode::kBitsandbytes;
  constexpr auto kExact = FourBitDecode::kExact;
  const LayersCase cases[] = {
      // q, k and v of a GQA shape: whole lines, then half lines (in % 256 != 0), then several
      // rows with the exact decode, f32 activations and a bias.
      {1, 512, {100, 32, 48}, kStore, kNf4, 64, true, DType::kBF16, DType::kBF16, false, kBnb},
      {5, 384, {64, 16, 16}, kStore, kFp4, 32, false, DType::kF16, DType::kF32, true, kExact},
      {8, 1024, {256, 64, 64}, kStore, kNf4, 128, false, DType::kBF16, DType::kBF16, true, kBnb},
      // gate and up with silu_mul.
      {1, 1024, {200, 200}, kSiluMul, kNf4, 64, true, DType::kBF16, DType::kBF16, false, kBnb},
      {7, 256, {48, 48}, kSiluMul, kFp4, 64, false, DType::kBF16, DType::kF32, true, kExact},
      // Inputs long enough for 16 warps a block: whole lines, then half lines.
      {1, 12288, {48, 16, 16}, kStore, kNf4, 64, true, DType::kBF16, DType::kBF16, true, kBnb},
      {6, 12288, {64, 64}, kSiluMul, kNf4, 64, false, DType::kBF16, DType::kBF16, false, kExact},
      // Falling back to one call per layer: an f32 compute dtype, 9 rows, mixed code types, mixed
      // absmax forms.
      {3, 256, {40, 24, 24}, kStore, kNf4, 64, false, DType::kF32, DType::kF32, true, kExact},
      {9, 256, {32, 32}, kSiluMul, kNf4, 64, true, DType::kBF16, DType::kBF16, false, kBnb},
      {2,
       512,
       {64, 32},
       kStore,
       kNf4,
       64,
       false,
       DType::kBF16,
       DType::kBF16,
       false,
       kBnb,
       {kNf4, kFp4}},
      {1,
       512,
       {64, 32, 32},
       kStore,
       kNf4,
       64,
       false,
       DType::kBF16,
       DType::kBF16,
       false,
       kBnb,
       {},
       {false, true, false}},
  };
  std::uint64_t seed = 5000;
  for (const LayersCase& c : cases) {
    SCOPED_TRACE(describe_layers(c.rows, c.in, c.outs.size(), c.epilogue));
    check_layers_case(c, seed);
    seed += 100;
  }
}

TEST(CudaLinear4bitLayers, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  const auto context = make_context(stream, 1, 64, 64);
  Tensor buffer = poisoned_device({64 * 64}, DType::kF32);
  float* data = buffer.data_as<float>();
  const FourBitWeightDevice weight = placeholder_weight(buffer);
  const FourBitLayer layer{weight, nullptr, 64, data};
  const FourBitLayer narrow{weight, nullptr, 32, data};
  const auto call = [&](std::vector<FourBitLayer> layers, LinearEpilogue epilogue) {
    return linear_4bit_layers(*context, data, layers, 1, 64, DType::kBF16, DType::kBF16,
                              FourBitDecode::kExact, epilogue)
        .code();
  };
  EXPECT_EQ(call({}, LinearEpilogue::kStore), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, layer, layer, layer}, LinearEpilogue::kStore),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer}, LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, narrow}, LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  FourBitLayer bad = layer;
  bad.weight.block_size = 48;
  EXPECT_EQ(call({layer, bad}, LinearEpilogue::kStore), StatusCode::kInvalidArgument);
}

// ---- LinearContext and the workspace layout.

// The 4-bit path's chunks of dequantized weight: the Llama-3.1-8B MLP's in two equal halves of
// whole 64-row groups in bf16 (four in f32), a weight that fits in one, one row at least.
TEST(CudaLinearContext, FourBitChunksAreEven) {
  EXPECT_EQ(four_bit_chunk_out(4096, 14336, 2), 7168);
  EXPECT_EQ(four_bit_chunk_out(14336, 4096, 2), 2048);
  EXPECT_EQ(four_bit_chunk_out(4096, 14336, 4), 3584);
  EXPECT_EQ(four_bit_chunk_out(14336, 4096, 4), 1024);
  EXPECT_EQ(four_bit_chunk_out(4096, 4096, 2), 4096);
  EXPECT_EQ(four_bit_chunk_out(4096, 8200, 2), 4160);  // 8 200 rows: two chunks of 65 · 64
  EXPECT_EQ(four_bit_chunk_out(std::int64_t{1} << 26, 3, 2), 1);
}

TEST(CudaLinearContext, WorkspaceLayoutKeepsRegionsApart) {
  KBIT_REQUIRE_CUDA();
  struct Sizes {
    std::int64_t rows, in, out;
  };
  const Sizes sizes[] = {{1, 32, 1},         {9, 160, 96},      {512, 4096, 14336},
                         {512, 14336, 4096}, {512, 4160, 4096}, {1, 1 << 25, 2}};
  for (const Sizes& s : sizes) {
    SCOPED_TRACE(std::to_string(s.rows) + " rows, " + std::to_string(s.in) + " in, " +
                 std::to_string(s.out) + " out");
    const LinearWorkspaceLayout l = linear_workspace_layout(s.rows, s.in, s.out);
    const auto bytes = [](std::int64_t n) { return static_cast<std::size_t>(n); };
    // Each region holds its contents before the next begins; both families end within total.
    const std::size_t four_bit[] = {
        kLinearCublasWorkspaceBytes,
        l.four_bit_weight_chunk,
        l.four_bit_weight_chunk + bytes(four_bit_chunk_out(s.in, s.out, 4) * s.in) * 4,
        l.four_bit_x,
        l.four_bit_x + bytes(s.rows * s.in) * 4,
        l.gemm_output,
        l.gemm_output + bytes(s.rows * s.out) * 4,
        l.total_bytes};
    const std::size_t int8[] = {kLinearCublasWorkspaceBytes,
                                l.int8_codes,
                                l.int8_codes + bytes(s.rows * s.in),
                                l.int8_row_absmax,
                                l.int8_row_absmax + bytes(s.rows) * 4,
                                l.int8_outlier_mask,
                                l.int8_outlier_mask + bytes(s.in),
                                l.int8_outlier_columns,
                                l.int8_outlier_columns + bytes(s.in) * 4,
                                l.int8_outlier_count,
                                l.int8_outlier_count + 4,
                                l.int32_output,
                                l.int32_output + bytes(s.rows * s.out) * 4,
                                l.total_bytes};
    EXPECT_TRUE(std::is_sorted(std::begin(four_bit), std::end(four_bit)));
    EXPECT_TRUE(std::is_sorted(std::begin(int8), std::end(int8)));
    for (const std::size_t offset :
         {l.four_bit_weight_chunk, l.four_bit_x, l.gemm_output, l.int8_codes, l.int8_row_absmax,
          l.int8_outlier_mask, l.int8_outlier_columns, l.int8_outlier_count, l.int32_output}) {
      EXPECT_EQ(offset % 256, 0u);
    }
    EXPECT_EQ(l.cublas_workspace, 0u);
    for (const std::size_t element_bytes : {2, 4}) {
      const std::int64_t chunk_out = four_bit_chunk_out(s.in, s.out, element_bytes);
      EXPECT_GE(chunk_out, 1);
      EXPECT_LE(chunk_out, s.out);
      EXPECT_LE(l.four_bit_weight_chunk + bytes(chunk_out * s.in) * element_bytes, l.four_bit_x);
    }
    // A call no larger in any size fits in the same bytes at offsets no larger.
    const LinearWorkspaceLayout smaller = linear_workspace_layout(
        std::max<std::int64_t>(s.rows / 2, 1), std::max<std::int64_t>(s.in - 32, 32),
        std::max<std::int64_t>(s.out - 1, 1));
    EXPECT_LE(smaller.total_bytes, l.total_bytes);
    EXPECT_LE(smaller.gemm_output, l.gemm_output);
    EXPECT_LE(smaller.int32_output, l.int32_output);
    EXPECT_EQ(LinearContext::workspace_bytes_for(s.rows, s.in, s.out), l.total_bytes);
  }
}

TEST(CudaLinearContext, OutOfMemorySaysHowMuch) {
  KBIT_REQUIRE_CUDA();
  TestStream stream;
  // 2^20 rows × 2^16 outputs × 4 bytes alone is 256 GiB.
  const Result<std::unique_ptr<LinearContext>> context = LinearContext::create(
      stream.get(), std::int64_t{1} << 20, std::int64_t{1} << 14, std::int64_t{1} << 16);
  ASSERT_FALSE(context.ok());
  EXPECT_EQ(context.status().code(), StatusCode::kOutOfMemory);
  const std::string message = context.status().message();
  EXPECT_NE(message.find("MiB"), std::string::npos) << message;
  EXPECT_NE(message.find("free"), std::string::npos) << message;
  EXPECT_NE(message.find("shorter prompt chunk"), std::string::npos) << message;
  // The failed allocation must not linger as the last CUDA error.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const auto usable = make_context(stream, 1, 32, 32);
  EXPECT_GE(usable->workspace_bytes(), LinearContext::workspace_bytes_for(1, 32, 32));
}

}  // namespace
}  // namespace kbit::kernels::cuda
