// GPU tests of linear_int8 and linear_int8_layers (kernels/cuda/linear_launchers.h), and of
// add_rms_norm's quantization of a decode row for them (llama_launchers.h), against
// linear_int8_reference (kernels/cpu/quantized_linear.h), on fresh random data:
//   - without outlier columns (threshold 0, or no value reaching it) every output equals the
//     reference bit for bit: the int32 products are exact and steps 6-7 are the same float
//     operations;
//   - with outlier columns, every output lies within the bound that the order of the outlier
//     columns' f32 sum allows (outlier_tolerance derives it).
// Weights are the CPU's int8 row-wise quantization of N(0, 0.02) values; activations are N(0, 1)
// with planted outlier features. The output and the context's workspace are poisoned (0xAB bytes)
// before each call, so an output left unwritten, or scratch read before it is written, shows.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/int8_rowwise.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/int8_quantized_row.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_launchers.h"
#include "testing/shared_data.h"

namespace kbit {
namespace {

namespace cpu = kernels::cpu;
namespace kc = kernels::cuda;

// ---- Helpers. Failures of the plumbing throw; GoogleTest reports them as test failures.

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.to_string());
}

template <typename T>
T must(Result<T> result) {
  check(result.status());
  return std::move(result).value();
}

void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
  }
}

Tensor host_tensor(Shape shape, DType dtype) {
  return must(Tensor::empty(shape, dtype));
}

Tensor to_device(const TensorView& host) {
  Tensor tensor = must(Tensor::empty(host.shape(), host.dtype(), Device::cuda(0)));
  check(copy_tensor(host, tensor.view()));
  return tensor;
}

Tensor to_host(const TensorView& device) {
  Tensor tensor = host_tensor(device.shape(), device.dtype());
  check(copy_tensor(device, tensor.view()));
  return tensor;
}

// A device tensor whose bytes are all 0xAB.
Tensor poisoned_device_tensor(Shape shape, DType dtype) {
  Tensor tensor = must(Tensor::empty(shape, dtype, Device::cuda(0)));
  check_cuda(cudaMemset(tensor.view().data(), 0xAB, tensor.nbytes()), "cudaMemset");
  return tensor;
}

// The elements of an f32 or bf16 host tensor as floats (exact).
std::vector<float> values_of(const TensorView& tensor) {
  std::vector<float> values(static_cast<std::size_t>(tensor.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = tensor.dtype() == DType::kF32 ? tensor.data_as<float>()[i]
                                              : bf16_to_f32(tensor.data_as<bf16>()[i]);
  }
  return values;
}

void set_value(const TensorView& tensor, std::int64_t i, float value) {
  if (tensor.dtype() == DType::kF32) {
    tensor.data_as<float>()[i] = value;
  } else {
    tensor.data_as<bf16>()[i] = f32_to_bf16(value);
  }
}

float rounded_to(DType dtype, float value) {
  return dtype == DType::kF32 ? value : bf16_to_f32(f32_to_bf16(value));
}

// A CUDA stream and a LinearContext on it, released in that order's reverse.
class LinearSetup {
 public:
  LinearSetup(std::int64_t max_rows, std::int64_t max_in, std::int64_t max_out) {
    check_cuda(cudaStreamCreate(&stream_.stream), "cudaStreamCreate");
    context_ = must(kc::LinearContext::create(stream_.stream, max_rows, max_in, max_out));
  }
  kc::LinearContext& context() { return *context_; }
  cudaStream_t stream() const { return stream_.stream; }

 private:
  struct OwnedStream {
    cudaStream_t stream = nullptr;
    ~OwnedStream() {
      if (stream != nullptr) cudaStreamDestroy(stream);
    }
  };
  OwnedStream stream_;  // a blocking stream: ordered after the legacy stream's memsets and copies
  std::unique_ptr<kc::LinearContext> context_;
};

// A weight [out, in] as Linear8bitLt holds it, on both sides: the int8 row-wise quantization
// of N(0, 0.02) values.
struct TestWeight {
  std::int64_t out;
  std::int64_t in;
  Tensor codes;       // i8 [out, in]
  Tensor row_absmax;  // f32 [out]
  Tensor device_codes;
  Tensor device_row_absmax;

  // The device copy as the launchers take it.
  kc::Int8WeightDevice device() const {
    return {device_codes.data_as<const std::int8_t>(), device_row_absmax.data_as<const float>()};
  }
};

TestWeight make_weight(std::int64_t out, std::int64_t in, std::uint64_t seed) {
  Tensor values = host_tensor(Shape{out, in}, DType::kF32);
  check(fill_normal(values.view(), seed, 0.0f, 0.02f));
  TestWeight weight{out,
                    in,
                    host_tensor(Shape{out, in}, DType::kI8),
                    host_tensor(Shape{out}, DType::kF32),
                    Tensor(),
                    Tensor()};
  check(quant::quantize_int8_rowwise(values, 0.0f, weight.codes.view(), weight.row_absmax.view(),
                                     nullptr));
  weight.device_codes = to_device(weight.codes);
  weight.device_row_absmax = to_device(weight.row_absmax);
  return weight;
}

struct Int8Case {
  std::int64_t rows;
  DType dtype;  // of x, bias and y
  float threshold;
  bool bias;
  bool plant_outliers;
};

std::string describe(const TestWeight& weight, const Int8Case& c) {
  return std::to_string(c.rows) + " rows, in " + std::to_string(weight.in) + ", out " +
         std::to_string(weight.out) + ", " + std::string(dtype_name(c.dtype)) + ", threshold " +
         std::to_string(c.threshold) + (c.bias ? ", bias" : ", no bias") +
         (c.plant_outliers ? ", outliers planted" : "");
}

// x [rows, in]: N(0, 1) and, when planted, LLM.int8's outlier features: three columns holding
// magnitudes 8..20 in every third row (the other rows' values in them stay small), and one value
// exactly 6 in the last row (|x| >= threshold counts).
Tensor make_activations(const Int8Case& c, std::int64_t in, std::uint64_t seed) {
  Tensor x = host_tensor(Shape{c.rows, in}, c.dtype);
  check(fill_normal(x.view(), seed));
  if (!c.plant_outliers) return x;
  const std::int64_t columns[3] = {in / 7, in / 2, in - 1};
  for (std::int64_t row = 0; row < c.rows; row += 3) {
    for (int k = 0; k < 3; ++k) {
      const float magnitude = static_cast<float>(8 + (row * 5 + k * 7) % 13);
      set_value(x.view(), row * in + columns[k], (row + k) % 2 == 0 ? magnitude : -magnitude);
    }
  }
  set_value(x.view(), (c.rows - 1) * in + (in * 3) / 4, 6.0f);
  return x;
}

// The columns holding a value with |f16(x)| >= threshold (none for threshold 0).
std::vector<std::int64_t> outlier_columns(const std::vector<float>& x, std::int64_t in,
                                          float threshold) {
  std::vector<std::int64_t> columns;
  if (threshold <= 0.0f) return columns;
  std::vector<bool> is_outlier(static_cast<std::size_t>(in), false);
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::fabs(f16_to_f32(f32_to_f16(x[i]))) >= threshold) {
      is_outlier[i % static_cast<std::size_t>(in)] = true;
    }
  }
  for (std::int64_t j = 0; j < in; ++j) {
    if (is_outlier[static_cast<std::size_t>(j)]) columns.push_back(j);
  }
  return columns;
}

// The largest |y_gpu - y_cpu| that the order of the outlier columns' sum allows at (row, o).
// Both sides compute y = round_X(fl32(y16 + S)) from the same y16 (the int8 part, exact), where
// S = Σ_j x[row][j] · w_j over the n outlier columns, w_j = round_X(W'[o][j]), is summed in f32
// in some order. Each of the n terms passes through at most n roundings (its product and the
// additions above it), so each side's S lies within γ_n · Σ_j |x_j · w_j| of the exact sum,
// γ_n = n·u / (1 - n·u) with u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms,
// 3.1), and the two within twice that. The last roundings move each result by at most rel_X
// times its magnitude: rel = 2^-23 for f32 (2u), 2^-7 for bf16 (covering the f32 rounding first).
double outlier_tolerance(const std::vector<float>& x, const TestWeight& weight, DType dtype,
                         const std::vector<std::int64_t>& columns, std::int64_t row, std::int64_t o,
                         float y_cpu, float y_gpu) {
  const std::int8_t* codes = weight.codes.data_as<std::int8_t>() + o * weight.in;
  const float absmax = weight.row_absmax.data_as<float>()[o];
  double magnitude_sum = 0.0;
  for (const std::int64_t j : columns) {
    const float w =
        rounded_to(dtype, static_cast<float>(codes[j]) * absmax * quant::kInt8DequantScale);
    magnitude_sum +=
        std::fabs(static_cast<double>(x[static_cast<std::size_t>(row * weight.in + j)]) *
                  static_cast<double>(w));
  }
  const double n_u = static_cast<double>(columns.size()) * std::ldexp(1.0, -24);
  const double gamma = n_u / (1.0 - n_u);
  const double rel = dtype == DType::kF32 ? std::ldexp(1.0, -23) : std::ldexp(1.0, -7);
  return 2.0 * gamma * magnitude_sum + rel * (std::fabs(y_cpu) + std::fabs(y_gpu));
}

// Counts of compared outputs over a test, printed at its end.
struct Tally {
  std::int64_t bit_equal_required = 0;
  std::int64_t within_tolerance_required = 0;
  std::int64_t failures = 0;

  void report() const {
    std::cout << "[ info     ] " << bit_equal_required << " outputs required bit-equal, "
              << within_tolerance_required << " within the outlier-sum tolerance, " << failures
              << " failed\n";
  }
};

// Runs one case on both sides and compares every output.
void run_case(LinearSetup& setup, const TestWeight& weight, const Int8Case& c, std::uint64_t seed,
              Tally& tally) {
  SCOPED_TRACE(describe(weight, c) + ", seed " + std::to_string(seed));
  const std::int64_t in = weight.in;
  const std::int64_t out = weight.out;
  const Tensor x = make_activations(c, in, seed);
  Tensor bias = host_tensor(Shape{out}, c.dtype);
  check(fill_normal(bias.view(), seed + 1, 0.0f, 0.5f));
  const std::vector<float> x_values = values_of(x);
  const std::vector<float> bias_values = values_of(bias);

  std::vector<float> expected(static_cast<std::size_t>(c.rows * out));
  const cpu::LinearInt8Job job{x_values.data(),
                               cpu::Int8Weight{weight.codes.data_as<const std::int8_t>(),
                                               weight.row_absmax.data_as<const float>(), nullptr},
                               c.bias ? bias_values.data() : nullptr,
                               c.dtype,
                               c.rows,
                               in,
                               out,
                               c.threshold,
                               c.dtype,
                               expected.data()};
  cpu::linear_int8_reference(job);

  const Tensor device_x = to_device(x);
  const Tensor device_bias = to_device(bias);
  const Tensor device_y = poisoned_device_tensor(Shape{c.rows, out}, c.dtype);
  kc::LinearContext& context = setup.context();
  check_cuda(cudaMemsetAsync(context.workspace(), 0xAB, context.workspace_bytes(), setup.stream()),
             "cudaMemsetAsync (workspace)");
  check(kc::linear_int8(context, device_x.view().data(), weight.device(),
                        c.bias ? device_bias.view().data() : nullptr, c.rows, in, out, c.threshold,
                        device_y.view().data(), c.dtype));
  check_cuda(cudaStreamSynchronize(setup.stream()), "cudaStreamSynchronize");
  const std::vector<float> actual = values_of(to_host(device_y));

  const std::vector<std::int64_t> columns = outlier_columns(x_values, in, c.threshold);
  for (std::int64_t i = 0; i < c.rows * out; ++i) {
    const float y_cpu = expected[static_cast<std::size_t>(i)];
    const float y_gpu = actual[static_cast<std::size_t>(i)];
    bool ok = false;
    double tolerance = 0.0;
    if (columns.empty()) {
      ++tally.bit_equal_required;
      ok = std::bit_cast<std::uint32_t>(y_cpu) == std::bit_cast<std::uint32_t>(y_gpu);
    } else {
      ++tally.within_tolerance_required;
      tolerance =
          outlier_tolerance(x_values, weight, c.dtype, columns, i / out, i % out, y_cpu, y_gpu);
      ok = std::fabs(static_cast<double>(y_gpu) - static_cast<double>(y_cpu)) <= tolerance;
    }
    if (!ok && ++tally.failures <= 10) {
      ADD_FAILURE() << "y[" << i / out << "][" << i % out << "]: CPU " << y_cpu << ", GPU " << y_gpu
                    << (columns.empty() ? " (bits differ)"
                                        : ", tolerance " + std::to_string(tolerance));
    }
  }
}

// Every combination of rows, dtype, threshold and bias on the weight [out, in]; the outliers are
// planted except where rows == 3, so that a threshold with no value reaching it is covered too.
void run_all_cases(LinearSetup& setup, const TestWeight& weight,
                   const std::vector<std::int64_t>& row_counts, float threshold,
                   std::uint64_t& seed, Tally& tally) {
  for (const std::int64_t rows : row_counts) {
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      for (const float t : {0.0f, threshold}) {
        for (const bool bias : {false, true}) {
          run_case(setup, weight, Int8Case{rows, dtype, t, bias, rows != 3}, seed, tally);
          seed += 2;
        }
      }
    }
  }
}

const std::vector<std::int64_t> kRowCounts = {1, 3, 8, 9, 64, 300};

// One row takes the GEMV that quantizes x itself, 2 to 8 rows the GEMV on the quantizer's codes
// (both with 16-byte vectors here: in is a multiple of 16), more rows cuBLASLt and the epilogue
// kernel.
TEST(CudaLinearInt8, MatchesReferenceOnSmallShapes) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(300, 160, 96);
  Tally tally;
  std::uint64_t seed = 1000;
  for (const auto& [out, in] : {std::pair<std::int64_t, std::int64_t>{64, 64}, {96, 160}}) {
    const TestWeight weight = make_weight(out, in, seed++);
    run_all_cases(setup, weight, kRowCounts, 6.0f, seed, tally);
  }
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

// Llama's shapes. To bound the CPU reference's time, each (rows, dtype, threshold) runs once:
// with a bias for f32 at threshold 6 and for bf16 at threshold 0, so each dtype meets both.
TEST(CudaLinearInt8, MatchesReferenceOnLlamaShapes) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(300, 14336, 4096);
  Tally tally;
  std::uint64_t seed = 2000;
  for (const auto& [out, in] : {std::pair<std::int64_t, std::int64_t>{4096, 4096}, {1024, 14336}}) {
    const TestWeight weight = make_weight(out, in, seed++);
    for (const std::int64_t rows : kRowCounts) {
      for (const DType dtype : {DType::kF32, DType::kBF16}) {
        for (const float threshold : {0.0f, 6.0f}) {
          const bool bias = (dtype == DType::kF32) == (threshold > 0.0f);
          run_case(setup, weight, Int8Case{rows, dtype, threshold, bias, rows != 3}, seed, tally);
          seed += 2;
        }
      }
    }
  }
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

// One row over more blocks than two per SM of any GPU kbit runs on: the one-row GEMV with four
// weight vectors in flight per lane. The smaller one-row launches above (at most 256 blocks) take
// the few-blocks instance, with eight, on GPUs of 128 SMs or more.
TEST(CudaLinearInt8, OneRowOfManyOutputs) {
  KBIT_REQUIRE_CUDA();
  constexpr std::int64_t kOut = 10000;  // 625 blocks of 16 features
  LinearSetup setup(1, 1024, kOut);
  Tally tally;
  std::uint64_t seed = 2500;
  const TestWeight weight = make_weight(kOut, 1024, seed++);
  run_all_cases(setup, weight, {1}, 6.0f, seed, tally);
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

// in not a multiple of 16 (the GEMV's byte loop) or of 4, out not a multiple of 4 (where
// cuBLASLt's int8 GEMM declines and the tiled __dp4a kernel takes over), tiles cut by the edges.
TEST(CudaLinearInt8, MatchesReferenceOnOddShapes) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(65, 200, 100);
  Tally tally;
  std::uint64_t seed = 3000;
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{1, 1},    {5, 3},    {37, 45},
                                                                     {33, 200}, {100, 68}, {4, 36}};
  for (const auto& [out, in] : shapes) {
    const TestWeight weight = make_weight(out, in, seed++);
    run_all_cases(setup, weight, {1, 2, 3, 7, 8, 9, 33, 65}, 6.0f, seed, tally);
  }
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

// One row of long inputs: the self-quantizing GEMV keeps x's codes in shared memory, beyond the
// default 48 KiB from 43 691 inputs (opted in), and declines past 128 Ki inputs, where the
// quantizer's launches and the GEMV on their codes take the row.
TEST(CudaLinearInt8, OneRowOfLongInputs) {
  KBIT_REQUIRE_CUDA();
  constexpr std::int64_t kLongest = 128 * 1024 + 16;
  LinearSetup setup(1, kLongest, 24);
  Tally tally;
  std::uint64_t seed = 3500;
  for (const std::int64_t in : {std::int64_t{65536}, kLongest}) {
    const TestWeight weight = make_weight(24, in, seed++);
    run_all_cases(setup, weight, {1}, 6.0f, seed, tally);
  }
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

// A low threshold makes most columns outliers: more than one pass of every loop over them (the
// GEMV's 256 threads, the epilogue's 32-column tiles, the compaction's 1024-column passes).
TEST(CudaLinearInt8, ManyOutlierColumns) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(64, 2080, 64);
  Tally tally;
  std::uint64_t seed = 4000;
  for (const auto& [out, in] : {std::pair<std::int64_t, std::int64_t>{64, 2080}, {40, 1000}}) {
    const TestWeight weight = make_weight(out, in, seed++);
    run_all_cases(setup, weight, {1, 8, 9, 64}, 0.5f, seed, tally);
  }
  tally.report();
  EXPECT_EQ(tally.failures, 0);
}

TEST(CudaLinearInt8, RejectsWhatTheContractExcludes) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(8, 64, 64);
  const TestWeight weight = make_weight(64, 64, 5000);
  const Tensor x = poisoned_device_tensor(Shape{8, 64}, DType::kF32);
  const Tensor y = poisoned_device_tensor(Shape{8, 64}, DType::kF32);
  const kc::Int8WeightDevice device_weight = weight.device();
  const auto run = [&](std::int64_t rows, std::int64_t in, float threshold, DType dtype) {
    return kc::linear_int8(setup.context(), x.view().data(), device_weight, nullptr, rows, in, 64,
                           threshold, y.view().data(), dtype)
        .code();
  };
  EXPECT_EQ(run(8, 64, 6.0f, DType::kF16), StatusCode::kInvalidArgument);
  EXPECT_EQ(run(0, 64, 6.0f, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(run(8, 64, -1.0f, DType::kF32), StatusCode::kInvalidArgument);
  EXPECT_EQ(run(8, 64, std::nanf(""), DType::kF32), StatusCode::kInvalidArgument);
  // Far beyond the sizes the context was made for (nothing is launched: it fails first).
  EXPECT_EQ(run(1000000, 64, 6.0f, DType::kF32), StatusCode::kInvalidArgument);
  check_cuda(cudaStreamSynchronize(setup.stream()), "cudaStreamSynchronize");
}

// ---- linear_int8_layers.

struct Int8LayersCase {
  std::int64_t rows;
  std::int64_t in;
  std::vector<std::int64_t> outs;
  kc::LinearEpilogue epilogue;
  DType dtype;
  float threshold;
  bool bias;
};

// Every element of the f32 or bf16 device tensor `actual` has the bits of `expected`'s.
void expect_same_bits(const Tensor& expected, const Tensor& actual, const std::string& what) {
  const std::vector<float> want = values_of(to_host(expected.view()).view());
  const std::vector<float> got = values_of(to_host(actual.view()).view());
  std::int64_t differing = 0;
  for (std::size_t k = 0; k < want.size(); ++k) {
    if (std::bit_cast<std::uint32_t>(want[k]) != std::bit_cast<std::uint32_t>(got[k]) &&
        ++differing <= 5) {
      ADD_FAILURE() << what << ": [" << k << "] = " << got[k] << ", expected " << want[k];
    }
  }
  EXPECT_EQ(differing, 0) << what;
}

// The layers in one call give the bits of one linear_int8 call per layer (and silu_mul after gate
// and up): the fused GEMV sums each weight row in the order of the single layer's, outlier columns
// (planted) included.
void check_int8_layers_case(const Int8LayersCase& c, std::uint64_t seed) {
  const bool silu = c.epilogue == kc::LinearEpilogue::kSiluMul;
  SCOPED_TRACE(std::to_string(c.rows) + " rows, in " + std::to_string(c.in) + ", " +
               std::to_string(c.outs.size()) + " layers, " + std::string(dtype_name(c.dtype)) +
               ", threshold " + std::to_string(c.threshold) + (silu ? ", SiLU·mul" : ""));
  const std::int64_t widest = *std::max_element(c.outs.begin(), c.outs.end());
  LinearSetup setup(c.rows, c.in, widest);
  const Tensor x =
      to_device(make_activations(Int8Case{c.rows, c.dtype, c.threshold, c.bias, true}, c.in, seed));
  std::vector<TestWeight> weights;
  std::vector<Tensor> biases;
  std::vector<Tensor> expected;
  std::vector<Tensor> actual;
  std::vector<kc::Int8Layer> layers;
  for (std::size_t i = 0; i < c.outs.size(); ++i) {
    const std::int64_t out = c.outs[i];
    weights.push_back(make_weight(out, c.in, seed + 10 * (i + 1)));
    Tensor bias = host_tensor(Shape{out}, c.dtype);
    check(fill_normal(bias.view(), seed + 10 * i + 5, 0.0f, 0.5f));
    biases.push_back(to_device(bias));
    expected.push_back(poisoned_device_tensor(Shape{c.rows, out}, c.dtype));
    actual.push_back(poisoned_device_tensor(Shape{c.rows, out}, c.dtype));
    const kc::Int8WeightDevice weight = weights[i].device();
    const void* bias_data = c.bias ? biases[i].view().data() : nullptr;
    check(kc::linear_int8(setup.context(), x.view().data(), weight, bias_data, c.rows, c.in, out,
                          c.threshold, expected[i].view().data(), c.dtype));
    layers.push_back({weight, bias_data, out, actual[i].view().data()});
  }
  if (silu) {
    check_cuda(kc::silu_mul(expected[0].view().data(), expected[1].view().data(),
                            c.rows * c.outs[0], c.dtype, setup.stream()),
               "silu_mul");
  }
  check(kc::linear_int8_layers(setup.context(), x.view().data(), layers, c.rows, c.in, c.threshold,
                               c.dtype, c.epilogue));
  check_cuda(cudaStreamSynchronize(setup.stream()), "cudaStreamSynchronize");
  for (std::size_t i = 0; i < (silu ? 1 : layers.size()); ++i) {
    expect_same_bits(expected[i], actual[i], "layer " + std::to_string(i) + " (one call each)");
  }
}

TEST(CudaLinearInt8Layers, MatchSeparateCalls) {
  KBIT_REQUIRE_CUDA();
  constexpr auto kStore = kc::LinearEpilogue::kStore;
  constexpr auto kSiluMul = kc::LinearEpilogue::kSiluMul;
  const Int8LayersCase cases[] = {
      // q, k and v of a GQA shape, one row: the self-quantizing GEMV, outs cut by its blocks.
      {1, 512, {100, 36, 36}, kStore, DType::kBF16, 6.0f, true},
      {1, 160, {40, 24, 20}, kStore, DType::kF32, 0.0f, false},
      // gate and up with silu_mul; in 200 takes the GEMV's byte loop.
      {1, 256, {102, 102}, kSiluMul, DType::kBF16, 6.0f, false},
      {1, 200, {48, 48}, kSiluMul, DType::kF32, 6.0f, true},
      // More rows: one linear_int8 call each, then silu_mul.
      {3, 256, {64, 32}, kStore, DType::kBF16, 6.0f, true},
      {5, 256, {64, 64}, kSiluMul, DType::kBF16, 0.0f, true},
  };
  std::uint64_t seed = 7000;
  for (const Int8LayersCase& c : cases) {
    check_int8_layers_case(c, seed);
    seed += 100;
  }
}

TEST(CudaLinearInt8Layers, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(1, 64, 64);
  const TestWeight weight = make_weight(64, 64, 7500);
  const Tensor x = poisoned_device_tensor(Shape{1, 64}, DType::kF32);
  const Tensor y = poisoned_device_tensor(Shape{1, 64}, DType::kF32);
  const kc::Int8WeightDevice device_weight = weight.device();
  const kc::Int8Layer layer{device_weight, nullptr, 64, y.view().data()};
  kc::Int8Layer narrow = layer;
  narrow.out = 32;
  kc::Int8Layer no_codes = layer;
  no_codes.weight.codes = nullptr;
  const auto call = [&](std::vector<kc::Int8Layer> layers, kc::LinearEpilogue epilogue) {
    return kc::linear_int8_layers(setup.context(), x.view().data(), layers, 1, 64, 6.0f,
                                  DType::kF32, epilogue)
        .code();
  };
  EXPECT_EQ(call({}, kc::LinearEpilogue::kStore), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, layer, layer, layer}, kc::LinearEpilogue::kStore),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer}, kc::LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, narrow}, kc::LinearEpilogue::kSiluMul), StatusCode::kInvalidArgument);
  EXPECT_EQ(call({layer, no_codes}, kc::LinearEpilogue::kStore), StatusCode::kInvalidArgument);
  check_cuda(cudaStreamSynchronize(setup.stream()), "cudaStreamSynchronize");
}

// ---- The norm's quantization of a decode row (add_rms_norm with quantized_y) read by
// linear_int8_layers: the row equals the CPU quantizer's, and the layers' outputs equal those
// of the layers quantizing the row themselves, bit for bit.

struct NormedRowCase {
  std::int64_t in;
  std::vector<std::int64_t> outs;
  kc::LinearEpilogue epilogue;
  DType dtype;
  float threshold;
};

// The quantized row in `buffer` against quantize_int8_rowwise of `normed` (host [1, in]): the
// absmax, the outlier bits of the columns the CPU lists, and the codes, 0 in those columns.
void expect_quantized_row_of(const Tensor& normed, float threshold, const Tensor& buffer) {
  const std::int64_t in = normed.shape()[1];
  Tensor codes = host_tensor(Shape{1, in}, DType::kI8);
  Tensor absmax = host_tensor(Shape{1}, DType::kF32);
  std::vector<std::int64_t> columns;
  check(quant::quantize_int8_rowwise(normed, threshold, codes.view(), absmax.view(), &columns));
  std::vector<bool> is_outlier(static_cast<std::size_t>(in), false);
  for (const std::int64_t j : columns) is_outlier[static_cast<std::size_t>(j)] = true;

  Tensor bytes = to_host(buffer.view());
  const kc::Int8QuantizedRow row = kc::int8_quantized_row_in(bytes.view().data(), in);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(*row.absmax),
            std::bit_cast<std::uint32_t>(absmax.data_as<float>()[0]));
  EXPECT_EQ(*row.has_outliers, columns.empty() ? 0 : 1);
  std::int64_t differing = 0;
  for (std::int64_t j = 0; j < in; ++j) {
    const auto u = static_cast<std::size_t>(j);
    const bool bit = (row.outlier_bits[j / 16] >> (j % 16) & 1) != 0;
    const std::int8_t want = is_outlier[u] ? std::int8_t{0} : codes.data_as<std::int8_t>()[j];
    if ((bit != is_outlier[u] || row.codes[j] != want) && ++differing <= 5) {
      ADD_FAILURE() << "column " << j << ": code " << int{row.codes[j]} << ", outlier bit " << bit
                    << "; the CPU quantizer gives " << int{want} << ", outlier " << is_outlier[u];
    }
  }
  EXPECT_EQ(differing, 0);
}

void check_normed_row_case(const NormedRowCase& c, std::uint64_t seed) {
  const bool silu = c.epilogue == kc::LinearEpilogue::kSiluMul;
  SCOPED_TRACE("in " + std::to_string(c.in) + ", " + std::to_string(c.outs.size()) + " layers, " +
               std::string(dtype_name(c.dtype)) + ", threshold " + std::to_string(c.threshold) +
               (silu ? ", SiLU·mul" : ""));
  const std::int64_t widest = *std::max_element(c.outs.begin(), c.outs.end());
  LinearSetup setup(1, c.in, widest);
  const cudaStream_t stream = setup.stream();
  // The residual with planted outliers (they stay outliers through the norm: |w| is about 1).
  const Tensor hidden =
      make_activations(Int8Case{1, c.dtype, c.threshold, false, true}, c.in, seed);
  Tensor delta = host_tensor(Shape{1, c.in}, c.dtype);
  check(fill_normal(delta.view(), seed + 1, 0.0f, 0.5f));
  Tensor norm_weight = host_tensor(Shape{c.in}, DType::kF32);
  check(fill_normal(norm_weight.view(), seed + 2, 1.0f, 0.1f));
  const Tensor device_delta = to_device(delta);
  const Tensor device_norm_weight = to_device(norm_weight);
  const Tensor buffer = poisoned_device_tensor(
      Shape{static_cast<std::int64_t>(kc::int8_quantized_row_bytes(c.in))}, DType::kU8);
  const kc::Int8QuantizedRow row = kc::int8_quantized_row_in(buffer.view().data(), c.in);

  // Side 0: the norm alone, the layers quantizing the row themselves; side 1: the norm quantizing
  // the row, the layers reading it.
  std::vector<TestWeight> weights;
  for (std::size_t i = 0; i < c.outs.size(); ++i) {
    weights.push_back(make_weight(c.outs[i], c.in, seed + 10 * (i + 1)));
  }
  std::vector<Tensor> residuals, normed, ys[2];
  for (int side = 0; side < 2; ++side) {
    residuals.push_back(to_device(hidden));
    normed.push_back(poisoned_device_tensor(Shape{1, c.in}, c.dtype));
    std::vector<kc::Int8Layer> layers;
    for (std::size_t i = 0; i < c.outs.size(); ++i) {
      ys[side].push_back(poisoned_device_tensor(Shape{1, c.outs[i]}, c.dtype));
      layers.push_back({weights[i].device(), nullptr, c.outs[i], ys[side][i].view().data()});
    }
    const kc::Int8QuantizedRow* quantized = side == 1 ? &row : nullptr;
    check_cuda(
        kc::add_rms_norm(residuals[side].view().data(), device_delta.view().data(),
                         device_norm_weight.data_as<const float>(), 1, c.in, 1e-5f,
                         normed[side].view().data(), c.dtype, stream, quantized, c.threshold),
        "add_rms_norm");
    check(kc::linear_int8_layers(setup.context(), normed[side].view().data(), layers, 1, c.in,
                                 c.threshold, c.dtype, c.epilogue, quantized));
  }
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  expect_same_bits(residuals[0], residuals[1], "the residual");
  expect_same_bits(normed[0], normed[1], "the normed row");
  expect_quantized_row_of(to_host(normed[1].view()), c.threshold, buffer);
  for (std::size_t i = 0; i < (silu ? 1 : c.outs.size()); ++i) {
    expect_same_bits(ys[0][i], ys[1][i], "layer " + std::to_string(i) + " (the norm's codes)");
  }
}

TEST(CudaLinearInt8Layers, ReadTheNormsQuantization) {
  KBIT_REQUIRE_CUDA();
  constexpr auto kStore = kc::LinearEpilogue::kStore;
  constexpr auto kSiluMul = kc::LinearEpilogue::kSiluMul;
  const NormedRowCase cases[] = {
      // Llama-3.1-8B's q/k/v and a gate/up pair; a row of 208 (13 vectors: no whole warp's worth);
      // a threshold no value reaches; a threshold of 0 (no outliers at all).
      {4096, {4096, 1024, 1024}, kStore, DType::kBF16, 6.0f},
      {4096, {1024, 1024}, kSiluMul, DType::kBF16, 6.0f},
      {208, {40, 24}, kStore, DType::kF32, 6.0f},
      {1024, {64, 64}, kSiluMul, DType::kF32, 100.0f},
      {5120, {96}, kStore, DType::kBF16, 0.0f},
  };
  std::uint64_t seed = 7700;
  for (const NormedRowCase& c : cases) {
    check_normed_row_case(c, seed);
    seed += 100;
  }
}

TEST(CudaLinearInt8Layers, RejectQuantizedRowsTheyCannotRead) {
  KBIT_REQUIRE_CUDA();
  LinearSetup setup(2, 72, 64);
  const TestWeight weight = make_weight(64, 64, 7800);
  const Tensor x = poisoned_device_tensor(Shape{2, 72}, DType::kF32);
  const Tensor y = poisoned_device_tensor(Shape{2, 64}, DType::kF32);
  const Tensor buffer = poisoned_device_tensor(Shape{256}, DType::kU8);
  const kc::Int8Layer layer{weight.device(), nullptr, 64, y.view().data()};
  const kc::Int8QuantizedRow row = kc::int8_quantized_row_in(buffer.view().data(), 64);
  kc::Int8QuantizedRow unaligned = row;
  unaligned.codes += 1;
  const auto call = [&](std::int64_t rows, std::int64_t in, const kc::Int8QuantizedRow& quantized) {
    return kc::linear_int8_layers(setup.context(), x.view().data(), {&layer, 1}, rows, in, 6.0f,
                                  DType::kF32, kc::LinearEpilogue::kStore, &quantized)
        .code();
  };
  EXPECT_EQ(call(2, 64, row), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(1, 72, row), StatusCode::kInvalidArgument);
  EXPECT_EQ(call(1, 64, unaligned), StatusCode::kInvalidArgument);
  // add_rms_norm declines to quantize more than one row, a row not of whole 16-value vectors, or
  // one longer than it holds.
  const Tensor norm_weight = poisoned_device_tensor(Shape{72}, DType::kF32);
  const Tensor hidden = poisoned_device_tensor(Shape{2, 72}, DType::kF32);
  const auto norm = [&](std::int64_t rows, std::int64_t cols) {
    return kc::add_rms_norm(hidden.view().data(), nullptr, norm_weight.data_as<const float>(), rows,
                            cols, 1e-5f, x.view().data(), DType::kF32, setup.stream(), &row, 6.0f);
  };
  EXPECT_EQ(norm(2, 64), cudaErrorInvalidValue);
  EXPECT_EQ(norm(1, 72), cudaErrorInvalidValue);
  EXPECT_EQ(norm(1, kc::kMaxInt8QuantizedNormCols + 16), cudaErrorInvalidValue);
  check_cuda(cudaStreamSynchronize(setup.stream()), "cudaStreamSynchronize");
}

// dequantize_int8_weight: MatMul8bitLt's backward matrix, CB · fl32(SCB · 1/127) rounded to the
// dtype, bit for bit against the same product on the host, on a poisoned output; a shape whose
// element count is no multiple of the block's threads, and one past the grid's 65 535 blocks.
TEST(CudaDequantizeInt8Weight, EqualsBitsandbytesBackwardMatrix) {
  KBIT_REQUIRE_CUDA();
  for (const auto& [out, in] : {std::pair<std::int64_t, std::int64_t>{37, 96}, {4200, 4096}}) {
    const TestWeight weight = make_weight(out, in, 6000 + static_cast<std::uint64_t>(out));
    const kc::Int8WeightDevice device_weight = weight.device();
    for (const DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(std::to_string(out) + " x " + std::to_string(in) + " " +
                   std::string(dtype_name(dtype)));
      const Tensor output = poisoned_device_tensor(Shape{out, in}, dtype);
      check(
          kc::dequantize_int8_weight(device_weight, out, in, dtype, output.view().data(), nullptr));
      check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      const std::vector<float> got = values_of(to_host(output.view()).view());
      const std::int8_t* codes = weight.codes.data_as<const std::int8_t>();
      const float* row_absmax = weight.row_absmax.data_as<const float>();
      std::int64_t mismatches = 0;
      for (std::int64_t i = 0; i < out * in; ++i) {
        const float scale = row_absmax[i / in] * quant::kInt8DequantScale;
        const float want = rounded_to(dtype, static_cast<float>(codes[i]) * scale);
        mismatches += std::bit_cast<std::uint32_t>(got[static_cast<std::size_t>(i)]) !=
                      std::bit_cast<std::uint32_t>(want);
      }
      EXPECT_EQ(mismatches, 0);
    }
  }
}

TEST(CudaDequantizeInt8Weight, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  const TestWeight weight = make_weight(64, 64, 6100);
  const kc::Int8WeightDevice device_weight = weight.device();
  const Tensor output = poisoned_device_tensor(Shape{64, 64}, DType::kF32);
  void* data = output.view().data();
  EXPECT_EQ(kc::dequantize_int8_weight(device_weight, 64, 64, DType::kF16, data, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(kc::dequantize_int8_weight(device_weight, 0, 64, DType::kF32, data, nullptr).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(kc::dequantize_int8_weight({nullptr, device_weight.row_absmax}, 64, 64, DType::kF32,
                                       data, nullptr)
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(kc::dequantize_int8_weight(device_weight, 64, 64, DType::kF32, nullptr, nullptr).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbit
