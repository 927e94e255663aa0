// GPU tests of the quantization kernels, through the public API on Device::cuda(0):
//   - against the CPU reference kernels on fresh random data: codes, absmax and dequantized
//     outputs equal bit for bit (the CPU emulates the GPU's approximate reciprocal and division,
//     kernels/cpu/gpu_approx_math.h; gpu_approx_math_test.cc checks that emulation);
//   - against bitsandbytes' own CUDA outputs in ../shared/golden: every byte equal;
//   - error reporting for non-finite inputs, and the caching device allocator.
// Every output is poisoned (0xAB bytes) before the kernel runs, so an element left unwritten
// shows up as a difference.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kbit/core/allocator.h"
#include "kbit/core/random.h"
#include "kbit/core/tensor.h"
#include "kbit/io/safetensors.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/blockwise_8bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/decode_tiles.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "testing/shared_data.h"

namespace kbit {
namespace {

using quant::DynamicMap;
using quant::FourBitType;

// The scalar CPU reference kernels: the definition the GPU is compared with.
ExecutionOptions reference_options() {
  ExecutionOptions options;
  options.cpu_kernel = CpuKernel::kReference;
  return options;
}
const ExecutionOptions kReference = reference_options();

// ---- Helpers. Failures of the plumbing throw; GoogleTest reports them as test failures.

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.to_string());
}

template <typename T>
T must(Result<T> result) {
  check(result.status());
  return std::move(result).value();
}

Tensor host_tensor(Shape shape, DType dtype) {
  return must(Tensor::empty(shape, dtype));
}

// A device tensor whose bytes are all 0xAB.
Tensor poisoned_device_tensor(Shape shape, DType dtype) {
  Tensor tensor = must(Tensor::empty(shape, dtype, Device::cuda(0)));
  if (cudaMemset(tensor.view().data(), 0xAB, tensor.nbytes()) != cudaSuccess) {
    throw std::runtime_error("cudaMemset failed");
  }
  return tensor;
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

void set_value(const TensorView& tensor, std::int64_t i, float value) {
  switch (tensor.dtype()) {
    case DType::kF32:
      tensor.data_as<float>()[i] = value;
      return;
    case DType::kF16:
      tensor.data_as<f16>()[i] = f32_to_f16(value);
      return;
    case DType::kBF16:
      tensor.data_as<bf16>()[i] = f32_to_bf16(value);
      return;
    default:
      throw std::runtime_error("set_value needs a float tensor");
  }
}

// Normal random values with an outlier and, where the tensor has a second block, an all-zero
// block: the cases where absmax and the NaN rule matter.
Tensor random_input(Shape shape, DType dtype, std::uint64_t seed, std::int64_t block_size) {
  Tensor tensor = host_tensor(shape, dtype);
  check(fill_normal(tensor.view(), seed));
  const std::int64_t n = tensor.numel();
  set_value(tensor.view(), (n * 3) / 7, 40.0f);
  if (n >= 3 * block_size) {
    for (std::int64_t i = block_size; i < 2 * block_size; ++i) set_value(tensor.view(), i, 0.0f);
  }
  return tensor;
}

std::uint32_t bits_at(const TensorView& tensor, std::int64_t i) {
  const auto* bytes = static_cast<const std::uint8_t*>(tensor.data());
  const std::size_t size = dtype_size(tensor.dtype());
  std::uint32_t bits = 0;
  std::memcpy(&bits, bytes + static_cast<std::size_t>(i) * size, size);
  return bits;
}

// Counts elements whose bits differ; with `zeros_equal`, +0 and -0 count as equal (FP4 code 8).
// Reports the first few differences.
std::int64_t count_bit_differences(const TensorView& expected, const TensorView& actual,
                                   bool zeros_equal = false) {
  std::int64_t differences = 0;
  for (std::int64_t i = 0; i < expected.numel(); ++i) {
    const std::uint32_t a = bits_at(expected, i);
    const std::uint32_t b = bits_at(actual, i);
    if (a == b) continue;
    if (zeros_equal && is_floating(expected.dtype()) && value_at(expected, i) == 0.0f &&
        value_at(actual, i) == 0.0f) {
      continue;
    }
    if (++differences <= 5) {
      ADD_FAILURE() << "element " << i << " differs: expected bits 0x" << std::hex << a
                    << ", got 0x" << b << std::dec;
    }
  }
  return differences;
}

void expect_bit_equal(const TensorView& expected, const TensorView& actual,
                      bool zeros_equal = false) {
  ASSERT_EQ(expected.numel(), actual.numel());
  ASSERT_EQ(expected.dtype(), actual.dtype());
  EXPECT_EQ(count_bit_differences(expected, actual, zeros_equal), 0)
      << "of " << expected.numel() << " elements of " << expected.describe();
}

// Tallies code differences between the CPU reference and the GPU over a test; every one is a
// failure, the first few reported.
struct CodeDifferences {
  std::int64_t codes = 0;      // codes compared
  std::int64_t different = 0;  // codes that differ

  // `describe()` names the element, for the failure message.
  template <typename Describe>
  void compare(int cpu_code, int gpu_code, Describe describe) {
    ++codes;
    if (cpu_code != gpu_code && ++different <= 5) {
      ADD_FAILURE() << describe() << ": CPU " << cpu_code << ", GPU " << gpu_code;
    }
  }
  void report(const char* what) const {
    std::cout << "[ info     ] " << what << ": " << codes << " codes compared, " << different
              << " differ\n";
  }
};

// ---- (a) CUDA against the CPU reference kernels.

struct FourBitCase {
  FourBitType type;
  DType dtype;
  std::int64_t block_size;
  std::int64_t n;
};

std::vector<FourBitCase> four_bit_cases() {
  std::vector<FourBitCase> cases;
  for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (std::int64_t block_size : {32, 64, 128, 256, 1024, 4096}) {
        for (std::int64_t n : {1, 31, 4095, 64000, 300001}) {
          cases.push_back({type, dtype, block_size, n});
        }
      }
    }
  }
  return cases;
}

TEST(CudaQuant4bit, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  CodeDifferences tally;
  std::uint64_t seed = 100;
  for (const FourBitCase& c : four_bit_cases()) {
    SCOPED_TRACE(std::string(quant::four_bit_type_name(c.type)) + " " +
                 std::string(dtype_name(c.dtype)) + " block " + std::to_string(c.block_size) +
                 " n " + std::to_string(c.n) + " seed " + std::to_string(seed));
    const Tensor input = random_input(Shape{c.n}, c.dtype, seed++, c.block_size);
    const std::int64_t bytes = quant::packed_4bit_bytes(c.n);
    const std::int64_t blocks = quant::block_count(c.n, c.block_size);

    Tensor cpu_packed = host_tensor(Shape{bytes}, DType::kU8);
    Tensor cpu_absmax = host_tensor(Shape{blocks}, DType::kF32);
    check(quant::quantize_4bit(input, c.type, c.block_size, cpu_packed.view(), cpu_absmax.view(),
                               kReference));

    const Tensor device_input = to_device(input);
    Tensor device_packed = poisoned_device_tensor(Shape{bytes}, DType::kU8);
    Tensor device_absmax = poisoned_device_tensor(Shape{blocks}, DType::kF32);
    check(quant::quantize_4bit(device_input, c.type, c.block_size, device_packed.view(),
                               device_absmax.view()));
    const Tensor gpu_packed = to_host(device_packed);
    const Tensor gpu_absmax = to_host(device_absmax);

    expect_bit_equal(cpu_absmax, gpu_absmax);
    const auto* expected = cpu_packed.data_as<std::uint8_t>();
    const auto* actual = gpu_packed.data_as<std::uint8_t>();
    for (std::int64_t i = 0; i < 2 * bytes; ++i) {  // every nibble, the padding one included
      const int shift = i % 2 == 0 ? 4 : 0;
      const auto cpu_code = static_cast<std::uint8_t>((expected[i / 2] >> shift) & 0xf);
      const auto gpu_code = static_cast<std::uint8_t>((actual[i / 2] >> shift) & 0xf);
      tally.compare(cpu_code, gpu_code, [&] {
        const float value = i < c.n ? value_at(input, i) : 0.0f;
        const float absmax = cpu_absmax.data_as<float>()[std::min(i, c.n - 1) / c.block_size];
        return "code of value " + std::to_string(i) + " (" + std::to_string(value) + ", absmax " +
               std::to_string(absmax) + ")";
      });
    }

    // Dequantize the GPU's codes on both sides, into every output dtype.
    for (DType output_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      Tensor cpu_output = host_tensor(Shape{c.n}, output_dtype);
      check(quant::dequantize_4bit(gpu_packed, gpu_absmax, c.type, c.block_size, cpu_output.view(),
                                   kReference));
      Tensor device_output = poisoned_device_tensor(Shape{c.n}, output_dtype);
      check(quant::dequantize_4bit(device_packed, device_absmax, c.type, c.block_size,
                                   device_output.view()));
      expect_bit_equal(cpu_output, to_host(device_output), c.type == FourBitType::kFp4);
    }
  }
  tally.report("4-bit");
  EXPECT_EQ(tally.different, 0);
}

TEST(CudaQuant8bit, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  CodeDifferences tally;
  std::uint64_t seed = 200;
  for (DynamicMap map : {DynamicMap::kSigned, DynamicMap::kUnsigned}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (std::int64_t block_size : {64, 256, 2048, 4096}) {
        for (std::int64_t n : {1, 100, 4099, 100000}) {
          SCOPED_TRACE(std::string(map == DynamicMap::kSigned ? "signed" : "unsigned") + " " +
                       std::string(dtype_name(dtype)) + " block " + std::to_string(block_size) +
                       " n " + std::to_string(n));
          const Tensor input = random_input(Shape{n}, dtype, seed++, block_size);
          const std::int64_t blocks = quant::block_count(n, block_size);
          Tensor cpu_codes = host_tensor(Shape{n}, DType::kU8);
          Tensor cpu_absmax = host_tensor(Shape{blocks}, DType::kF32);
          check(quant::quantize_8bit_blockwise(input, map, block_size, cpu_codes.view(),
                                               cpu_absmax.view(), kReference));
          const Tensor device_input = to_device(input);
          Tensor device_codes = poisoned_device_tensor(Shape{n}, DType::kU8);
          Tensor device_absmax = poisoned_device_tensor(Shape{blocks}, DType::kF32);
          check(quant::quantize_8bit_blockwise(device_input, map, block_size, device_codes.view(),
                                               device_absmax.view()));
          const Tensor gpu_codes = to_host(device_codes);
          const Tensor gpu_absmax = to_host(device_absmax);

          expect_bit_equal(cpu_absmax, gpu_absmax);
          for (std::int64_t i = 0; i < n; ++i) {
            const std::uint8_t cpu_code = cpu_codes.data_as<std::uint8_t>()[i];
            const std::uint8_t gpu_code = gpu_codes.data_as<std::uint8_t>()[i];
            tally.compare(cpu_code, gpu_code, [&] {
              return "code of value " + std::to_string(i) + " (" +
                     std::to_string(value_at(input, i)) + ", absmax " +
                     std::to_string(cpu_absmax.data_as<float>()[i / block_size]) + ")";
            });
          }

          for (DType output_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
            Tensor cpu_output = host_tensor(Shape{n}, output_dtype);
            check(quant::dequantize_8bit_blockwise(gpu_codes, gpu_absmax, map, block_size,
                                                   cpu_output.view(), kReference));
            Tensor device_output = poisoned_device_tensor(Shape{n}, output_dtype);
            check(quant::dequantize_8bit_blockwise(device_codes, device_absmax, map, block_size,
                                                   device_output.view()));
            expect_bit_equal(cpu_output, to_host(device_output));
          }
        }
      }
    }
  }
  tally.report("8-bit blockwise");
  EXPECT_EQ(tally.different, 0);
}

// The GPU's decode-tile permutation gives the host's bytes (decode_tiles_test.cc checks those),
// both ways, for plain and nested absmax, on a Llama-sized shape and a small one.
TEST(CudaDecodeTiles, MatchHost) {
  KBIT_REQUIRE_CUDA();
  struct WeightShape {
    std::int64_t out, in;
  };
  std::uint64_t seed = 900;
  for (const WeightShape shape : {WeightShape{16, 256}, WeightShape{1024, 14336}}) {
    for (const DType absmax_dtype : {DType::kF32, DType::kU8}) {
      SCOPED_TRACE(std::to_string(shape.out) + " x " + std::to_string(shape.in));
      const std::int64_t bytes = shape.out * shape.in / 2;
      const std::int64_t blocks = shape.out * shape.in / 64;
      Tensor packed = host_tensor(Shape{bytes}, DType::kU8);
      Tensor absmax = host_tensor(Shape{blocks}, absmax_dtype);
      for (Tensor* tensor : {&packed, &absmax}) {
        auto* data = static_cast<std::uint8_t*>(tensor->view().data());
        for (std::size_t i = 0; i < tensor->nbytes(); ++i) {
          data[i] = static_cast<std::uint8_t>(random_bits(seed, i));
        }
        ++seed;
      }
      Tensor host_packed = host_tensor(Shape{bytes}, DType::kU8);
      Tensor host_absmax = host_tensor(Shape{blocks}, absmax_dtype);
      check(quant::tile_4bit_for_decode(packed.view(), absmax.view(), shape.out, shape.in,
                                        host_packed.view(), host_absmax.view()));
      const Tensor device_packed = to_device(packed.view());
      const Tensor device_absmax = to_device(absmax.view());
      Tensor tiled_packed = poisoned_device_tensor(Shape{bytes}, DType::kU8);
      Tensor tiled_absmax = poisoned_device_tensor(Shape{blocks}, absmax_dtype);
      check(quant::tile_4bit_for_decode(device_packed.view(), device_absmax.view(), shape.out,
                                        shape.in, tiled_packed.view(), tiled_absmax.view()));
      expect_bit_equal(host_packed.view(), to_host(tiled_packed.view()).view());
      expect_bit_equal(host_absmax.view(), to_host(tiled_absmax.view()).view());
      Tensor back_packed = poisoned_device_tensor(Shape{bytes}, DType::kU8);
      Tensor back_absmax = poisoned_device_tensor(Shape{blocks}, absmax_dtype);
      check(quant::untile_4bit_for_decode(tiled_packed.view(), tiled_absmax.view(), shape.out,
                                          shape.in, back_packed.view(), back_absmax.view()));
      expect_bit_equal(packed.view(), to_host(back_packed.view()).view());
      expect_bit_equal(absmax.view(), to_host(back_absmax.view()).view());
    }
  }
}

TEST(CudaNestedAbsmax, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  CodeDifferences tally;
  std::uint64_t seed = 300;
  for (std::int64_t blocks : {1, 100, 1000, 4097, 70000}) {
    SCOPED_TRACE("absmax of " + std::to_string(blocks) + " blocks");
    // Realistic absmax values: those of an NF4 quantization of normal data, block size 64.
    const Tensor weights = random_input(Shape{blocks * 64}, DType::kF32, seed++, 64);
    Tensor packed = host_tensor(Shape{blocks * 32}, DType::kU8);
    Tensor absmax = host_tensor(Shape{blocks}, DType::kF32);
    check(quant::quantize_4bit(weights, FourBitType::kNf4, 64, packed.view(), absmax.view()));
    const std::int64_t nested_blocks = quant::block_count(blocks, quant::kNestedBlockSize);

    Tensor cpu_codes = host_tensor(Shape{blocks}, DType::kU8);
    Tensor cpu_nested = host_tensor(Shape{nested_blocks}, DType::kF32);
    float cpu_offset = 0.0f;
    check(quant::quantize_absmax_nested(absmax, cpu_codes.view(), cpu_nested.view(), &cpu_offset,
                                        kReference));
    const Tensor device_absmax = to_device(absmax);
    Tensor device_codes = poisoned_device_tensor(Shape{blocks}, DType::kU8);
    Tensor device_nested = poisoned_device_tensor(Shape{nested_blocks}, DType::kF32);
    float gpu_offset = 0.0f;
    check(quant::quantize_absmax_nested(device_absmax, device_codes.view(), device_nested.view(),
                                        &gpu_offset));
    check(synchronize(Device::cuda(0)));
    const Tensor gpu_codes = to_host(device_codes);
    const Tensor gpu_nested = to_host(device_nested);

    EXPECT_EQ(std::bit_cast<std::uint32_t>(cpu_offset), std::bit_cast<std::uint32_t>(gpu_offset));
    expect_bit_equal(cpu_nested, gpu_nested);
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::uint8_t cpu_code = cpu_codes.data_as<std::uint8_t>()[b];
      const std::uint8_t gpu_code = gpu_codes.data_as<std::uint8_t>()[b];
      tally.compare(cpu_code, gpu_code, [&] { return "code of absmax " + std::to_string(b); });
    }

    Tensor cpu_restored = host_tensor(Shape{blocks}, DType::kF32);
    check(quant::dequantize_absmax_nested(gpu_codes, gpu_nested, gpu_offset, cpu_restored.view(),
                                          kReference));
    Tensor device_restored = poisoned_device_tensor(Shape{blocks}, DType::kF32);
    check(quant::dequantize_absmax_nested(device_codes, device_nested, gpu_offset,
                                          device_restored.view()));
    expect_bit_equal(cpu_restored, to_host(device_restored));
  }
  tally.report("nested absmax");
  EXPECT_EQ(tally.different, 0);
}

TEST(CudaInt8Rowwise, MatchesCpuReference) {
  KBIT_REQUIRE_CUDA();
  CodeDifferences tally;
  std::uint64_t seed = 400;
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
      {1, 1}, {3, 17}, {16, 512}, {67, 300}, {256, 1000}, {2, 5000}};
  for (const auto& [rows, cols] : shapes) {
    for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
      for (float threshold : {0.0f, 6.0f}) {
        SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " " +
                     std::string(dtype_name(dtype)) + " threshold " + std::to_string(threshold));
        Tensor input = host_tensor(Shape{rows, cols}, dtype);
        check(fill_normal(input.view(), seed++));
        // Outlier features, as LLM.int8 sees them: two columns of large values in a few rows,
        // one exactly on the threshold (|x| >= 6 counts as an outlier).
        for (std::int64_t row = 0; row < rows; row += 2) {
          set_value(input.view(), row * cols + cols / 3, 30.0f);
          set_value(input.view(), row * cols + (cols * 3) / 4, row % 4 == 0 ? -25.0f : 6.0f);
        }
        std::vector<std::int64_t> cpu_columns;
        Tensor cpu_codes = host_tensor(Shape{rows, cols}, DType::kI8);
        Tensor cpu_absmax = host_tensor(Shape{rows}, DType::kF32);
        check(quant::quantize_int8_rowwise(input, threshold, cpu_codes.view(), cpu_absmax.view(),
                                           &cpu_columns, kReference));
        std::vector<std::int64_t> gpu_columns;
        const Tensor device_input = to_device(input);
        Tensor device_codes = poisoned_device_tensor(Shape{rows, cols}, DType::kI8);
        Tensor device_absmax = poisoned_device_tensor(Shape{rows}, DType::kF32);
        check(quant::quantize_int8_rowwise(device_input, threshold, device_codes.view(),
                                           device_absmax.view(), &gpu_columns));
        const Tensor gpu_codes = to_host(device_codes);
        const Tensor gpu_absmax = to_host(device_absmax);

        EXPECT_EQ(cpu_columns, gpu_columns);
        expect_bit_equal(cpu_absmax, gpu_absmax);
        for (std::int64_t i = 0; i < rows * cols; ++i) {
          const std::int8_t cpu_code = cpu_codes.data_as<std::int8_t>()[i];
          const std::int8_t gpu_code = gpu_codes.data_as<std::int8_t>()[i];
          tally.compare(cpu_code, gpu_code, [&] {
            return "code of element " + std::to_string(i) + " (" +
                   std::to_string(f16_to_f32(f32_to_f16(value_at(input, i)))) + ", row absmax " +
                   std::to_string(cpu_absmax.data_as<float>()[i / cols]) + ")";
          });
        }

        for (DType output_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
          Tensor cpu_output = host_tensor(Shape{rows, cols}, output_dtype);
          check(
              quant::dequantize_int8_rowwise(gpu_codes, gpu_absmax, cpu_output.view(), kReference));
          Tensor device_output = poisoned_device_tensor(Shape{rows, cols}, output_dtype);
          check(quant::dequantize_int8_rowwise(device_codes, device_absmax, device_output.view()));
          expect_bit_equal(cpu_output, to_host(device_output));
        }
      }
    }
  }
  tally.report("int8 row-wise");
  EXPECT_EQ(tally.different, 0);
}

// ---- (b) Against bitsandbytes' CUDA outputs: every byte equal.

class GoldenFile {
 public:
  explicit GoldenFile(const std::string& name)
      : file_(must(io::SafetensorsFile::open(testing::shared_file("golden/" + name)))) {}

  // The host view of `key`; marks it as checked.
  TensorView host(const std::string& key) {
    checked_.insert(key);
    return must(file_.tensor(key));
  }
  Tensor device(const std::string& key) { return to_device(host(key)); }
  bool contains(const std::string& key) const { return file_.contains(key); }
  std::vector<std::string> names() const { return file_.names(); }

  // Every key of the file was looked at.
  void expect_all_checked() const {
    for (const std::string& key : file_.names()) {
      EXPECT_TRUE(checked_.count(key) == 1) << key << " was not checked";
    }
  }

 private:
  io::SafetensorsFile file_;
  std::set<std::string> checked_;
};

// Views `tensor` with the shape of the golden one (bitsandbytes stores packed as [n/2, 1]).
TensorView like(const Tensor& tensor, const TensorView& golden) {
  return must(tensor.view().reshaped(golden.shape()));
}

TEST(CudaGolden, Quant4bitEveryByte) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  GoldenFile golden("quant4bit.safetensors");
  int configurations = 0;
  for (const std::string& key : golden.names()) {
    const std::string suffix = ".packed";
    if (key.size() < suffix.size() ||
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string prefix = key.substr(0, key.size() - suffix.size());  // nf4_bf16_bs64_dq
    SCOPED_TRACE(prefix);
    ++configurations;
    const FourBitType type = prefix.starts_with("nf4") ? FourBitType::kNf4 : FourBitType::kFp4;
    const std::size_t dtype_begin = 4;
    const std::size_t dtype_end = prefix.find("_bs");
    const std::string dtype = prefix.substr(dtype_begin, dtype_end - dtype_begin);
    const std::int64_t block_size = std::stoll(prefix.substr(dtype_end + 3));
    const bool nested = prefix.ends_with("_dq");

    const Tensor input = golden.device("input_" + dtype);
    const TensorView golden_packed = golden.host(prefix + ".packed");
    const std::int64_t n = input.numel();
    const std::int64_t blocks = quant::block_count(n, block_size);
    Tensor packed = poisoned_device_tensor(Shape{quant::packed_4bit_bytes(n)}, DType::kU8);
    Tensor absmax = poisoned_device_tensor(Shape{blocks}, DType::kF32);
    check(quant::quantize_4bit(input, type, block_size, packed.view(), absmax.view()));
    expect_bit_equal(golden_packed, to_host(like(packed, golden_packed)));

    Tensor absmax_used = poisoned_device_tensor(Shape{blocks}, DType::kF32);
    if (nested) {
      const TensorView golden_codes = golden.host(prefix + ".absmax");
      const TensorView golden_nested = golden.host(prefix + ".nested_absmax");
      const float golden_offset = golden.host(prefix + ".offset").data_as<float>()[0];
      Tensor codes = poisoned_device_tensor(Shape{blocks}, DType::kU8);
      Tensor nested_absmax = poisoned_device_tensor(golden_nested.shape(), DType::kF32);
      float offset = 0.0f;
      check(quant::quantize_absmax_nested(absmax, codes.view(), nested_absmax.view(), &offset));
      EXPECT_EQ(std::bit_cast<std::uint32_t>(golden_offset), std::bit_cast<std::uint32_t>(offset))
          << "offset: golden " << golden_offset << ", kbit " << offset;
      expect_bit_equal(golden_codes, to_host(codes));
      expect_bit_equal(golden_nested, to_host(nested_absmax));
      check(quant::dequantize_absmax_nested(to_device(golden_codes), to_device(golden_nested),
                                            golden_offset, absmax_used.view()));
    } else {
      const TensorView golden_absmax = golden.host(prefix + ".absmax");
      expect_bit_equal(golden_absmax, to_host(absmax));
      check(copy_tensor(golden_absmax, absmax_used.view()));
    }

    const std::string dequantized_key = prefix + ".dequantized";
    if (golden.contains(dequantized_key)) {
      const TensorView expected = golden.host(dequantized_key);
      Tensor output = poisoned_device_tensor(expected.shape(), expected.dtype());
      check(quant::dequantize_4bit(to_device(golden_packed), absmax_used, type, block_size,
                                   output.view()));
      expect_bit_equal(expected, to_host(output));
    }
  }
  EXPECT_GT(configurations, 0);
  golden.expect_all_checked();
}

TEST(CudaGolden, Quant8bitBlockwiseEveryByte) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  GoldenFile golden("quant8bit_blockwise.safetensors");
  const Tensor input = golden.device("input");
  for (std::int64_t block_size : {256, 2048, 4096}) {
    const std::string prefix = "bs" + std::to_string(block_size) + "_cuda";
    SCOPED_TRACE(prefix);
    const TensorView golden_codes = golden.host(prefix + ".codes");
    const TensorView golden_absmax = golden.host(prefix + ".absmax");
    const TensorView golden_dequantized = golden.host(prefix + ".dequantized");
    Tensor codes = poisoned_device_tensor(golden_codes.shape(), DType::kU8);
    Tensor absmax = poisoned_device_tensor(golden_absmax.shape(), DType::kF32);
    check(quant::quantize_8bit_blockwise(input, DynamicMap::kSigned, block_size, codes.view(),
                                         absmax.view()));
    expect_bit_equal(golden_codes, to_host(codes));
    expect_bit_equal(golden_absmax, to_host(absmax));

    Tensor output = poisoned_device_tensor(golden_dequantized.shape(), DType::kF32);
    check(quant::dequantize_8bit_blockwise(to_device(golden_codes), to_device(golden_absmax),
                                           DynamicMap::kSigned, block_size, output.view()));
    expect_bit_equal(golden_dequantized, to_host(output));
  }
}

TEST(CudaGolden, Int8RowwiseEveryByte) {
  KBIT_REQUIRE_CUDA();
  KBIT_REQUIRE_SHARED_DIR();
  GoldenFile golden("int8.safetensors");
  {
    SCOPED_TRACE("weight, threshold 0");
    const TensorView expected_codes = golden.host("weight_int8");
    const TensorView expected_scb = golden.host("weight_SCB");
    Tensor codes = poisoned_device_tensor(expected_codes.shape(), DType::kI8);
    Tensor scb = poisoned_device_tensor(expected_scb.shape(), DType::kF32);
    check(quant::quantize_int8_rowwise(golden.device("weight_f16"), 0.0f, codes.view(), scb.view(),
                                       nullptr));
    expect_bit_equal(expected_codes, to_host(codes));
    expect_bit_equal(expected_scb, to_host(scb));
  }
  {
    SCOPED_TRACE("activations, threshold 6");
    const TensorView expected_codes = golden.host("x_int8_thr6");
    const TensorView expected_stats = golden.host("x_rowstats_thr6");
    const TensorView expected_columns = golden.host("x_outlier_cols_thr6");
    Tensor codes = poisoned_device_tensor(expected_codes.shape(), DType::kI8);
    Tensor stats = poisoned_device_tensor(expected_stats.shape(), DType::kF32);
    std::vector<std::int64_t> columns;
    check(quant::quantize_int8_rowwise(golden.device("x_f16"), 6.0f, codes.view(), stats.view(),
                                       &columns));
    expect_bit_equal(expected_codes, to_host(codes));
    expect_bit_equal(expected_stats, to_host(stats));
    const auto* expected = expected_columns.data_as<std::int64_t>();
    EXPECT_EQ(columns, std::vector<std::int64_t>(expected, expected + expected_columns.numel()));
  }
}

// ---- (c) Errors.

TEST(CudaQuantErrors, NonFiniteInputNamesTheElements) {
  KBIT_REQUIRE_CUDA();
  Tensor input = host_tensor(Shape{1000}, DType::kBF16);
  check(fill_normal(input.view(), 7));
  set_value(input.view(), 100, std::numeric_limits<float>::quiet_NaN());
  set_value(input.view(), 700, std::numeric_limits<float>::infinity());
  const Tensor device_input = to_device(input);

  Tensor packed = poisoned_device_tensor(Shape{500}, DType::kU8);
  Tensor absmax4 = poisoned_device_tensor(Shape{16}, DType::kF32);
  const Status four_bit =
      quant::quantize_4bit(device_input, FourBitType::kNf4, 64, packed.view(), absmax4.view());
  EXPECT_EQ(four_bit.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(four_bit.message().find("[64, 128)"), std::string::npos) << four_bit.message();

  Tensor codes = poisoned_device_tensor(Shape{1000}, DType::kU8);
  Tensor absmax8 = poisoned_device_tensor(Shape{4}, DType::kF32);
  const Status eight_bit = quant::quantize_8bit_blockwise(device_input, DynamicMap::kSigned, 256,
                                                          codes.view(), absmax8.view());
  EXPECT_EQ(eight_bit.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(eight_bit.message().find("[0, 256)"), std::string::npos) << eight_bit.message();

  // Only the Inf is left in block [512, 768).
  set_value(input.view(), 100, 0.5f);
  const Tensor inf_input = to_device(input);
  const Status inf_status = quant::quantize_8bit_blockwise(inf_input, DynamicMap::kSigned, 256,
                                                           codes.view(), absmax8.view());
  EXPECT_NE(inf_status.message().find("[512, 768)"), std::string::npos) << inf_status.message();

  // int8: a NaN in row 2 of [4, 250]; 70000 is beyond the f16 range in row 3 (reported first
  // would be row 2).
  Tensor matrix = host_tensor(Shape{4, 250}, DType::kF32);
  check(fill_normal(matrix.view(), 8));
  set_value(matrix.view(), 2 * 250 + 9, std::numeric_limits<float>::quiet_NaN());
  set_value(matrix.view(), 3 * 250 + 1, 70000.0f);
  Tensor int8_codes = poisoned_device_tensor(Shape{4, 250}, DType::kI8);
  Tensor row_absmax = poisoned_device_tensor(Shape{4}, DType::kF32);
  const Status int8 = quant::quantize_int8_rowwise(to_device(matrix), 6.0f, int8_codes.view(),
                                                   row_absmax.view(), nullptr);
  EXPECT_EQ(int8.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(int8.message().find("row 2"), std::string::npos) << int8.message();
  const Tensor stats = to_host(row_absmax);
  EXPECT_TRUE(std::isnan(stats.data_as<float>()[2]));
  EXPECT_TRUE(std::isnan(stats.data_as<float>()[3]));
  EXPECT_FALSE(std::isnan(stats.data_as<float>()[1]));
}

// ---- The caching allocator.

TEST(CudaCachingAllocator, ReusesBlocksAndKeepsStatistics) {
  KBIT_REQUIRE_CUDA();
  Allocator* allocator = must(cuda_allocator(0));
  cuda_allocator_release_cache(0);
  const CachingAllocatorStats start = cuda_allocator_stats(0);
  EXPECT_EQ(start.cached, 0u);

  constexpr std::size_t kMiB = 1 << 20;
  void* first = must(allocator->allocate(kMiB));
  void* second = must(allocator->allocate(3 * kMiB));
  CachingAllocatorStats stats = cuda_allocator_stats(0);
  EXPECT_EQ(stats.in_use, start.in_use + 5 * kMiB);  // 3 MiB rounds up to the 4 MiB class
  EXPECT_GE(stats.peak_in_use, stats.in_use);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 256, 0u);

  allocator->deallocate(first);
  allocator->deallocate(second);
  stats = cuda_allocator_stats(0);
  EXPECT_EQ(stats.in_use, start.in_use);
  EXPECT_EQ(stats.cached, 5 * kMiB);
  EXPECT_GE(stats.peak_in_use, start.in_use + 5 * kMiB);

  // A request of a similar size gets the cached block back, without cudaMalloc.
  void* again = must(allocator->allocate(kMiB - 100));
  EXPECT_EQ(again, first);
  EXPECT_EQ(cuda_allocator_stats(0).cached, 4 * kMiB);
  allocator->deallocate(again);

  // Zero-byte requests get valid, distinct pointers.
  void* empty_a = must(allocator->allocate(0));
  void* empty_b = must(allocator->allocate(0));
  EXPECT_NE(empty_a, nullptr);
  EXPECT_NE(empty_a, empty_b);
  allocator->deallocate(empty_a);
  allocator->deallocate(empty_b);
  allocator->deallocate(nullptr);

  cuda_allocator_release_cache(0);
  EXPECT_EQ(cuda_allocator_stats(0).cached, 0u);
}

TEST(CudaCachingAllocator, OutOfMemorySaysHowMuchIsFree) {
  KBIT_REQUIRE_CUDA();
  Allocator* allocator = must(cuda_allocator(0));
  const Result<void*> huge = allocator->allocate(std::size_t{1} << 50);  // 1 PiB
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(huge.status().message().find("free"), std::string::npos) << huge.status().message();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // the failure leaves no error behind

  EXPECT_EQ(cuda_allocator(1000).status().code(), StatusCode::kUnimplemented);
}

TEST(CudaCachingAllocator, ThreadSafe) {
  KBIT_REQUIRE_CUDA();
  Allocator* allocator = must(cuda_allocator(0));
  const std::size_t in_use = cuda_allocator_stats(0).in_use;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([allocator, t] {
      std::vector<void*> held;
      for (int i = 0; i < 500; ++i) {
        const std::size_t bytes = static_cast<std::size_t>((i * 7919 + t * 104729) % 5000000);
        Result<void*> ptr = allocator->allocate(bytes);
        if (ptr.ok()) held.push_back(*ptr);
        if (held.size() > 8) {
          allocator->deallocate(held.front());
          held.erase(held.begin());
        }
      }
      for (void* ptr : held) allocator->deallocate(ptr);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(cuda_allocator_stats(0).in_use, in_use);
}

}  // namespace
}  // namespace kbit
