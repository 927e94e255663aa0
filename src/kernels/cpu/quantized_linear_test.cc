// The quantized Linear kernels (quantized_linear.h): against bitsandbytes' CUDA outputs (golden
// data), and every kernel against float64 and the fast ones against the reference on fresh
// random data. Outputs are poisoned with NaN before each run, so an output a kernel forgets
// shows up.
//
// Tolerances. Every kernel sums n = in_features products of values it holds exactly (x and w
// rounded to the compute dtype) in f32, in some order, then adds the bias and rounds once to the
// compute dtype. Any summation order errs by at most γ·S with γ = (n + 2)·2^-24 and
// S = Σ|x·w| + |bias| (the classic bound for a sum of n + 1 terms with rounded products), and
// the last rounding by at most half a unit in the last place (ulp) of the compute dtype. So
// |y − y64| <= γ·S + ulp(|y64| + γ·S), with y64 the float64 sum of the same operands.
#include "kernels/cpu/quantized_linear.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"
#include "testing/golden.h"

namespace kbit::kernels::cpu {
namespace {

using quant::FourBitType;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const DType kFloatTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
const std::int64_t kBlockSizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};

// ---- Numbers.

float round_to(DType dtype, float value) {
  float rounded = value;
  visit_float_dtype(dtype, [&](auto tag) { rounded = to_f32(from_f32<decltype(tag)>(value)); });
  return rounded;
}

// The spacing of dtype's values around |v| (its ulp there), subnormals included.
double ulp(DType dtype, double v) {
  const int mantissa_bits = dtype == DType::kF32 ? 23 : dtype == DType::kBF16 ? 7 : 10;
  const int min_exponent = dtype == DType::kF16 ? -14 : -126;
  int exponent = min_exponent + 1;
  if (v != 0.0) std::frexp(std::fabs(v), &exponent);  // |v| = m · 2^exponent, m in [0.5, 1)
  return std::ldexp(1.0, std::max(exponent - 1, min_exponent) - mantissa_bits);
}

// n values of normal(0, stddev), rounded to dtype.
std::vector<float> random_values(std::int64_t n, std::uint64_t seed, float stddev, DType dtype) {
  std::vector<float> values(static_cast<std::size_t>(n));
  EXPECT_TRUE(
      fill_normal(TensorView(values.data(), DType::kF32, Shape{n}), seed, 0.0f, stddev).ok());
  for (float& v : values) v = round_to(dtype, v);
  return values;
}

// The values as elements of dtype, in raw bytes.
std::vector<std::uint8_t> as_dtype(const std::vector<float>& values, DType dtype) {
  std::vector<std::uint8_t> bytes(values.size() * dtype_size(dtype));
  visit_float_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    for (std::size_t i = 0; i < values.size(); ++i) {
      const T element = from_f32<T>(values[i]);
      std::memcpy(bytes.data() + i * sizeof(T), &element, sizeof(T));
    }
  });
  return bytes;
}

std::vector<float> from_bf16(const std::vector<bf16>& values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = bf16_to_f32(values[i]);
  return out;
}

std::vector<float> from_f16(const std::vector<f16>& values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = f16_to_f32(values[i]);
  return out;
}

bool same_value(float a, float b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

// Calls kernel(first, end) on [0, items) in three uneven pieces, as a thread pool might.
void run_in_pieces(std::int64_t items,
                   const std::function<void(std::int64_t, std::int64_t)>& kernel) {
  const std::int64_t first_cut = items / 3;
  const std::int64_t second_cut = std::max(first_cut, items - items / 5);
  kernel(0, first_cut);
  kernel(first_cut, second_cut);
  kernel(second_cut, items);
}

ExecutionOptions fast_options() {
  return ExecutionOptions{};
}

// Outputs against float64 values with a bound each; reports the worst output.
struct BoundCheck {
  std::vector<double> want;
  std::vector<double> bound;

  void expect_within(const std::vector<float>& got, const std::string& what) const {
    std::size_t worst = 0;
    double worst_ratio = -1.0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double error = std::fabs(static_cast<double>(got[i]) - want[i]);
      const double ratio =
          std::isnan(error) ? std::numeric_limits<double>::infinity() : error / bound[i];
      if (ratio > worst_ratio) {
        worst_ratio = ratio;
        worst = i;
      }
    }
    EXPECT_LE(worst_ratio, 1.0) << what << ": output " << worst << " is " << got[worst]
                                << ", float64 " << want[worst] << ", bound " << bound[worst];
  }
};

// ---- 4-bit weights, made by kbit's quantizers.

struct FourBitData {
  FourBitType type;
  std::int64_t block_size;
  DType weight_dtype;
  std::int64_t n;  // values
  std::vector<std::uint8_t> packed;
  std::vector<float> absmax;  // as quantize_4bit wrote it
  bool nested = false;
  std::vector<std::uint8_t> absmax_codes;
  std::vector<float> nested_absmax;
  float offset = 0.0f;

  FourBitWeight weight() const {
    return FourBitWeight{packed.data(),
                         type,
                         block_size,
                         nested ? nullptr : absmax.data(),
                         nested ? absmax_codes.data() : nullptr,
                         nested ? nested_absmax.data() : nullptr,
                         offset,
                         weight_dtype};
  }

  // The blocks' absmax, reconstructed by quant::dequantize_absmax_nested where nested.
  std::vector<float> block_absmax() const {
    std::vector<float> used = absmax;
    if (nested) {
      const auto blocks = static_cast<std::int64_t>(absmax.size());
      EXPECT_TRUE(
          quant::dequantize_absmax_nested(
              TensorView(const_cast<std::uint8_t*>(absmax_codes.data()), DType::kU8, Shape{blocks}),
              TensorView(const_cast<float*>(nested_absmax.data()), DType::kF32,
                         Shape{static_cast<std::int64_t>(nested_absmax.size())}),
              offset, TensorView(used.data(), DType::kF32, Shape{blocks}))
              .ok());
    }
    return used;
  }

  // The values as bitsandbytes' batch-1 CUDA kernel takes them in compute dtype C:
  // C(C(code value) · C(absmax)), the product exact in double before its one rounding.
  std::vector<float> product_decoded(DType compute) const {
    const std::vector<float> used = block_absmax();
    const auto& code_values = type == FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
    std::vector<float> out(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint8_t byte = packed[static_cast<std::size_t>(i / 2)];
      const double code = round_to(compute, code_values[i % 2 == 0 ? byte >> 4 : byte & 0xf]);
      const double scale = round_to(compute, used[static_cast<std::size_t>(i / block_size)]);
      out[static_cast<std::size_t>(i)] = round_to(compute, static_cast<float>(code * scale));
    }
    return out;
  }

  // What quant::dequantize_4bit makes of the weight, in its dtype (the nested absmax
  // reconstructed by quant::dequantize_absmax_nested): an independent path to the values.
  std::vector<float> dequantized() const {
    std::vector<float> used = block_absmax();
    std::vector<float> out(static_cast<std::size_t>(n));
    EXPECT_TRUE(
        quant::dequantize_4bit(
            TensorView(const_cast<std::uint8_t*>(packed.data()), DType::kU8,
                       Shape{static_cast<std::int64_t>(packed.size())}),
            TensorView(used.data(), DType::kF32, Shape{static_cast<std::int64_t>(used.size())}),
            type, block_size, TensorView(out.data(), DType::kF32, Shape{n}))
            .ok());
    for (float& v : out) v = round_to(weight_dtype, v);
    return out;
  }
};

// Quantizes values of weight_dtype.
FourBitData quantize_weight(const std::vector<float>& values, DType weight_dtype, FourBitType type,
                            std::int64_t block_size, bool nested) {
  const auto n = static_cast<std::int64_t>(values.size());
  FourBitData data{type, block_size, weight_dtype, n, {}, {}, nested, {}, {}, 0.0f};
  const std::int64_t blocks = quant::block_count(n, block_size);
  std::vector<std::uint8_t> input = as_dtype(values, weight_dtype);
  data.packed.resize(static_cast<std::size_t>(quant::packed_4bit_bytes(n)));
  data.absmax.resize(static_cast<std::size_t>(blocks));
  EXPECT_TRUE(quant::quantize_4bit(TensorView(input.data(), weight_dtype, Shape{n}), type,
                                   block_size,
                                   TensorView(data.packed.data(), DType::kU8,
                                              Shape{static_cast<std::int64_t>(data.packed.size())}),
                                   TensorView(data.absmax.data(), DType::kF32, Shape{blocks}))
                  .ok());
  if (nested) {
    const std::int64_t nested_blocks = quant::block_count(blocks, quant::kNestedBlockSize);
    data.absmax_codes.resize(static_cast<std::size_t>(blocks));
    data.nested_absmax.resize(static_cast<std::size_t>(nested_blocks));
    EXPECT_TRUE(quant::quantize_absmax_nested(
                    TensorView(data.absmax.data(), DType::kF32, Shape{blocks}),
                    TensorView(data.absmax_codes.data(), DType::kU8, Shape{blocks}),
                    TensorView(data.nested_absmax.data(), DType::kF32, Shape{nested_blocks}),
                    &data.offset)
                    .ok());
  }
  return data;
}

// y64 = x · wᵀ + bias in float64 from the operands as the matmul holds them, with the bound of
// the file comment. x [rows, in], w [out, in], both already rounded to the compute dtype.
BoundCheck four_bit_expectation(const std::vector<float>& x, const std::vector<float>& w,
                                const std::vector<float>& bias, std::int64_t rows, std::int64_t in,
                                std::int64_t out, DType compute) {
  const double gamma = static_cast<double>(in + 2) * std::ldexp(1.0, -24);
  BoundCheck check;
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t o = 0; o < out; ++o) {
      const double b = bias.empty() ? 0.0 : round_to(compute, bias[static_cast<std::size_t>(o)]);
      double sum = b;
      double magnitude = std::fabs(b);
      for (std::int64_t i = 0; i < in; ++i) {
        const double p = static_cast<double>(x[static_cast<std::size_t>(m * in + i)]) *
                         w[static_cast<std::size_t>(o * in + i)];
        sum += p;
        magnitude += std::fabs(p);
      }
      check.want.push_back(sum);
      check.bound.push_back(gamma * magnitude + ulp(compute, std::fabs(sum) + gamma * magnitude));
    }
  }
  return check;
}

// ---- linear_4bit on random data.

struct FourBitCase {
  FourBitType type;
  std::int64_t block_size;
  bool nested;
  DType weight_dtype;
  DType compute_dtype;
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
  bool bias;
  FourBitDecode decode = FourBitDecode::kExact;

  std::string name() const {
    return std::string(quant::four_bit_type_name(type)) + (nested ? "_dq" : "") + " block " +
           std::to_string(block_size) + " weight " + std::string(dtype_name(weight_dtype)) +
           " compute " + std::string(dtype_name(compute_dtype)) + " rows " + std::to_string(rows) +
           " in " + std::to_string(in) + " out " + std::to_string(out) + (bias ? " bias" : "") +
           (decode == FourBitDecode::kBitsandbytes ? " bitsandbytes decode" : "");
  }
};

// A fast kernel of one instruction set, as a test calls it.
struct FastFourBitKernel {
  const char* name;
  CpuIsa isa;
  std::int64_t chunk;
  void (*kernel)(const Linear4bitJob&, const float*, std::int64_t, std::int64_t);
};
const FastFourBitKernel kFastFourBitKernels[] = {
    {"avx2", CpuIsa::kAvx2, kLinear4bitAvx2Chunk, linear_4bit_avx2},
    {"avx512", CpuIsa::kAvx512, kLinear4bitAvx512Chunk, linear_4bit_avx512},
};

class FourBitProblem {
 public:
  // x is normal(0, 1) unless one_hot: then row m holds a single 1.0, so that every output is one
  // weight (plus bias) whatever the summation order.
  FourBitProblem(const FourBitCase& c, std::uint64_t seed, bool one_hot) : case_(c) {
    const std::vector<float> w = random_values(c.out * c.in, seed, 0.05f, c.weight_dtype);
    data_ = quantize_weight(w, c.weight_dtype, c.type, c.block_size, c.nested);
    // f32 values: the kernels round them to the compute dtype.
    x_ = random_values(c.rows * c.in, seed + 1, 1.0f, DType::kF32);
    if (one_hot) {
      std::fill(x_.begin(), x_.end(), 0.0f);
      for (std::int64_t m = 0; m < c.rows; ++m) {
        x_[static_cast<std::size_t>(m * c.in + (m * 37 + 5) % c.in)] = 1.0f;
      }
    }
    if (c.bias) bias_ = random_values(c.out, seed + 2, 1.0f, DType::kF32);
  }

  Linear4bitJob job(float* y) const {
    return Linear4bitJob{x_.data(),
                         data_.weight(),
                         bias_.empty() ? nullptr : bias_.data(),
                         case_.rows,
                         case_.in,
                         case_.out,
                         case_.compute_dtype,
                         y,
                         case_.decode};
  }

  BoundCheck expectation() const {
    std::vector<float> w = takes_4bit_product_decode(case_.decode, case_.rows, case_.compute_dtype)
                               ? data_.product_decoded(case_.compute_dtype)
                               : data_.dequantized();
    for (float& v : w) v = round_to(case_.compute_dtype, v);
    std::vector<float> x = x_;
    for (float& v : x) v = round_to(case_.compute_dtype, v);
    return four_bit_expectation(x, w, bias_, case_.rows, case_.in, case_.out, case_.compute_dtype);
  }

  std::vector<float> poisoned_output() const {
    return std::vector<float>(static_cast<std::size_t>(case_.rows * case_.out), kNaN);
  }

  std::vector<float> run_reference() const {
    std::vector<float> y = poisoned_output();
    const Linear4bitJob j = job(y.data());
    run_in_pieces(case_.out,
                  [&](std::int64_t b, std::int64_t e) { linear_4bit_reference(j, b, e); });
    return y;
  }

  std::vector<float> run_fast(const FastFourBitKernel& fast) const {
    std::vector<float> y = poisoned_output();
    const Linear4bitJob j = job(y.data());
    std::vector<float> prepared(static_cast<std::size_t>(case_.rows * case_.in));
    prepare_4bit_activations(j, fast.chunk, prepared.data());
    run_in_pieces(case_.out,
                  [&](std::int64_t b, std::int64_t e) { fast.kernel(j, prepared.data(), b, e); });
    return y;
  }

  std::vector<float> run_op() const {
    std::vector<float> y = poisoned_output();
    linear_4bit_op(job(y.data()), fast_options());
    return y;
  }

 private:
  FourBitCase case_;
  FourBitData data_;
  std::vector<float> x_;
  std::vector<float> bias_;
};

// Every kernel within its bound of float64; the fast ones' agreement with the reference printed.
void check_four_bit_case(const FourBitCase& c, std::uint64_t seed) {
  SCOPED_TRACE(c.name());
  const FourBitProblem problem(c, seed, false);
  const BoundCheck expected = problem.expectation();
  const std::vector<float> reference = problem.run_reference();
  expected.expect_within(reference, "reference");
  for (const FastFourBitKernel& fast : kFastFourBitKernels) {
    if (detected_cpu_isa() < fast.isa || c.in % kLinear4bitAvx512Chunk != 0) continue;
    expected.expect_within(problem.run_fast(fast), fast.name);
  }
  expected.expect_within(problem.run_op(), "linear_4bit_op");
}

// With one-hot activations every summation order gives the same bits: the fast kernels must
// equal the reference exactly (decoding, nested absmax, both roundings, bias).
void check_four_bit_exact(const FourBitCase& c, std::uint64_t seed) {
  SCOPED_TRACE(c.name() + " one-hot");
  const FourBitProblem problem(c, seed, true);
  const std::vector<float> reference = problem.run_reference();
  problem.expectation().expect_within(reference, "reference");
  for (const FastFourBitKernel& fast : kFastFourBitKernels) {
    if (detected_cpu_isa() < fast.isa) continue;
    const std::vector<float> y = problem.run_fast(fast);
    for (std::size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(same_value(y[i], reference[i]))
          << fast.name << " output " << i << " is " << y[i] << ", reference " << reference[i];
    }
  }
}

// A shape for a block size and variant: in_features a multiple of the block (variant even) or
// a divisor of it (odd: each block covers several rows), out_features odd.
FourBitCase shaped(FourBitCase c, int variant) {
  const bool blocks_per_row = variant % 2 == 0 || c.block_size <= 32;
  c.in = blocks_per_row ? (c.block_size <= 1024 ? 3 * c.block_size : c.block_size)
                        : std::max<std::int64_t>(32, c.block_size / (variant % 4 == 1 ? 2 : 8));
  c.out = variant % 3 == 0 ? 67 : 35;
  return c;
}

TEST(Linear4bitTest, EveryDtypeAndFormatAgainstFloat64) {
  const std::int64_t rows[] = {1, 3, 4, 5, 17, 64};
  int variant = 0;
  for (const FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (const bool nested : {false, true}) {
      for (const DType weight_dtype : kFloatTypes) {
        for (const DType compute : kFloatTypes) {
          ++variant;
          FourBitCase c{
              type, kBlockSizes[variant % 8], nested, weight_dtype, compute, rows[variant % 6], 0,
              0,    variant % 2 == 0};
          check_four_bit_case(shaped(c, variant), static_cast<std::uint64_t>(variant) * 1000);
        }
      }
    }
  }
}

TEST(Linear4bitTest, EveryBlockSizeAndRowCountAgainstFloat64) {
  int variant = 0;
  for (const std::int64_t block_size : kBlockSizes) {
    for (const std::int64_t rows : {1, 3, 4, 5, 17, 64}) {
      ++variant;
      const FourBitCase c{variant % 3 == 0 ? FourBitType::kFp4 : FourBitType::kNf4,
                          block_size,
                          variant % 2 == 0,
                          DType::kBF16,
                          DType::kBF16,
                          rows,
                          0,
                          0,
                          variant % 4 < 2};
      check_four_bit_case(shaped(c, variant), 50000 + static_cast<std::uint64_t>(variant));
    }
  }
}

TEST(Linear4bitTest, FastKernelsEqualReferenceBitForBitWhereOrderCannotMatter) {
  int variant = 0;
  for (const FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (const bool nested : {false, true}) {
      for (const DType weight_dtype : kFloatTypes) {
        for (const DType compute : kFloatTypes) {
          for (const std::int64_t rows : {3, 9}) {
            ++variant;
            const FourBitCase c{
                type, kBlockSizes[variant % 8], nested, weight_dtype, compute, rows, 0,
                0,    variant % 2 == 0};
            check_four_bit_exact(shaped(c, variant), 90000 + static_cast<std::uint64_t>(variant));
          }
        }
      }
    }
  }
}

TEST(Linear4bitTest, RowsShorterThanAChunkRunTheReference) {
  // in_features 16 < 32: linear_4bit_op runs the reference on the thread pool.
  for (const std::int64_t rows : {1, 7}) {
    check_four_bit_case(
        FourBitCase{FourBitType::kNf4, 64, true, DType::kBF16, DType::kBF16, rows, 16, 21, true},
        7);
  }
}

// bitsandbytes' decode: its batch-1 kernel's values for up to kFourBitProductDecodeMaxRows rows
// with a 16-bit compute dtype, the exact ones otherwise; the op runs the reference for it.
TEST(Linear4bitTest, BitsandbytesDecodeAgainstFloat64) {
  EXPECT_TRUE(takes_4bit_product_decode(FourBitDecode::kBitsandbytes, 8, DType::kBF16));
  EXPECT_TRUE(takes_4bit_product_decode(FourBitDecode::kBitsandbytes, 1, DType::kF16));
  EXPECT_FALSE(takes_4bit_product_decode(FourBitDecode::kBitsandbytes, 9, DType::kBF16));
  EXPECT_FALSE(takes_4bit_product_decode(FourBitDecode::kBitsandbytes, 1, DType::kF32));
  EXPECT_FALSE(takes_4bit_product_decode(FourBitDecode::kExact, 1, DType::kBF16));
  std::uint64_t seed = 95000;
  for (const FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (const bool nested : {false, true}) {
      for (const DType compute : kFloatTypes) {
        for (const std::int64_t rows : {1, 8, 9}) {
          FourBitCase c{type, 64, nested, DType::kBF16, compute, rows, 256, 37, true};
          c.decode = FourBitDecode::kBitsandbytes;
          SCOPED_TRACE(c.name());
          const FourBitProblem problem(c, ++seed, false);
          const BoundCheck expected = problem.expectation();
          expected.expect_within(problem.run_reference(), "reference");
          expected.expect_within(problem.run_op(), "linear_4bit_op");
        }
      }
    }
  }
}

TEST(Linear4bitTest, SupportedLayouts) {
  EXPECT_TRUE(is_supported_4bit_layout(4096, 64));
  EXPECT_TRUE(is_supported_4bit_layout(64, 4096));  // a block covers 64 rows
  EXPECT_TRUE(is_supported_4bit_layout(2, 32));
  EXPECT_TRUE(is_supported_4bit_layout(11008, 32));
  EXPECT_FALSE(is_supported_4bit_layout(11008, 512));  // blocks would straddle rows
  EXPECT_FALSE(is_supported_4bit_layout(96, 64));
  EXPECT_FALSE(is_supported_4bit_layout(1, 32));   // odd: rows would split bytes
  EXPECT_FALSE(is_supported_4bit_layout(64, 48));  // not a bitsandbytes block size
  EXPECT_FALSE(is_supported_4bit_layout(0, 64));
}

// ---- linear_4bit against bitsandbytes (golden/linear4bit.safetensors).
//
// bitsandbytes Linear4bit 512 -> 768, compute bf16, block size 64 (Linear4bit's default).
// With 64 tokens it dequantizes the weight to bf16 (the same values as kbit's, given the same
// codes) and multiplies in a bf16 GEMM (f32 accumulation, one rounding): both sides err by
// γ·S in the sum and half a bf16 ulp in the rounding, so
//   |y_kbit − y_bnb| <= ulp_bf16(y) + 2γ·S.
// With 1 token its GEMV kernel works in bf16: it rounds the code value and absmax to bf16,
// their product again, and each product x·w, before the f32 sum. With u = 2^-8, its weight
// errs by (1+u)³ − 1 against value·absmax, kbit's by u, its product rounding by u(1+u)³, so
//   |y_kbit − y_bnb| <= ulp_bf16(y) + (c·u + 2.1γ)·S,  c = ((1+u)³ − 1 + u + u(1+u)³) / (u(1 − u))
// (c ≈ 5.05). With 7 tokens the outputs are no closer (only ~45% equal, as with 1 token, where
// 64 tokens give 99.99%): cuBLAS's bf16 GEMM for so few rows evidently splits the sum and
// rounds partial sums to bf16 (torch allows that by default), each such rounding erring by at
// most u·S; the 1-token bound allows 5 of them.
// kbit's quantizer writes bitsandbytes' codes exactly (the GPU's approximate reciprocal is
// emulated), so the weights are the same on both sides. The test prints the largest |Δ| in
// ulps and the largest (|Δ| − ulp)/S in units of u.

TEST(Linear4bitGoldenTest, MatchesBitsandbytesCuda) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<io::SafetensorsFile> file = testing::open_golden("linear4bit.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const std::int64_t in = 512, out = 768, block_size = 64;
  const double u = std::ldexp(1.0, -8);
  const double c = (std::pow(1 + u, 3) - 1 + u + u * std::pow(1 + u, 3)) / (u * (1 - u));
  const double gamma = static_cast<double>(in + 2) * std::ldexp(1.0, -24);
  for (const std::string key : {"nf4", "nf4_dq", "fp4", "fp4_dq"}) {
    const FourBitType type = key.starts_with("nf4") ? FourBitType::kNf4 : FourBitType::kFp4;
    const std::vector<float> w =
        from_bf16(testing::golden_values<bf16>(*file, key + ".weight_bf16"));
    ASSERT_EQ(w.size(), static_cast<std::size_t>(out * in));
    const FourBitData data =
        quantize_weight(w, DType::kBF16, type, block_size, key.ends_with("_dq"));
    const std::vector<float> dequantized = data.dequantized();
    for (const std::int64_t tokens : {1, 7, 64}) {
      SCOPED_TRACE(key + " tokens " + std::to_string(tokens));
      const std::string suffix = std::to_string(tokens);
      const std::vector<float> x =
          from_bf16(testing::golden_values<bf16>(*file, key + ".x" + suffix));
      const std::vector<float> want =
          from_bf16(testing::golden_values<bf16>(*file, key + ".y" + suffix));
      ASSERT_EQ(want.size(), static_cast<std::size_t>(tokens * out));
      for (const CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
        std::vector<float> y(want.size(), kNaN);
        const Linear4bitJob job{x.data(), data.weight(), nullptr,      tokens,
                                in,       out,           DType::kBF16, y.data()};
        ExecutionOptions options;
        options.cpu_kernel = kernel;
        linear_4bit_op(job, options);
        double worst_ulps = 0.0, worst_sum_share = 0.0;
        std::int64_t equal = 0;
        for (std::int64_t m = 0; m < tokens; ++m) {
          for (std::int64_t o = 0; o < out; ++o) {
            double magnitude = 0.0;
            for (std::int64_t i = 0; i < in; ++i) {
              magnitude += std::fabs(static_cast<double>(x[static_cast<std::size_t>(m * in + i)]) *
                                     dequantized[static_cast<std::size_t>(o * in + i)]);
            }
            const auto at = static_cast<std::size_t>(m * out + o);
            const double step = ulp(DType::kBF16, std::max(std::fabs(y[at]), std::fabs(want[at])));
            const double sum_term =
                tokens < 64 ? (c * u + 2.1 * gamma) * magnitude : 2.0 * gamma * magnitude;
            const double error = std::fabs(static_cast<double>(y[at]) - want[at]);
            EXPECT_LE(error, step + sum_term) << "output [" << m << ", " << o << "] is " << y[at]
                                              << ", bitsandbytes " << want[at];
            worst_ulps = std::max(worst_ulps, error / step);
            worst_sum_share = std::max(worst_sum_share, (error - step) / (u * magnitude));
            equal += y[at] == want[at] ? 1 : 0;
          }
        }
        std::printf(
            "linear4bit %-6s tokens %2lld %-9s: max |delta| %6.2f bf16 ulp, "
            "max (|delta| - ulp)/S %5.3f u, %6.2f%% equal\n",
            key.c_str(), static_cast<long long>(tokens),
            kernel == CpuKernel::kFast ? "fast" : "reference", worst_ulps, worst_sum_share,
            100.0 * static_cast<double>(equal) / static_cast<double>(want.size()));
      }
    }
  }
}

// ---- linear_int8 on random data.

struct Int8Case {
  DType activation_dtype;
  DType bias_dtype;
  bool bias;
  float threshold;
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;

  std::string name() const {
    return "activation " + std::string(dtype_name(activation_dtype)) + " bias " +
           (bias ? std::string(dtype_name(bias_dtype)) : "none") + " threshold " +
           std::to_string(threshold) + " rows " + std::to_string(rows) + " in " +
           std::to_string(in) + " out " + std::to_string(out);
  }
};

class Int8Problem {
 public:
  Int8Problem(const Int8Case& c, std::uint64_t seed) : case_(c) {
    // The weight: f16 values quantized row-wise by kbit.
    const std::vector<float> w = random_values(c.out * c.in, seed, 0.05f, DType::kF16);
    std::vector<std::uint8_t> w16 = as_dtype(w, DType::kF16);
    codes_.resize(w.size());
    row_absmax_.resize(static_cast<std::size_t>(c.out));
    EXPECT_TRUE(quant::quantize_int8_rowwise(
                    TensorView(w16.data(), DType::kF16, Shape{c.out, c.in}), 0.0f,
                    TensorView(codes_.data(), DType::kI8, Shape{c.out, c.in}),
                    TensorView(row_absmax_.data(), DType::kF32, Shape{c.out}), nullptr)
                    .ok());
    row_sums_.resize(static_cast<std::size_t>(c.out));
    int8_code_row_sums(codes_.data(), c.out, c.in, row_sums_.data());
    // Activations with outliers in two columns, each in one row only, so that the other rows'
    // elements of those columns are ordinary values.
    x_ = random_values(c.rows * c.in, seed + 1, 1.0f, c.activation_dtype);
    x_[3] = round_to(c.activation_dtype, 9.5f);
    x_[static_cast<std::size_t>((c.rows - 1) * c.in + c.in - 5)] =
        round_to(c.activation_dtype, -20.25f);
    if (c.bias) bias_ = random_values(c.out, seed + 2, 1.0f, c.bias_dtype);
  }

  LinearInt8Job job(float* y) const {
    return LinearInt8Job{x_.data(),
                         Int8Weight{codes_.data(), row_absmax_.data(), row_sums_.data()},
                         bias_.empty() ? nullptr : bias_.data(),
                         case_.bias_dtype,
                         case_.rows,
                         case_.in,
                         case_.out,
                         case_.threshold,
                         case_.activation_dtype,
                         y};
  }

  std::vector<float> poisoned_output() const {
    return std::vector<float>(static_cast<std::size_t>(case_.rows * case_.out), kNaN);
  }

  // Steps 5-7 in float64 from the activation codes of quant::quantize_int8_rowwise. Bound: the
  // f32 steps of 6 err by a few 2^-24 relative, the f16 rounding (and the f16 bias add) by half
  // an f16 ulp each, the rounding to X's dtype by half its ulp, the outlier sum by γ·Σ|x·w'|
  // and its rounding by half an ulp of X's dtype:
  //   |y − y64| <= ulp_f16(|y6|) + ulp_X(|y6|) + ulp_X(|y|) + 2^-20 · S
  // with |y6| = |C·SCA·SCB/127²| + |bias| (f16 rounds the product before a non-f16 bias is
  // added) and S the sum of the magnitudes of every term.
  BoundCheck expectation() const {
    const Int8Case& c = case_;
    std::vector<std::int8_t> a(static_cast<std::size_t>(c.rows * c.in));
    std::vector<float> row_absmax(static_cast<std::size_t>(c.rows));
    std::vector<std::int64_t> columns;
    EXPECT_TRUE(quant::quantize_int8_rowwise(
                    TensorView(const_cast<float*>(x_.data()), DType::kF32, Shape{c.rows, c.in}),
                    c.threshold, TensorView(a.data(), DType::kI8, Shape{c.rows, c.in}),
                    TensorView(row_absmax.data(), DType::kF32, Shape{c.rows}), &columns)
                    .ok());
    if (c.threshold > 0.0f) {
      EXPECT_EQ(columns.size(), 2u) << "the test's outliers";
    }
    BoundCheck check;
    for (std::int64_t m = 0; m < c.rows; ++m) {
      for (std::int64_t o = 0; o < c.out; ++o) {
        std::int64_t product = 0;
        for (std::int64_t i = 0; i < c.in; ++i) {
          product += std::int64_t{a[static_cast<std::size_t>(m * c.in + i)]} *
                     codes_[static_cast<std::size_t>(o * c.in + i)];
        }
        const double bias = bias_.empty() ? 0.0 : bias_[static_cast<std::size_t>(o)];
        const double main = static_cast<double>(product) * row_absmax[static_cast<std::size_t>(m)] *
                            row_absmax_[static_cast<std::size_t>(o)] *
                            quant::kInt8MatmulDequantScale;
        double outliers = 0.0;
        double magnitude = std::fabs(main) + std::fabs(bias);
        for (const std::int64_t j : columns) {
          const float w = static_cast<float>(codes_[static_cast<std::size_t>(o * c.in + j)]) *
                          row_absmax_[static_cast<std::size_t>(o)] * quant::kInt8DequantScale;
          const double term = static_cast<double>(x_[static_cast<std::size_t>(m * c.in + j)]) *
                              round_to(c.activation_dtype, w);
          outliers += term;
          magnitude += std::fabs(term);
        }
        const double step6 = std::fabs(main) + std::fabs(bias);  // f16(main) rounds first
        const double y = main + bias + outliers;
        check.want.push_back(y);
        check.bound.push_back(ulp(DType::kF16, step6) + ulp(c.activation_dtype, step6) +
                              ulp(c.activation_dtype, std::fabs(y)) +
                              std::ldexp(1.0, -20) * magnitude);
      }
    }
    return check;
  }

 private:
  Int8Case case_;
  std::vector<std::int8_t> codes_;
  std::vector<float> row_absmax_;
  std::vector<std::int32_t> row_sums_;
  std::vector<float> x_;
  std::vector<float> bias_;
};

void expect_bit_equal(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << what << ": output " << i << " is " << got[i] << ", reference " << want[i];
  }
}

TEST(LinearInt8Test, FastEqualsReferenceAndBothMatchFloat64) {
  int variant = 0;
  for (const DType activation : kFloatTypes) {
    for (const float threshold : {0.0f, 6.0f}) {
      for (const std::int64_t rows : {1, 3, 17, 64}) {
        ++variant;
        const Int8Case c{activation,
                         kFloatTypes[variant % 3],
                         variant % 4 != 0,
                         threshold,
                         rows,
                         variant % 2 == 0 ? 1024 : 300,  // 300: a partial last vector of codes
                         variant % 3 == 0 ? 67 : 130};
        SCOPED_TRACE(c.name());
        const Int8Problem problem(c, 7000 + static_cast<std::uint64_t>(variant));
        std::vector<float> reference = problem.poisoned_output();
        linear_int8_reference(problem.job(reference.data()));
        problem.expectation().expect_within(reference, "reference");

        std::vector<float> fast = problem.poisoned_output();
        linear_int8_op(problem.job(fast.data()), fast_options());
        expect_bit_equal(fast, reference, "linear_int8_op");

        if (!active_cpu_has_avx512_vnni()) continue;
        // The VNNI kernel alone, on the reference's activation codes, in pieces.
        std::vector<float> vnni = problem.poisoned_output();
        const LinearInt8Job job = problem.job(vnni.data());
        std::vector<std::int8_t> codes(static_cast<std::size_t>(c.rows * c.in));
        std::vector<float> row_absmax(static_cast<std::size_t>(c.rows));
        std::vector<std::int64_t> columns;
        ASSERT_TRUE(quant::quantize_int8_rowwise(
                        TensorView(const_cast<float*>(job.x), DType::kF32, Shape{c.rows, c.in}),
                        c.threshold, TensorView(codes.data(), DType::kI8, Shape{c.rows, c.in}),
                        TensorView(row_absmax.data(), DType::kF32, Shape{c.rows}), &columns)
                        .ok());
        const Int8Activations activations{codes.data(), row_absmax.data(), columns.data(),
                                          static_cast<std::int64_t>(columns.size())};
        run_in_pieces(c.out, [&](std::int64_t b, std::int64_t e) {
          linear_int8_outputs_avx512_vnni(job, activations, b, e);
        });
        expect_bit_equal(vnni, reference, "linear_int8_outputs_avx512_vnni");
      }
    }
  }
}

TEST(LinearInt8Test, CodeRowSums) {
  const std::int8_t codes[] = {127, -127, 5, 0, -1, -2, 3, 100, -100};
  std::int32_t sums[3] = {};
  int8_code_row_sums(codes, 3, 3, sums);
  EXPECT_EQ(sums[0], 5);
  EXPECT_EQ(sums[1], -3);
  EXPECT_EQ(sums[2], 3);
}

// ---- linear_int8 against bitsandbytes (golden/int8.safetensors).
//
// Linear8bitLt 512 -> 1024 with an f16 bias, f16 activations of 16 rows with two outlier
// columns. The layer's int8 weight is state_weight_thr{T} (equal to weight_int8). With IEEE
// division kbit's activation codes equal the GPU's except values exactly on a half-integer
// (spec 6.3: none at τ = 0, one of 8192 at τ = 6), and the row-wise kernels emulate the GPU's
// division for those. With equal codes, steps 5-6 are exact integer arithmetic and the same f32
// expressions, so τ = 0 must match bit for bit. At τ = 6 the outlier part is torch's f16 addmm,
// which kbit follows with an f32 sum and one rounding; cuBLAS may round once more (an f16
// partial sum), so 2 f16 ulps are allowed (the spec's IEEE re-implementation saw 0.0078, one
// ulp at these |y| < 16).
TEST(LinearInt8GoldenTest, WeightQuantizationMatchesBitsandbytes) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<io::SafetensorsFile> file = testing::open_golden("int8.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  std::vector<f16> w16 = testing::golden_values<f16>(*file, "weight_f16");
  const std::vector<std::int8_t> want_codes =
      testing::golden_values<std::int8_t>(*file, "weight_int8");
  const std::vector<float> want_absmax = testing::golden_values<float>(*file, "weight_SCB");
  const std::int64_t out = 1024, in = 512;
  std::vector<std::int8_t> codes(static_cast<std::size_t>(out * in));
  std::vector<float> absmax(static_cast<std::size_t>(out));
  ASSERT_TRUE(
      quant::quantize_int8_rowwise(TensorView(w16.data(), DType::kF16, Shape{out, in}), 0.0f,
                                   TensorView(codes.data(), DType::kI8, Shape{out, in}),
                                   TensorView(absmax.data(), DType::kF32, Shape{out}), nullptr)
          .ok());
  EXPECT_EQ(absmax, want_absmax);
  // Differing codes may only be values on a half-integer, which the GPU's approximate division
  // rounds to the other side.
  std::int64_t differing = 0;
  for (std::size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] == want_codes[i]) continue;
    ++differing;
    const float scaled = f16_to_f32(w16[i]) * (127.0f / absmax[i / static_cast<std::size_t>(in)]);
    EXPECT_NEAR(std::fabs(scaled - std::trunc(scaled)), 0.5, 1e-4) << "code " << i;
    EXPECT_EQ(std::abs(codes[i] - want_codes[i]), 1) << "code " << i;
  }
  std::printf("int8 weight: %lld of %zu codes differ from bitsandbytes' (half-integer cases)\n",
              static_cast<long long>(differing), codes.size());
}

TEST(LinearInt8GoldenTest, MatchesBitsandbytesCuda) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<io::SafetensorsFile> file = testing::open_golden("int8.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const std::int64_t rows = 16, in = 512, out = 1024;
  const std::vector<float> x = from_f16(testing::golden_values<f16>(*file, "x_f16"));
  const std::vector<float> row_absmax = testing::golden_values<float>(*file, "weight_SCB");
  for (const int threshold : {0, 6}) {
    SCOPED_TRACE("threshold " + std::to_string(threshold));
    const std::string suffix = "_thr" + std::to_string(threshold);
    const std::vector<std::int8_t> codes =
        testing::golden_values<std::int8_t>(*file, "state_weight" + suffix);
    const std::vector<float> bias = from_f16(testing::golden_values<f16>(*file, "bias" + suffix));
    const std::vector<float> want = from_f16(testing::golden_values<f16>(*file, "y" + suffix));
    std::vector<std::int32_t> row_sums(static_cast<std::size_t>(out));
    int8_code_row_sums(codes.data(), out, in, row_sums.data());
    const double allowed_ulps = threshold == 0 ? 0.0 : 2.0;
    for (const CpuKernel kernel : {CpuKernel::kReference, CpuKernel::kFast}) {
      std::vector<float> y(static_cast<std::size_t>(rows * out), kNaN);
      const LinearInt8Job job{
          x.data(),    Int8Weight{codes.data(), row_absmax.data(), row_sums.data()},
          bias.data(), DType::kF16,
          rows,        in,
          out,         static_cast<float>(threshold),
          DType::kF16, y.data()};
      ExecutionOptions options;
      options.cpu_kernel = kernel;
      linear_int8_op(job, options);
      double worst_ulps = 0.0, worst_abs = 0.0;
      std::int64_t equal = 0;
      for (std::size_t i = 0; i < y.size(); ++i) {
        const double error = std::fabs(static_cast<double>(y[i]) - want[i]);
        const double ulps = error / ulp(DType::kF16, std::max(std::fabs(y[i]), std::fabs(want[i])));
        EXPECT_LE(ulps, allowed_ulps)
            << "output " << i << " is " << y[i] << ", bitsandbytes " << want[i];
        worst_ulps = std::max(worst_ulps, ulps);
        worst_abs = std::max(worst_abs, error);
        equal += y[i] == want[i] ? 1 : 0;
      }
      std::printf("int8 threshold %d %-9s: max |delta| %.4g (%.1f f16 ulp), %.2f%% equal\n",
                  threshold, kernel == CpuKernel::kFast ? "fast" : "reference", worst_abs,
                  worst_ulps, 100.0 * static_cast<double>(equal) / static_cast<double>(y.size()));
    }
  }
}

}  // namespace
}  // namespace kbit::kernels::cpu
