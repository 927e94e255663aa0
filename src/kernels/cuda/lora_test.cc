// GPU tests of the LoRA launchers (lora_launchers.h): the forward against a CPU computation of
// PEFT's term in double, the backward against lora_backward_reference (kernels/cpu/
// llama_backward.h), in f32 and bf16 activations, with and without dropout, on fresh random data;
// and the dropout's factors (lora_dropout_keep) against the CPU's draw, bit for bit.
//
// Tolerance: every value here is a chain of f32 sums (x̃·Aᵀ over in, ·Bᵀ over rank, dyᵀ·h over
// rows, dy·B over out, ...), each within (terms + 2)·u of the sum of its terms' magnitudes. The
// bound takes the longest chain's term count, rows + in + out + rank + 8, times 2u, times the
// magnitude the same computation gives on absolute values (the CPU reference run on |x|, |A|,
// |B|, |dy|), plus the half ulp of a bf16 store. bf16 LoRA rounds its operands (x̃, A, B) and
// its intermediates (h, dh) to bf16, each a relative error of half a bf16 ulp that reaches a
// result in proportion to that magnitude: 2.5 bf16 ulps of it cover the five. A transposed or
// misindexed product errs by the size of the values themselves.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kbit/core/status.h"
#include "kernels/cpu/llama_backward.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels {
namespace {

using namespace cuda_test;  // NOLINT: the shared helpers of cuda_kernel_test_support.h

struct LoraCase {
  std::int64_t rows, in, out, rank;
  DType dtype;
  bool dropout;
  bool term_rounded_first;  // a bitsandbytes base's rule (LoraAdapterDevice)
  cuda::LoraPrecision precision = cuda::LoraPrecision::kF32;
};

std::string describe(const LoraCase& c) {
  return dtype_label(c.dtype) + ", rows " + std::to_string(c.rows) + ", in " +
         std::to_string(c.in) + ", out " + std::to_string(c.out) + ", rank " +
         std::to_string(c.rank) + (c.dropout ? ", dropout" : "") +
         (c.term_rounded_first ? ", term rounded first" : "") +
         (c.precision == cuda::LoraPrecision::kBf16 ? ", bf16 LoRA" : "");
}

std::vector<float> absolute(std::vector<float> values) {
  for (float& value : values) value = std::fabs(value);
  return values;
}

// PEFT's dropout factors at p = 0.25: 0 or 4/3, from `seed`.
std::vector<float> dropout_factors(std::int64_t count, std::uint64_t seed) {
  const std::vector<float> draws = random_values(count, seed, DType::kF32);
  std::vector<float> keep(draws.size());
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = draws[i] < -0.6745f ? 0.0f : 4.0f / 3.0f;
  return keep;
}

// y + scaling · ((keep ⊙ x) · Aᵀ) · Bᵀ in double, per element of [rows, out].
std::vector<double> forward_reference(const LoraCase& c, const std::vector<float>& x,
                                      const std::vector<float>& keep, const std::vector<float>& a,
                                      const std::vector<float>& b, float scaling,
                                      const std::vector<float>& y) {
  std::vector<double> h(static_cast<std::size_t>(c.rows * c.rank), 0.0);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (std::int64_t k = 0; k < c.rank; ++k) {
      double sum = 0.0;
      for (std::int64_t i = 0; i < c.in; ++i) {
        const auto xi = static_cast<std::size_t>(r * c.in + i);
        sum += (keep.empty() ? 1.0 : keep[xi]) * x[xi] * a[static_cast<std::size_t>(k * c.in + i)];
      }
      h[static_cast<std::size_t>(r * c.rank + k)] = sum;
    }
  }
  std::vector<double> result(static_cast<std::size_t>(c.rows * c.out));
  for (std::int64_t r = 0; r < c.rows; ++r) {
    for (std::int64_t o = 0; o < c.out; ++o) {
      double sum = 0.0;
      for (std::int64_t k = 0; k < c.rank; ++k) {
        sum += h[static_cast<std::size_t>(r * c.rank + k)] *
               b[static_cast<std::size_t>(o * c.rank + k)];
      }
      const auto i = static_cast<std::size_t>(r * c.out + o);
      result[i] = y[i] + scaling * sum;
    }
  }
  return result;
}

void check_lora_case(const LoraCase& c, std::uint64_t seed) {
  const std::string what = describe(c);
  const float scaling = 2.0f;  // lora_alpha 2·rank
  const float chain = static_cast<float>(c.rows + c.in + c.out + c.rank + 8) * kF32Ulp;
  const std::vector<float> x = random_values(c.rows * c.in, seed, c.dtype);
  const std::vector<float> a = random_values(c.rank * c.in, seed + 1, DType::kF32, 0.0f, 0.05f);
  const std::vector<float> b = random_values(c.out * c.rank, seed + 2, DType::kF32, 0.0f, 0.05f);
  const std::vector<float> y = random_values(c.rows * c.out, seed + 3, c.dtype);
  const std::vector<float> dy = random_values(c.rows * c.out, seed + 4, c.dtype);
  const std::vector<float> da0 = random_values(c.rank * c.in, seed + 5, DType::kF32, 0.0f, 0.1f);
  const std::vector<float> db0 = random_values(c.out * c.rank, seed + 6, DType::kF32, 0.0f, 0.1f);
  const std::vector<float> dx0 = random_values(c.rows * c.in, seed + 7, c.dtype);
  const std::vector<float> keep =
      c.dropout ? dropout_factors(c.rows * c.in, seed + 8) : std::vector<float>{};

  const NonBlockingStream stream;
  const std::unique_ptr<cuda::LinearContext> context =
      cuda::LinearContext::create(stream.get(), c.rows, c.in, c.out).value();
  const DeviceArray device_x(x, c.dtype);
  const DeviceArray device_a(a, DType::kF32);
  const DeviceArray device_b(b, DType::kF32);
  const DeviceArray device_y(y, c.dtype);
  const DeviceArray device_dy(dy, c.dtype);
  const DeviceArray device_da(da0, DType::kF32);
  const DeviceArray device_db(db0, DType::kF32);
  const DeviceArray device_dx(dx0, c.dtype);
  const DeviceArray device_keep(c.dropout ? keep : std::vector<float>{1.0f}, DType::kF32);
  const float* keep_pointer = c.dropout ? device_keep.as<const float>() : nullptr;
  const bool bf16_lora = c.precision == cuda::LoraPrecision::kBf16;
  const DType lora_dtype = bf16_lora ? DType::kBF16 : DType::kF32;
  const DeviceArray a_bf16(a, DType::kBF16);
  const DeviceArray b_bf16(b, DType::kBF16);
  const DeviceArray x_dropped(c.rows * c.in, lora_dtype);
  const DeviceArray h(c.rows * c.rank, lora_dtype);
  const DeviceArray term(c.rows * c.out, DType::kF32);
  const DeviceArray dy_f32(c.rows * c.out, DType::kF32);
  const DeviceArray dh(c.rows * c.rank, lora_dtype);
  const DeviceArray dx_term(c.rows * c.in, DType::kF32);

  cuda::LoraAdapterDevice adapter{device_a.as<const float>(), device_b.as<const float>(), c.rank,
                                  scaling, c.term_rounded_first};
  if (bf16_lora) {
    adapter.precision = c.precision;
    adapter.a_bf16 = a_bf16.data();
    adapter.b_bf16 = b_bf16.data();
  }
  const cuda::LoraShape shape{c.rows, c.in, c.out};
  const Status forward =
      cuda::lora_forward(*context, adapter, shape, device_x.data(), keep_pointer, c.dtype,
                         {x_dropped.data(), h.data(), term.as<float>()}, device_y.data());
  ASSERT_TRUE(forward.ok()) << forward.to_string();
  // bf16 LoRA without dropout multiplies x itself.
  const cuda::LoraBackwardBuffers buffers{
      bf16_lora && !c.dropout ? device_x.data() : x_dropped.data(),
      h.data(),
      device_dy.data(),
      keep_pointer,
      device_da.as<float>(),
      device_db.as<float>(),
      device_dx.data(),
      dy_f32.as<float>(),
      dh.data(),
      dx_term.as<float>()};
  const Status backward = cuda::lora_backward(*context, adapter, shape, buffers, c.dtype);
  ASSERT_TRUE(backward.ok()) << backward.to_string();
  finish(cudaStreamSynchronize(stream.get()));

  // The forward.
  const std::vector<double> expected_y = forward_reference(c, x, keep, a, b, scaling, y);
  const std::vector<double> magnitude_y = forward_reference(
      c, absolute(x), keep, absolute(a), absolute(b), scaling, std::vector<float>(y.size(), 0.0f));
  // bf16 LoRA's roundings of operands and intermediates, per unit of magnitude.
  const float operand_rounding = bf16_lora ? 2.5f * kBf16Ulp : 0.0f;
  std::vector<float> expected_y_f32(expected_y.size());
  std::vector<float> y_bound(expected_y.size());
  for (std::size_t i = 0; i < expected_y.size(); ++i) {
    expected_y_f32[i] = static_cast<float>(expected_y[i]);
    // In bf16 the sum's store rounds, and with term_rounded_first the term's store before it.
    const float term_rounding =
        c.term_rounded_first ? 0.5f * kBf16Ulp * static_cast<float>(magnitude_y[i]) : 0.0f;
    y_bound[i] =
        (chain + operand_rounding) * static_cast<float>(magnitude_y[i]) +
        kF32Ulp * std::fabs(y[i]) +
        (c.dtype == DType::kBF16 ? 0.5f * kBf16Ulp * std::fabs(expected_y_f32[i]) + term_rounding
                                 : 0.0f);
  }
  expect_close(expected_y_f32, device_y.to_floats(), y_bound, 1.0, what + ": y");

  // The backward, and its magnitudes from the same reference on absolute values.
  std::vector<float> expected_da = da0, expected_db = db0, expected_dx = dx0;
  cpu::lora_backward_reference({x.data(), a.data(), b.data(), dy.data(), c.rows, c.in, c.out,
                                c.rank, scaling, expected_da.data(), expected_db.data(),
                                expected_dx.data(), c.dropout ? keep.data() : nullptr});
  const std::vector<float> abs_x = absolute(x), abs_a = absolute(a), abs_b = absolute(b),
                           abs_dy = absolute(dy);
  std::vector<float> magnitude_da(da0.size(), 0.0f), magnitude_db(db0.size(), 0.0f),
      magnitude_dx(dx0.size(), 0.0f);
  cpu::lora_backward_reference({abs_x.data(), abs_a.data(), abs_b.data(), abs_dy.data(), c.rows,
                                c.in, c.out, c.rank, scaling, magnitude_da.data(),
                                magnitude_db.data(), magnitude_dx.data(),
                                c.dropout ? keep.data() : nullptr});
  const auto bounds = [&](const std::vector<float>& magnitude, const std::vector<float>& start,
                          const std::vector<float>& expected, bool stored_in_dtype) {
    std::vector<float> bound(magnitude.size());
    for (std::size_t i = 0; i < bound.size(); ++i) {
      bound[i] =
          (chain + operand_rounding) * magnitude[i] + kF32Ulp * std::fabs(start[i]) +
          (stored_in_dtype && c.dtype == DType::kBF16 ? 0.5f * kBf16Ulp * std::fabs(expected[i])
                                                      : 0.0f);
    }
    return bound;
  };
  expect_close(expected_da, device_da.to_floats(), bounds(magnitude_da, da0, expected_da, false),
               1.0, what + ": dA");
  expect_close(expected_db, device_db.to_floats(), bounds(magnitude_db, db0, expected_db, false),
               1.0, what + ": dB");
  expect_close(expected_dx, device_dx.to_floats(), bounds(magnitude_dx, dx0, expected_dx, true),
               1.0, what + ": dx");
}

TEST(CudaLora, ForwardAndBackwardMatchReference) {
  KBIT_REQUIRE_CUDA();
  std::uint64_t seed = 700;
  const auto f32 = cuda::LoraPrecision::kF32;
  const auto bf16 = cuda::LoraPrecision::kBf16;
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const cuda::LoraPrecision precision : {f32, bf16}) {
      if (precision == bf16 && dtype != DType::kBF16) continue;
      for (const bool dropout : {false, true}) {
        // A small odd shape; a Llama-3.1-8B k_proj (4096 → 1024) at rank 16; one row, rank 1.
        // In f32, the bitsandbytes rule on the first and the last.
        const bool bnb = precision == f32;
        for (const LoraCase& c : {LoraCase{37, 160, 96, 8, dtype, dropout, bnb, precision},
                                  LoraCase{300, 4096, 1024, 16, dtype, dropout, false, precision},
                                  LoraCase{1, 64, 32, 1, dtype, dropout, bnb, precision}}) {
          SCOPED_TRACE(describe(c));
          check_lora_case(c, seed);
          seed += 10;
        }
      }
    }
  }
}

TEST(CudaLora, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  const std::unique_ptr<cuda::LinearContext> context =
      cuda::LinearContext::create(nullptr, 4, 64, 64).value();
  const DeviceArray buffer(4096, DType::kF32);
  float* f = buffer.as<float>();
  const cuda::LoraAdapterDevice adapter{f, f, 4, 1.0f};
  const cuda::LoraShape shape{4, 64, 64};
  const cuda::LoraForwardBuffers buffers{f, f, f};
  EXPECT_EQ(
      cuda::lora_forward(*context, adapter, shape, f, nullptr, DType::kF16, buffers, f).code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::lora_forward(*context, {f, f, 0, 1.0f}, shape, f, nullptr, DType::kF32, buffers, f)
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::lora_forward(*context, adapter, shape, f, nullptr, DType::kF32, {nullptr, f, f}, f)
          .code(),
      StatusCode::kInvalidArgument);
  // bf16 LoRA: bf16 activations and the bf16 copies of A and B.
  cuda::LoraAdapterDevice bf16_adapter = adapter;
  bf16_adapter.precision = cuda::LoraPrecision::kBf16;
  bf16_adapter.a_bf16 = f;
  bf16_adapter.b_bf16 = f;
  EXPECT_EQ(
      cuda::lora_forward(*context, bf16_adapter, shape, f, nullptr, DType::kF32, buffers, f).code(),
      StatusCode::kInvalidArgument);
  bf16_adapter.b_bf16 = nullptr;
  EXPECT_EQ(cuda::lora_forward(*context, bf16_adapter, shape, f, nullptr, DType::kBF16, buffers, f)
                .code(),
            StatusCode::kInvalidArgument);
  const cuda::LoraBackwardBuffers missing_dx_term{f, f, f, nullptr, f, f, f, f, f, nullptr};
  EXPECT_EQ(cuda::lora_backward(*context, adapter, shape, missing_dx_term, DType::kF32).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---- The dropout's factors (lora_dropout_keep).

// LayerAdapters::draw_dropout's factors (train/layer_pass.cc) of one Linear's stream, on the host.
std::vector<float> host_dropout_keep(std::int64_t count, std::uint64_t stream_seed, double p) {
  const float kept = p < 1 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f;
  std::vector<float> keep(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < keep.size(); ++i) {
    const double uniform = static_cast<double>(kbit::random_bits(stream_seed, i) >> 11) * 0x1p-53;
    keep[i] = uniform < p ? 0.0f : kept;
  }
  return keep;
}

// Every factor the CPU's bit for bit, for several seeds, rates and counts (one element, around
// the 256-thread block, and a grid-stride of many blocks). The number dropped, D ~ Binomial(count,
// p) for a good hash, must also lie within 6 standard deviations of count · p (plus one for
// rounding): a false failure about once in 5·10^8 checks, while a stuck or biased draw, or p
// applied the wrong way round, fails it by far.
TEST(CudaLoraDropout, FactorsAreTheCpusBitForBit) {
  KBIT_REQUIRE_CUDA();
  const NonBlockingStream stream;
  for (const std::uint64_t seed : {std::uint64_t{1}, std::uint64_t{20260101}, ~std::uint64_t{0}}) {
    for (const double p : {0.05, 0.5, 1.0, 0.0}) {
      for (const std::int64_t count : {std::int64_t{1}, std::int64_t{255}, std::int64_t{257},
                                       std::int64_t{4096 * 3 + 1}, std::int64_t{4096 * 256 + 77}}) {
        const std::string what = "seed " + std::to_string(seed) + ", p " + std::to_string(p) +
                                 ", count " + std::to_string(count);
        SCOPED_TRACE(what);
        // The stream of Linear j = 3 of a layer, as draw_dropout derives it.
        const std::uint64_t stream_seed = kbit::random_bits(seed, 3);
        const DeviceArray keep(count, DType::kF32);
        check(cudaDeviceSynchronize());  // the poison, on the legacy stream, is in place
        finish(cuda::lora_dropout_keep(keep.as<float>(), count, stream_seed, p, stream.get()));
        const std::vector<float> actual = keep.to_floats();
        expect_same_bits(host_dropout_keep(count, stream_seed, p), actual, what);
        const auto dropped = static_cast<double>(std::count(actual.begin(), actual.end(), 0.0f));
        const double n = static_cast<double>(count);
        EXPECT_LE(std::fabs(dropped - n * p), 6.0 * std::sqrt(n * p * (1.0 - p)) + 1.0)
            << dropped << " of " << count << " dropped";
      }
    }
  }
}

TEST(CudaLoraDropout, RejectsBadCalls) {
  KBIT_REQUIRE_CUDA();
  const DeviceArray keep(8, DType::kF32);
  float* data = keep.as<float>();
  for (const double p : {-0.1, 1.5, std::nan("")}) {
    EXPECT_EQ(cuda::lora_dropout_keep(data, 8, 1, p, nullptr), cudaErrorInvalidValue) << p;
  }
  EXPECT_EQ(cuda::lora_dropout_keep(data, -1, 1, 0.5, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::lora_dropout_keep(nullptr, 8, 1, 0.5, nullptr), cudaErrorInvalidValue);
  // Nothing to draw: nothing queued, nothing written.
  EXPECT_EQ(cuda::lora_dropout_keep(nullptr, 0, 1, 0.5, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (const float value : keep.to_floats()) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(value), 0xABABABABu);
  }
}

}  // namespace
}  // namespace kbit::kernels
