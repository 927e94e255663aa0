// Every fast CPU kernel (AVX2, AVX-512) against the reference kernel, byte for byte: random data
// of several scales and lengths, every dtype and block size, the edge cases of each format, and
// calls on sub-ranges of blocks or rows as the thread pool makes them. Output buffers are
// poisoned first, so a byte the fast kernel forgets to write shows up.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kbit/core/cpu_features.h"
#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/dynamic_map_bounds.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/int8_rowwise.h"

namespace kbit::kernels::cpu {
namespace {

constexpr std::uint8_t kPoison = 0xab;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const DType kFloatTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
const std::int64_t k4bitBlockSizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
const std::int64_t k8bitBlockSizes[] = {64, 128, 256, 512, 1024, 2048, 4096};

// ---- Test data: raw bytes of n elements of a float dtype.

struct FloatArray {
  DType dtype;
  std::int64_t n;
  std::vector<std::uint8_t> bytes;

  FloatArray(DType type, std::int64_t count)
      : dtype(type), n(count), bytes(static_cast<std::size_t>(count) * dtype_size(type)) {}
  TensorView view() { return TensorView(bytes.data(), dtype, Shape{n}); }
  float at(std::int64_t i) const {
    float value = 0.0f;
    visit_float_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      T element;
      std::memcpy(&element, bytes.data() + i * static_cast<std::int64_t>(sizeof(T)), sizeof(T));
      value = to_f32(element);
    });
    return value;
  }
  void set(std::int64_t i, float value) {
    visit_float_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const T element = from_f32<T>(value);
      std::memcpy(bytes.data() + i * static_cast<std::int64_t>(sizeof(T)), &element, sizeof(T));
    });
  }
};

FloatArray random_array(DType dtype, std::int64_t n, std::uint64_t seed, float stddev) {
  FloatArray array(dtype, n);
  EXPECT_TRUE(fill_normal(array.view(), seed, 0.0f, stddev).ok());
  return array;
}

FloatArray array_of(DType dtype, const std::vector<float>& values) {
  FloatArray array(dtype, static_cast<std::int64_t>(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i)
    array.set(static_cast<std::int64_t>(i), values[i]);
  return array;
}

template <typename T>
std::vector<std::uint8_t> poisoned(std::int64_t count) {
  return std::vector<std::uint8_t>(static_cast<std::size_t>(count) * sizeof(T), kPoison);
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// Calls kernel on [0, items) in three uneven pieces, as a thread pool might split it.
template <typename Job>
void run_in_pieces(void (*kernel)(const Job&, std::int64_t, std::int64_t), const Job& job,
                   std::int64_t items) {
  const std::int64_t first_cut = items / 3;
  const std::int64_t second_cut = std::max(first_cut, items - items / 5);
  kernel(job, 0, first_cut);
  kernel(job, first_cut, second_cut);
  kernel(job, second_cut, items);
}

// Index of the first differing element of `element_size` bytes, or -1.
std::int64_t first_mismatch(const std::vector<std::uint8_t>& expected,
                            const std::vector<std::uint8_t>& actual, std::size_t element_size) {
  if (expected.size() != actual.size()) return 0;
  if (std::memcmp(expected.data(), actual.data(), expected.size()) == 0) return -1;
  for (std::size_t i = 0; i < expected.size(); i += element_size) {
    if (std::memcmp(expected.data() + i, actual.data() + i, element_size) != 0) {
      return static_cast<std::int64_t>(i / element_size);
    }
  }
  return -1;
}

float float_at(const std::vector<std::uint8_t>& bytes, std::int64_t i) {
  float value;
  std::memcpy(&value, bytes.data() + i * 4, 4);
  return value;
}

std::string hex(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%x", value);
  return text;
}

// ---- Instruction sets.

class FastKernelTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    if (detected_cpu_isa() < GetParam()) {
      GTEST_SKIP() << "this CPU lacks " << cpu_isa_name(GetParam()) << "; its kernels are untested";
    }
  }
  template <typename Kernel>
  Kernel pick(Kernel avx2, Kernel avx512) const {
    return GetParam() == CpuIsa::kAvx512 ? avx512 : avx2;
  }
};

std::string isa_test_name(const ::testing::TestParamInfo<CpuIsa>& info) {
  return std::string(cpu_isa_name(info.param));
}

// ---- 4-bit.

class FourBitKernelTest : public FastKernelTest {
 protected:
  void check_quantize(const FloatArray& input, quant::FourBitType type, std::int64_t block_size,
                      const std::string& context) {
    const std::int64_t blocks = ceil_div(input.n, block_size);
    const std::int64_t packed_bytes = (input.n + 1) / 2;
    std::vector<std::uint8_t> expected_packed = poisoned<std::uint8_t>(packed_bytes);
    std::vector<std::uint8_t> expected_absmax = poisoned<float>(blocks);
    std::vector<std::uint8_t> packed = poisoned<std::uint8_t>(packed_bytes);
    std::vector<std::uint8_t> absmax = poisoned<float>(blocks);
    Quantize4bitJob job{input.bytes.data(),
                        input.dtype,
                        input.n,
                        type,
                        block_size,
                        expected_packed.data(),
                        reinterpret_cast<float*>(expected_absmax.data())};
    quantize_4bit_reference(job, 0, blocks);
    job.packed = packed.data();
    job.absmax = reinterpret_cast<float*>(absmax.data());
    run_in_pieces(pick(quantize_4bit_avx2, quantize_4bit_avx512), job, blocks);

    const std::string where = context + " " + std::string(dtype_name(input.dtype)) + " " +
                              std::string(quant::four_bit_type_name(type)) + " block " +
                              std::to_string(block_size) + " n " + std::to_string(input.n);
    const std::int64_t bad_block = first_mismatch(expected_absmax, absmax, sizeof(float));
    ASSERT_EQ(bad_block, -1) << where << ": absmax of block " << bad_block << " is "
                             << float_at(absmax, bad_block) << ", reference "
                             << float_at(expected_absmax, bad_block);
    const std::int64_t bad_byte = first_mismatch(expected_packed, packed, 1);
    if (bad_byte >= 0) {
      const std::int64_t i = 2 * bad_byte;
      ADD_FAILURE() << where << ": byte " << bad_byte << " (values " << input.at(i) << ", "
                    << (i + 1 < input.n ? input.at(i + 1) : 0.0f) << "; block absmax "
                    << float_at(expected_absmax, i / block_size) << ") is "
                    << hex(packed[static_cast<std::size_t>(bad_byte)]) << ", reference "
                    << hex(expected_packed[static_cast<std::size_t>(bad_byte)]);
    }
  }

  void check_dequantize(const std::vector<std::uint8_t>& packed, const std::vector<float>& absmax,
                        quant::FourBitType type, std::int64_t block_size, std::int64_t n,
                        DType output_dtype) {
    const std::int64_t blocks = ceil_div(n, block_size);
    const std::size_t element = dtype_size(output_dtype);
    std::vector<std::uint8_t> expected(static_cast<std::size_t>(n) * element, kPoison);
    std::vector<std::uint8_t> actual(expected.size(), kPoison);
    Dequantize4bitJob job{packed.data(),   absmax.data(), type, block_size, n,
                          expected.data(), output_dtype};
    dequantize_4bit_reference(job, 0, blocks);
    job.output = actual.data();
    run_in_pieces(pick(dequantize_4bit_avx2, dequantize_4bit_avx512), job, blocks);
    const std::int64_t bad = first_mismatch(expected, actual, element);
    if (bad >= 0) {
      const std::uint8_t byte = packed[static_cast<std::size_t>(bad / 2)];
      ADD_FAILURE() << dtype_name(output_dtype) << " " << quant::four_bit_type_name(type)
                    << " block " << block_size << " n " << n << ": element " << bad << " (code "
                    << (bad % 2 == 0 ? byte >> 4 : byte & 0x0f) << ", absmax "
                    << absmax[static_cast<std::size_t>(bad / block_size)] << ") differs";
    }
  }
};

const quant::FourBitType kFourBitTypes[] = {quant::FourBitType::kNf4, quant::FourBitType::kFp4};

std::vector<std::int64_t> lengths_for(std::int64_t block_size) {
  return {1, 2, 3, 17, 31, 33, 63, block_size - 1, block_size, block_size + 1, 3 * block_size + 17};
}

TEST_P(FourBitKernelTest, QuantizeRandomDataMatchesReference) {
  std::uint64_t seed = 100;
  for (const DType dtype : kFloatTypes) {
    for (const std::int64_t block_size : k4bitBlockSizes) {
      for (const std::int64_t n : lengths_for(block_size)) {
        for (const float scale : {1.0f, 1e-3f, 300.0f}) {
          const FloatArray input = random_array(dtype, n, ++seed, scale);
          for (const auto type : kFourBitTypes) check_quantize(input, type, block_size, "random");
        }
      }
    }
  }
}

TEST_P(FourBitKernelTest, QuantizeLargeTensorsMatchReference) {
  for (const DType dtype : kFloatTypes) {
    for (const std::int64_t block_size : {32, 64, 4096}) {
      const FloatArray input = random_array(dtype, 1'000'001, 7 + block_size, 2.0f);
      for (const auto type : kFourBitTypes) check_quantize(input, type, block_size, "large");
    }
  }
}

// Values whose normalised x lands exactly on a threshold, or one float away from it.
std::vector<float> four_bit_boundary_values() {
  std::vector<float> values = {1.0f};  // absmax 1: x equals the value exactly
  auto add_with_neighbours = [&](float x) {
    values.push_back(x);
    values.push_back(std::nextafter(x, kInf));
    values.push_back(std::nextafter(x, -kInf));
    values.push_back(-x);
  };
  for (const float t : quant::kNf4Thresholds) add_with_neighbours(t);
  for (const float t : quant::kFp4MagnitudeThresholds) add_with_neighbours(t);
  for (const float v : quant::kNf4Values) add_with_neighbours(v);
  return values;
}

// Blocks of multiples of absmax / 24, so that ratios like 7/24 (an FP4 threshold) occur exactly
// in every dtype, and of absmax / 254 for the int8 ties.
std::vector<float> fraction_values(std::int64_t count, int denominator) {
  std::vector<float> values(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const int numerator = static_cast<int>(i % (2 * denominator + 1)) - denominator;
    values[static_cast<std::size_t>(i)] = static_cast<float>(numerator) * 3.0f;
  }
  values[0] = 3.0f * static_cast<float>(denominator);  // the absmax
  return values;
}

std::vector<float> edge_case_values(DType dtype) {
  const float huge = dtype == DType::kF16 ? 65504.0f : 3.0e38f;
  const float tiny = dtype == DType::kF16 ? 6e-8f : 1e-40f;  // subnormal in the dtype
  std::vector<float> values;
  auto add_block = [&](std::vector<float> block) {
    block.resize(64, block.empty() ? 0.0f : block.back());
    values.insert(values.end(), block.begin(), block.end());
  };
  add_block({0.0f});                              // all zero
  add_block({-0.0f, 0.0f, -0.0f});                // signed zeros
  add_block({tiny, -tiny, 2 * tiny, 0.0f});       // subnormal absmax: 1 / absmax is inf
  add_block({1.0f, tiny, -tiny, -0.0f, 1e-30f});  // subnormals beside normal values
  add_block({huge, -huge, huge / 3, 1.0f});       // huge values
  add_block({-huge, 0.5f, -0.25f});               // negative absmax
  add_block({1.0f, kNaN, 0.5f});                  // NaN: this block's absmax is NaN
  add_block({-kInf, 0.25f});                      // Inf: likewise
  add_block({0.75f, 0.5f, 0.25f});                // after non-finite blocks: normal again
  add_block(fraction_values(64, 24));
  return values;
}

TEST_P(FourBitKernelTest, QuantizeEdgeCasesMatchReference) {
  for (const DType dtype : kFloatTypes) {
    std::vector<float> values = edge_case_values(dtype);
    const std::vector<float> boundary = four_bit_boundary_values();
    values.insert(values.end(), boundary.begin(), boundary.end());
    const std::vector<float> fractions = fraction_values(4096 * 2, 24);
    values.insert(values.end(), fractions.begin(), fractions.end());
    const FloatArray input = array_of(dtype, values);
    for (const std::int64_t block_size : k4bitBlockSizes) {
      for (const auto type : kFourBitTypes) {
        check_quantize(input, type, block_size, "edge cases");
        // The odd-length prefix ends in a padding nibble inside a block with NaN or not.
        FloatArray prefix = input;
        prefix.n = 64 * 7 + 33;
        prefix.bytes.resize(static_cast<std::size_t>(prefix.n) * dtype_size(dtype));
        check_quantize(prefix, type, block_size, "edge-case prefix");
      }
    }
  }
}

TEST_P(FourBitKernelTest, NonFiniteValuesMakeOnlyTheirBlockNaN) {
  std::vector<float> values(256, 0.5f);
  values[70] = kNaN;
  values[200] = -kInf;
  const FloatArray input = array_of(DType::kF32, values);
  std::vector<std::uint8_t> packed(128);
  std::vector<float> absmax(4);
  const Quantize4bitJob job{input.bytes.data(), DType::kF32,  256, quant::FourBitType::kNf4, 64,
                            packed.data(),      absmax.data()};
  pick(quantize_4bit_avx2, quantize_4bit_avx512)(job, 0, 4);
  EXPECT_EQ(absmax[0], 0.5f);
  EXPECT_TRUE(std::isnan(absmax[1]));
  EXPECT_EQ(absmax[2], 0.5f);
  EXPECT_TRUE(std::isnan(absmax[3]));
}

TEST_P(FourBitKernelTest, DequantizeMatchesReference) {
  std::uint64_t seed = 900;
  for (const std::int64_t block_size : k4bitBlockSizes) {
    for (std::int64_t n : lengths_for(block_size)) {
      if (block_size == 64) n = n * 1000 + 1;  // a large tensor too
      const std::int64_t blocks = ceil_div(n, block_size);
      // Random code bytes, and absmax values of every kind, special ones included.
      const FloatArray code_source = random_array(DType::kF32, (n + 1) / 2, ++seed, 100.0f);
      std::vector<std::uint8_t> packed(static_cast<std::size_t>((n + 1) / 2));
      for (std::size_t i = 0; i < packed.size(); ++i) {
        packed[i] = static_cast<std::uint8_t>(
            std::bit_cast<std::uint32_t>(code_source.at(static_cast<std::int64_t>(i))));
      }
      const FloatArray scale_source = random_array(DType::kF32, blocks, ++seed, 10.0f);
      std::vector<float> absmax(static_cast<std::size_t>(blocks));
      const float specials[] = {
          0.0f,   kNaN,     kInf,     3.0e38f,
          1e-40f, 65519.0f, 65520.0f, std::bit_cast<float>(0x7fa00001u) /* NaN with a payload */};
      for (std::int64_t b = 0; b < blocks; ++b) {
        absmax[static_cast<std::size_t>(b)] =
            b % 5 == 4 ? specials[(b / 5) % 8] : std::fabs(scale_source.at(b));
      }
      for (const DType dtype : kFloatTypes) {
        for (const auto type : kFourBitTypes) {
          check_dequantize(packed, absmax, type, block_size, n, dtype);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, FourBitKernelTest, ::testing::Values(CpuIsa::kAvx2, CpuIsa::kAvx512),
                         isa_test_name);

// ---- 8-bit.

const quant::DynamicMap kMaps[] = {quant::DynamicMap::kSigned, quant::DynamicMap::kUnsigned};

const float* map_values(quant::DynamicMap map) {
  return map == quant::DynamicMap::kSigned ? quant::kDynamicSignedMap.data()
                                           : quant::kDynamicUnsignedMap.data();
}

// Every x that sits on, or within `ulps` floats of, a bound of the search (a midpoint) or a map
// value, on both sides of zero; and the special values.
std::vector<float> dynamic_map_boundary_values(const float* map, int ulps) {
  std::vector<float> values = {0.0f, -0.0f, kNaN, kInf, -kInf, 1e-45f, -1e-45f, 2.0f, -2.0f};
  auto add_around = [&](float centre) {
    float up = centre;
    float down = centre;
    for (int step = 0; step <= ulps; ++step) {
      values.insert(values.end(), {up, down, -up, -down});
      up = std::nextafter(up, kInf);
      down = std::nextafter(down, -kInf);
    }
  };
  for (int k = 0; k < 256; ++k) add_around(map[k]);
  for (int k = 0; k < 255; ++k) add_around((map[k] + map[k + 1]) * 0.5f);
  return values;
}

// The count formulation of dynamic_map_bounds.h, evaluated directly.
std::uint8_t code_by_bounds(float x, const DynamicMapBounds& bounds) {
  int code = 0;
  for (const float bound : bounds.above) code += x > bound ? 1 : 0;
  return static_cast<std::uint8_t>(code);
}

TEST(DynamicMapBoundsTest, CountEqualsBitsandbytesSearchAtEveryBoundary) {
  for (const auto map_kind : kMaps) {
    const float* map = map_values(map_kind);
    const DynamicMapBounds bounds = dynamic_map_bounds(map);
    ASSERT_TRUE(std::is_sorted(bounds.above.begin(), bounds.above.end()));
    for (const float x : dynamic_map_boundary_values(map, 64)) {
      ASSERT_EQ(code_by_bounds(x, bounds), search_dynamic_map(x, map))
          << "x = " << x << " (" << hex(std::bit_cast<std::uint32_t>(x)) << ")";
    }
    // And away from the boundaries: a sweep of random normalised values.
    const FloatArray sweep = random_array(DType::kF32, 200'000, 5, 0.3f);
    for (std::int64_t i = 0; i < sweep.n; ++i) {
      ASSERT_EQ(code_by_bounds(sweep.at(i), bounds), search_dynamic_map(sweep.at(i), map))
          << "x = " << sweep.at(i);
    }
  }
}

class EightBitKernelTest : public FastKernelTest {
 protected:
  void check_quantize(const FloatArray& input, quant::DynamicMap map, std::int64_t block_size,
                      const std::string& context) {
    const std::int64_t blocks = ceil_div(input.n, block_size);
    std::vector<std::uint8_t> expected_codes = poisoned<std::uint8_t>(input.n);
    std::vector<std::uint8_t> expected_absmax = poisoned<float>(blocks);
    std::vector<std::uint8_t> codes = poisoned<std::uint8_t>(input.n);
    std::vector<std::uint8_t> absmax = poisoned<float>(blocks);
    Quantize8bitJob job{input.bytes.data(),
                        input.dtype,
                        input.n,
                        map_values(map),
                        block_size,
                        expected_codes.data(),
                        reinterpret_cast<float*>(expected_absmax.data())};
    quantize_8bit_reference(job, 0, blocks);
    job.codes = codes.data();
    job.absmax = reinterpret_cast<float*>(absmax.data());
    run_in_pieces(pick(quantize_8bit_avx2, quantize_8bit_avx512), job, blocks);

    const std::string where = context + " " + std::string(dtype_name(input.dtype)) + " block " +
                              std::to_string(block_size) + " n " + std::to_string(input.n);
    const std::int64_t bad_block = first_mismatch(expected_absmax, absmax, sizeof(float));
    ASSERT_EQ(bad_block, -1) << where << ": absmax of block " << bad_block << " is "
                             << float_at(absmax, bad_block) << ", reference "
                             << float_at(expected_absmax, bad_block);
    const std::int64_t bad = first_mismatch(expected_codes, codes, 1);
    if (bad >= 0) {
      ADD_FAILURE() << where << ": element " << bad << " (value " << input.at(bad)
                    << ", block absmax " << float_at(expected_absmax, bad / block_size)
                    << ") has code " << int{codes[static_cast<std::size_t>(bad)]} << ", reference "
                    << int{expected_codes[static_cast<std::size_t>(bad)]};
    }
  }
};

TEST_P(EightBitKernelTest, QuantizeRandomDataMatchesReference) {
  std::uint64_t seed = 2000;
  for (const DType dtype : kFloatTypes) {
    for (const std::int64_t block_size : k8bitBlockSizes) {
      for (const std::int64_t n :
           {std::int64_t{1}, std::int64_t{3}, std::int64_t{63}, block_size - 1, block_size,
            block_size + 1, 3 * block_size + 17}) {
        for (const float scale : {1.0f, 1e-4f, 500.0f}) {
          const FloatArray input = random_array(dtype, n, ++seed, scale);
          for (const auto map : kMaps) check_quantize(input, map, block_size, "random");
        }
      }
    }
    const FloatArray large = random_array(dtype, 1'000'003, ++seed, 1.0f);
    for (const auto map : kMaps) check_quantize(large, map, 256, "large");
  }
}

TEST_P(EightBitKernelTest, QuantizeEveryBoundaryMatchesReference) {
  // Blocks of 64 led by 2.0, so absmax = 2 and each x = value / 2 exactly: the search sees every
  // boundary value of the map itself (in f32; in f16 and bf16, their roundings).
  for (const auto map : kMaps) {
    const std::vector<float> xs = dynamic_map_boundary_values(map_values(map), 8);
    std::vector<float> values;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (i % 63 == 0) values.push_back(2.0f);
      values.push_back(std::isfinite(xs[i]) && std::fabs(xs[i]) <= 1.0f ? 2.0f * xs[i] : 0.5f);
    }
    for (const DType dtype : kFloatTypes) {
      const FloatArray input = array_of(dtype, values);
      check_quantize(input, map, 64, "boundaries");
    }
  }
}

TEST_P(EightBitKernelTest, QuantizeEdgeCasesMatchReference) {
  for (const DType dtype : kFloatTypes) {
    std::vector<float> values = edge_case_values(dtype);
    const std::vector<float> fractions = fraction_values(4096 + 100, 24);
    values.insert(values.end(), fractions.begin(), fractions.end());
    const FloatArray input = array_of(dtype, values);
    for (const std::int64_t block_size : k8bitBlockSizes) {
      for (const auto map : kMaps) check_quantize(input, map, block_size, "edge cases");
    }
  }
}

TEST_P(EightBitKernelTest, DequantizeMatchesReference) {
  std::uint64_t seed = 3000;
  for (const std::int64_t block_size : k8bitBlockSizes) {
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{7}, block_size - 1, block_size,
                                 3 * block_size + 5, std::int64_t{300'001}}) {
      const std::int64_t blocks = ceil_div(n, block_size);
      std::vector<std::uint8_t> codes(static_cast<std::size_t>(n));
      const FloatArray code_source = random_array(DType::kF32, n, ++seed, 100.0f);
      for (std::int64_t i = 0; i < n; ++i) {
        codes[static_cast<std::size_t>(i)] =
            static_cast<std::uint8_t>(std::bit_cast<std::uint32_t>(code_source.at(i)));
      }
      std::vector<float> absmax(static_cast<std::size_t>(blocks));
      const float specials[] = {0.0f, kNaN, kInf, 3.0e38f, 1e-40f, 65520.0f};
      for (std::int64_t b = 0; b < blocks; ++b) {
        absmax[static_cast<std::size_t>(b)] =
            b % 4 == 3 ? specials[(b / 4) % 6] : 0.5f + static_cast<float>(b % 17);
      }
      for (const DType dtype : kFloatTypes) {
        for (const auto map : kMaps) {
          const std::size_t element = dtype_size(dtype);
          std::vector<std::uint8_t> expected(static_cast<std::size_t>(n) * element, kPoison);
          std::vector<std::uint8_t> actual(expected.size(), kPoison);
          Dequantize8bitJob job{codes.data(),    absmax.data(), map_values(map), block_size, n,
                                expected.data(), dtype};
          dequantize_8bit_reference(job, 0, blocks);
          job.output = actual.data();
          run_in_pieces(pick(dequantize_8bit_avx2, dequantize_8bit_avx512), job, blocks);
          const std::int64_t bad = first_mismatch(expected, actual, element);
          EXPECT_EQ(bad, -1) << dtype_name(dtype) << " block " << block_size << " n " << n
                             << ": element " << bad << " differs (code "
                             << int{codes[static_cast<std::size_t>(std::max<std::int64_t>(bad, 0))]}
                             << ")";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, EightBitKernelTest, ::testing::Values(CpuIsa::kAvx2, CpuIsa::kAvx512),
                         isa_test_name);

// ---- int8 row-wise.

class Int8RowwiseKernelTest : public FastKernelTest {
 protected:
  void check_quantize(const FloatArray& input, std::int64_t rows, float threshold,
                      const std::string& context) {
    const std::int64_t cols = input.n / rows;
    std::vector<std::uint8_t> expected_codes = poisoned<std::int8_t>(input.n);
    std::vector<std::uint8_t> expected_absmax = poisoned<float>(rows);
    std::vector<std::uint8_t> codes = poisoned<std::int8_t>(input.n);
    std::vector<std::uint8_t> absmax = poisoned<float>(rows);
    Int8RowwiseJob job{input.bytes.data(),
                       input.dtype,
                       rows,
                       cols,
                       threshold,
                       reinterpret_cast<std::int8_t*>(expected_codes.data()),
                       reinterpret_cast<float*>(expected_absmax.data())};
    quantize_int8_rowwise_reference(job, 0, rows);
    job.codes = reinterpret_cast<std::int8_t*>(codes.data());
    job.row_absmax = reinterpret_cast<float*>(absmax.data());
    run_in_pieces(pick(quantize_int8_rowwise_avx2, quantize_int8_rowwise_avx512), job, rows);

    const std::string where = context + " " + std::string(dtype_name(input.dtype)) + " [" +
                              std::to_string(rows) + ", " + std::to_string(cols) + "] threshold " +
                              std::to_string(threshold);
    const std::int64_t bad_row = first_mismatch(expected_absmax, absmax, sizeof(float));
    ASSERT_EQ(bad_row, -1) << where << ": absmax of row " << bad_row << " is "
                           << float_at(absmax, bad_row) << ", reference "
                           << float_at(expected_absmax, bad_row);
    const std::int64_t bad = first_mismatch(expected_codes, codes, 1);
    if (bad >= 0) {
      ADD_FAILURE() << where << ": element " << bad << " (value " << input.at(bad)
                    << ", row absmax " << float_at(expected_absmax, bad / cols) << ") has code "
                    << int{static_cast<std::int8_t>(codes[static_cast<std::size_t>(bad)])}
                    << ", reference "
                    << int{static_cast<std::int8_t>(expected_codes[static_cast<std::size_t>(bad)])};
    }
  }
};

TEST_P(Int8RowwiseKernelTest, QuantizeRandomDataMatchesReference) {
  struct MatrixShape {
    std::int64_t rows, cols;
  };
  const MatrixShape shapes[] = {{1, 1}, {3, 7}, {5, 17}, {2, 4099}, {64, 1000}, {250, 4096}};
  std::uint64_t seed = 4000;
  for (const DType dtype : kFloatTypes) {
    for (const MatrixShape shape : shapes) {
      for (const float scale : {1.0f, 3.0f, 1e-3f, 2e4f}) {
        const FloatArray input = random_array(dtype, shape.rows * shape.cols, ++seed, scale);
        for (const float threshold : {0.0f, 6.0f, 0.5f}) {
          check_quantize(input, shape.rows, threshold, "random");
        }
      }
    }
  }
}

TEST_P(Int8RowwiseKernelTest, QuantizeEdgeCasesMatchReference) {
  const std::int64_t cols = 37;
  std::vector<std::vector<float>> rows = {
      {0.0f},                                              // all zero
      {-0.0f, 0.0f},                                       // signed zeros
      {127.0f, 63.5f, 0.5f, 1.5f, -2.5f, -63.5f, 126.5f},  // exact half-integer codes
      {6.0f, -6.0f, 5.9999f, 6.0001f, 1.0f},  // on the threshold, before and after f16 rounding
      {7.0f, -9.0f, 100.0f},                  // only outliers: absmax 0
      {65504.0f, -65504.0f, 1.0f},            // the f16 limit
      {65520.0f, 1.0f},                       // rounds to Inf in f16: row absmax NaN
      {1.0f, kNaN, 2.0f},                     // NaN: row absmax NaN
      {kInf, 0.5f},                           // Inf
      {1e-7f, -3e-8f, 6e-8f, 1e-9f},          // f16 subnormals and underflow
      {3.0e38f, 1.0f},                        // beyond f16 in f32
  };
  std::vector<float> values;
  for (std::vector<float>& row : rows) {
    const std::size_t given = row.size();
    for (std::size_t j = given; j < static_cast<std::size_t>(cols); ++j) {
      row.push_back(row[j % given] * static_cast<float>(j % 3) / 2.0f);
    }
    values.insert(values.end(), row.begin(), row.end());
  }
  const std::vector<float> ties = fraction_values(cols * 4, 127);
  values.insert(values.end(), ties.begin(), ties.end());
  const std::int64_t row_count = static_cast<std::int64_t>(values.size()) / cols;
  for (const DType dtype : kFloatTypes) {
    const FloatArray input = array_of(dtype, values);
    for (const float threshold : {0.0f, 6.0f, 64.0f}) {
      check_quantize(input, row_count, threshold, "edge cases");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, Int8RowwiseKernelTest,
                         ::testing::Values(CpuIsa::kAvx2, CpuIsa::kAvx512), isa_test_name);

}  // namespace
}  // namespace kbit::kernels::cpu
