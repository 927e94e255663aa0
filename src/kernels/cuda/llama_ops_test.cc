// GPU tests of the Llama forward's kernels (llama_launchers.h) against the CPU reference kernels
// of kernels/cpu/llama_ops.h, in f32 and bf16 activations, on fresh random data.
//
// The CPU gets f32 arrays holding exactly the values the GPU gets (rounded to the activation
// dtype first) and runs with round_bf16 in a bf16 test. Every device output is poisoned (0xAB
// bytes, about -1.2e-12 in f32 and bf16) before the launch, so an element left unwritten fails
// the comparison; attention caches hold NaN in every row the kernel must not read.
//
// Tolerances, each derived where it is used: bit equality where the GPU does the CPU's
// operations in the CPU's order (copies, conversions, the residual add); otherwise a bound from
// the operations that differ (library cosf/sinf/expf against glibc's, summation order) and, in
// bf16, a cap on the fraction of elements that may differ at all, because an f32 difference of a
// few ulps moves a bf16 rounding only when the value lies that close to a rounding tie.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cuda/attention_forward_mma.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/llama_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels {
namespace {

using namespace cuda_test;  // NOLINT: the shared helpers of cuda_kernel_test_support.h

// ---- Elementwise and row ops.

TEST(CudaLlamaOps, EmbeddingLookupCopiesAndConvertsRows) {
  KBIT_REQUIRE_CUDA();
  const std::int64_t vocab = 40;
  const std::vector<std::int32_t> tokens = {3, 0, 39, 3, 17, 21, 8};
  const auto count = static_cast<std::int64_t>(tokens.size());
  const DeviceArray device_tokens(tokens);
  for (DType table_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      // 2048 and 64: 16-byte vectors; 37 and 1: one value at a time.
      for (std::int64_t hidden : {2048, 64, 37, 1}) {
        const std::string what = "table " + dtype_label(table_dtype) + " to " + dtype_label(dtype) +
                                 ", hidden " + std::to_string(hidden);
        const std::vector<float> table = random_values(vocab * hidden, 1, table_dtype);
        const DeviceArray device_table(table, table_dtype);
        const DeviceArray out(count * hidden, dtype);
        finish(cuda::embedding_lookup(device_tokens.as<const std::int32_t>(), count,
                                      device_table.data(), table_dtype, hidden, out.data(), dtype,
                                      nullptr));
        std::vector<float> expected;
        for (std::int32_t token : tokens) {
          for (std::int64_t i = 0; i < hidden; ++i) {
            expected.push_back(
                representable(table[static_cast<std::size_t>(token * hidden + i)], dtype));
          }
        }
        // A conversion to a type at least as wide, or one rounding to nearest even: exact.
        expect_same_bits(expected, out.to_floats(), what);
      }
    }
  }
}

TEST(CudaLlamaOps, AddRmsNormMatchesReference) {
  KBIT_REQUIRE_CUDA();
  const std::int64_t rows = 3;
  const float eps = 1e-5f;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // Multiples of 8 take 16-byte vectors (2048 .. 16384: the hidden sizes of Llama models);
    // 37 and 1 one value at a time.
    for (std::int64_t cols : {2048, 4104, 16384, 37, 1}) {
      for (bool with_delta : {false, true}) {
        const std::string what = dtype_label(dtype) + ", cols " + std::to_string(cols) +
                                 (with_delta ? ", with delta" : ", no delta");
        const std::int64_t n = rows * cols;
        std::vector<float> hidden = random_values(n, 10, dtype);
        const std::vector<float> delta = random_values(n, 11, dtype);
        // A bf16 model's norm weights hold bf16 values.
        const std::vector<float> weight = random_values(cols, 12, dtype, 1.0f, 0.1f);

        const DeviceArray device_hidden(hidden, dtype);
        const DeviceArray device_delta(delta, dtype);
        const DeviceArray device_weight(weight, DType::kF32);
        const DeviceArray y(n, dtype);
        finish(cuda::add_rms_norm(device_hidden.data(), with_delta ? device_delta.data() : nullptr,
                                  device_weight.as<const float>(), rows, cols, eps, y.data(), dtype,
                                  nullptr));

        if (with_delta) {
          for (std::size_t i = 0; i < hidden.size(); ++i) {
            hidden[i] = representable(hidden[i] + delta[i], dtype);
          }
        }
        std::vector<float> expected(hidden.size());
        cpu::RmsNormJob job;
        job.x = hidden.data();
        job.weight = weight.data();
        job.rows = rows;
        job.cols = cols;
        job.eps = eps;
        job.y = expected.data();
        job.round_bf16 = dtype == DType::kBF16;
        cpu::rms_norm_reference(job, 0, rows);

        // The residual is one f32 add rounded to dtype on both sides: exact.
        expect_equal(hidden, device_hidden.to_floats(), what + ": residual");
        // Only the sum of squares differs: the CPU adds sequentially, the GPU in a tree. Its
        // rounding errors walk randomly, about u·sqrt(cols) relative (u = 2^-24); the rsqrt
        // halves that, and each side's last two roundings add an ulp. f32: y within
        // (2·sqrt(cols) + 4) ulps, over 10 standard deviations of the walk. bf16: the inner
        // bf16(x · inv_rms) can round the other way (one ulp of y's size) and the outer rounding
        // then adds up to half an ulp on each side: within 3 bf16 ulps, and only where x · inv_rms
        // lies within the tiny inv_rms difference of a rounding tie (well under 2% of elements).
        const std::vector<float> bound = relative_bound(
            expected, dtype == DType::kF32
                          ? (2.0f * std::sqrt(static_cast<float>(cols)) + 4.0f) * kF32Ulp
                          : 3.0f * kBf16Ulp);
        expect_close(expected, y.to_floats(), bound, dtype == DType::kF32 ? 1.0 : 0.02,
                     what + ": y");
      }
    }
  }
}

TEST(CudaLlamaOps, AddResidualIsExact) {
  KBIT_REQUIRE_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (std::int64_t count : {1, 7, 8, 1000, 4099}) {
      // Offset 1: pointers that are not 16-byte aligned, one value at a time.
      for (std::int64_t offset : {0, 1}) {
        const std::string what = dtype_label(dtype) + ", count " + std::to_string(count) +
                                 ", offset " + std::to_string(offset);
        const std::vector<float> hidden = random_values(count + offset, 20, dtype);
        const std::vector<float> delta = random_values(count + offset, 21, dtype);
        const DeviceArray device_hidden(hidden, dtype);
        const DeviceArray device_delta(delta, dtype);
        finish(cuda::add_residual(device_hidden.element(offset), device_delta.element(offset),
                                  count, dtype, nullptr));
        std::vector<float> expected = hidden;
        for (std::size_t i = static_cast<std::size_t>(offset); i < expected.size(); ++i) {
          expected[i] = representable(hidden[i] + delta[i], dtype);
        }
        expect_equal(expected, device_hidden.to_floats(), what);
      }
    }
  }
}

TEST(CudaLlamaOps, SiluMulMatchesReference) {
  KBIT_REQUIRE_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (std::int64_t count : {1, 7, 4099, 100000}) {
      for (std::int64_t offset : {0, 1}) {
        const std::string what = dtype_label(dtype) + ", count " + std::to_string(count) +
                                 ", offset " + std::to_string(offset);
        // Gates from -12 to 12 or so: both tails of silu.
        std::vector<float> gate = random_values(count + offset, 30, dtype, 0.0f, 3.0f);
        const std::vector<float> up = random_values(count + offset, 31, dtype);
        const DeviceArray device_gate(gate, dtype);
        const DeviceArray device_up(up, dtype);
        finish(cuda::silu_mul(device_gate.element(offset), device_up.element(offset), count, dtype,
                              nullptr));
        cpu::silu_mul_reference(gate.data(), up.data(), offset, count + offset,
                                dtype == DType::kBF16);
        // expf on the GPU is within 2 ulps, glibc's within 1: exp(-g) differs by 3 ulps at
        // most, 1 + exp(-g) by no more in relative terms, and each side then rounds the add, the
        // division and the product (half an ulp each): 6 ulps, bound 8. bf16: silu's rounding
        // can go the other way where silu lies within those ulps of a tie (rare), moving the
        // product by one ulp of its size before its own rounding: within 3 bf16 ulps.
        const std::vector<float> bound =
            relative_bound(gate, dtype == DType::kF32 ? 8.0f * kF32Ulp : 3.0f * kBf16Ulp);
        expect_close(gate, device_gate.to_floats(), bound, dtype == DType::kF32 ? 1.0 : 0.01, what);
      }
    }
  }
}

TEST(CudaLlamaOps, ConvertFloatsRoundsToNearestEven) {
  KBIT_REQUIRE_CUDA();
  // Zeros of both signs, an f16 subnormal, values that round to the largest f16 or overflow it,
  // an f32 subnormal and a value near the top of bf16's range.
  const std::vector<float> special = {0.0f,     -0.0f, 1e-6f,  -3e-7f, 65519.0f,
                                      65520.0f, -7e4f, 1e-40f, 3e38f,  1.0009765625f};
  const DType dtypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType in_dtype : dtypes) {
    for (DType out_dtype : dtypes) {
      for (std::int64_t count : {1, 13, 4099}) {
        for (std::int64_t offset : {0, 1}) {
          const std::string what = dtype_label(in_dtype) + " to " + dtype_label(out_dtype) +
                                   ", count " + std::to_string(count) + ", offset " +
                                   std::to_string(offset);
          std::vector<float> in = random_values(count + offset, 40, in_dtype, 0.0f, 100.0f);
          for (std::size_t i = 0; i < special.size() && i < in.size(); ++i) {
            in[i] = representable(special[i], in_dtype);
          }
          const DeviceArray device_in(in, in_dtype);
          const DeviceArray out(count + offset, out_dtype);
          std::vector<float> expected = out.to_floats();  // the poison, kept before `offset`
          finish(cuda::convert_floats(device_in.element(offset), in_dtype, out.element(offset),
                                      out_dtype, count, nullptr));
          for (std::size_t i = static_cast<std::size_t>(offset); i < in.size(); ++i) {
            expected[i] = representable(in[i], out_dtype);
          }
          expect_same_bits(expected, out.to_floats(), what);
        }
      }
    }
  }
}

// ---- RoPE and the cache append.

struct RopeCase {
  std::int64_t tokens;
  std::int64_t first_position;
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;
};

// x [tokens, heads, head_dim] rotated by rope_reference.
std::vector<float> cpu_rope(std::vector<float> x, const RopeCase& c, std::int64_t heads,
                            const std::vector<float>& inv_freq, DType dtype) {
  cpu::RopeJob job;
  job.x = x.data();
  job.tokens = c.tokens;
  job.heads = heads;
  job.head_dim = c.head_dim;
  job.first_position = c.first_position;
  job.inv_freq = inv_freq.data();
  job.round_bf16 = dtype == DType::kBF16;
  cpu::rope_reference(job, 0, c.tokens);
  return x;
}

// The bound on a rotated element, from the pair (a, b) it was computed from. cosf and sinf are
// within 2 ulps on the GPU and 1 in glibc, so cos and sin differ by 3 ulps at most; with the
// rounding of each product and of the sum on either side, a·c − b·s differs by at most
// 5 ulps of |a| + |b| (|c|, |s| <= 1): bound 6. bf16: bf16(cos) or bf16(sin) can round the other
// way where cos or sin lies within those ulps of a tie (rare), moving a product by one bf16 ulp
// of |a|, and the rounding of the product and of the sum each by half an ulp more on either
// side: within 4 bf16 ulps of |a| + |b|.
std::vector<float> rope_bound(const std::vector<float>& x, std::int64_t head_dim, DType dtype) {
  const float factor = dtype == DType::kF32 ? 6.0f * kF32Ulp : 4.0f * kBf16Ulp;
  const auto half = static_cast<std::size_t>(head_dim / 2);
  std::vector<float> bound(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t pair = i % (2 * half) < half ? i + half : i - half;
    bound[i] = factor * (std::fabs(x[i]) + std::fabs(x[pair]));
  }
  return bound;
}

// Rows [first, first + count) of a cache [capacity, row_size] as floats.
std::vector<float> cache_rows(const std::vector<float>& cache, std::int64_t row_size,
                              std::int64_t first, std::int64_t count) {
  const auto begin = cache.begin() + first * row_size;
  return std::vector<float>(begin, begin + count * row_size);
}

// Expects every byte of a cache [capacity, row_size] outside rows [first, first + count) to
// still hold the poison.
void expect_poison_outside(const std::vector<std::uint8_t>& bytes, std::int64_t row_bytes,
                           std::int64_t first, std::int64_t count, const std::string& what) {
  const auto begin = static_cast<std::size_t>(first * row_bytes);
  const auto end = static_cast<std::size_t>((first + count) * row_bytes);
  std::size_t changed = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if ((i < begin || i >= end) && bytes[i] != 0xAB) ++changed;
  }
  EXPECT_EQ(changed, 0u) << what << ": bytes written outside the new rows";
}

TEST(CudaLlamaOps, RopeAppendKvMatchesReference) {
  KBIT_REQUIRE_CUDA();
  // Decode and prefill steps; position 120000 takes cosf and sinf past 105615, where CUDA
  // switches to its slow argument reduction.
  const RopeCase cases[] = {{1, 0, 8, 2, 64},       {5, 7, 8, 2, 64},     {300, 1000, 8, 2, 64},
                            {300, 1000, 4, 4, 128}, {3, 2040, 2, 1, 256}, {3, 120000, 2, 1, 64}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const RopeCase& c : cases) {
      std::ostringstream what;
      what << dtype_label(dtype) << ", tokens " << c.tokens << " at " << c.first_position
           << ", heads " << c.heads << "/" << c.kv_heads << ", head_dim " << c.head_dim;
      const std::int64_t capacity = c.first_position + c.tokens + 3;
      const std::int64_t q_size = c.tokens * c.heads * c.head_dim;
      const std::int64_t kv_row = c.kv_heads * c.head_dim;
      const std::vector<float> q = random_values(q_size, 50, dtype);
      const std::vector<float> k = random_values(c.tokens * kv_row, 51, dtype);
      const std::vector<float> v = random_values(c.tokens * kv_row, 52, dtype);
      const std::vector<float> inv_freq = inverse_frequencies(c.head_dim);

      const DeviceArray device_q(q, dtype);
      const DeviceArray device_k(k, dtype);
      const DeviceArray device_v(v, dtype);
      const DeviceArray device_inv_freq(inv_freq, DType::kF32);
      const DeviceArray position(
          std::vector<std::int32_t>{static_cast<std::int32_t>(c.first_position)});
      const DeviceArray k_cache(capacity * kv_row, dtype);
      const DeviceArray v_cache(capacity * kv_row, dtype);
      cuda::RopeAppendJob job;
      job.q = device_q.data();
      job.k = device_k.data();
      job.v = device_v.data();
      job.tokens = c.tokens;
      job.heads = c.heads;
      job.kv_heads = c.kv_heads;
      job.head_dim = c.head_dim;
      job.first_position = position.as<const std::int32_t>();
      job.inv_freq = device_inv_freq.as<const float>();
      job.k_cache = k_cache.data();
      job.v_cache = v_cache.data();
      job.dtype = dtype;
      job.capacity = capacity;
      finish(cuda::rope_append_kv(job, nullptr));

      const double max_inexact = dtype == DType::kF32 ? 1.0 : 0.01;
      const std::vector<float> q_expected = cpu_rope(q, c, c.heads, inv_freq, dtype);
      expect_close(q_expected, device_q.to_floats(), rope_bound(q, c.head_dim, dtype), max_inexact,
                   what.str() + ": q");
      const std::vector<float> k_expected = cpu_rope(k, c, c.kv_heads, inv_freq, dtype);
      const std::vector<float> k_rows =
          cache_rows(k_cache.to_floats(), kv_row, c.first_position, c.tokens);
      expect_close(k_expected, k_rows, rope_bound(k, c.head_dim, dtype), max_inexact,
                   what.str() + ": k cache");
      expect_equal(v, cache_rows(v_cache.to_floats(), kv_row, c.first_position, c.tokens),
                   what.str() + ": v cache");
      const auto row_bytes = static_cast<std::int64_t>(kv_row * dtype_size(dtype));
      expect_poison_outside(k_cache.bytes(), row_bytes, c.first_position, c.tokens,
                            what.str() + ": k cache");
      expect_poison_outside(v_cache.bytes(), row_bytes, c.first_position, c.tokens,
                            what.str() + ": v cache");
    }
  }
}

// ---- Attention.

struct AttentionCase {
  std::int64_t tokens;
  std::int64_t first_position;
  std::int64_t heads;
  std::int64_t kv_heads;
  std::int64_t head_dim;
  std::int64_t window;
  std::int64_t capacity;

  float scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }
  std::int64_t first_key(std::int64_t position) const {
    return window > 0 ? std::max<std::int64_t>(0, position - window + 1) : 0;
  }
  std::string describe(DType dtype) const {
    std::ostringstream text;
    text << dtype_label(dtype) << ", tokens " << tokens << " at " << first_position << ", heads "
         << heads << "/" << kv_heads << ", head_dim " << head_dim << ", window " << window
         << ", capacity " << capacity;
    return text.str();
  }
};

// q [tokens, heads, head_dim] and the caches [capacity, kv_heads, head_dim], every row filled.
struct AttentionData {
  std::vector<float> q;
  std::vector<float> k_cache;
  std::vector<float> v_cache;
};

AttentionData random_attention_data(const AttentionCase& c, DType dtype, std::uint64_t seed) {
  const std::int64_t cache_size = c.capacity * c.kv_heads * c.head_dim;
  return {random_values(c.tokens * c.heads * c.head_dim, seed, dtype),
          random_values(cache_size, seed + 1, dtype), random_values(cache_size, seed + 2, dtype)};
}

std::vector<float> cpu_attention(const AttentionCase& c, const AttentionData& data, DType dtype) {
  std::vector<float> out(data.q.size());
  cpu::AttentionJob job;
  job.q = data.q.data();
  job.k_cache = data.k_cache.data();
  job.v_cache = data.v_cache.data();
  job.tokens = c.tokens;
  job.heads = c.heads;
  job.kv_heads = c.kv_heads;
  job.head_dim = c.head_dim;
  job.first_position = c.first_position;
  job.window = c.window;
  job.scale = c.scale();
  job.out = out.data();
  job.round_bf16 = dtype == DType::kBF16;
  cpu::attention_reference(job, 0, c.tokens * c.heads);
  return out;
}

// Σ_j p_j·|v_j[i]| for every output element, p the softmax in double: the size of the terms
// whose rounding the attention tolerances bound.
std::vector<float> attention_magnitudes(const AttentionCase& c, const AttentionData& data) {
  const std::int64_t d = c.head_dim;
  const std::int64_t group = c.heads / c.kv_heads;
  std::vector<float> magnitudes(data.q.size());
  std::vector<double> weights;
  for (std::int64_t item = 0; item < c.tokens * c.heads; ++item) {
    const std::int64_t position = c.first_position + item / c.heads;
    const std::int64_t kv = item % c.heads / group;
    const std::int64_t first = c.first_key(position);
    weights.assign(static_cast<std::size_t>(position + 1 - first), 0.0);
    double max_score = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = first; j <= position; ++j) {
      double dot = 0.0;
      for (std::int64_t i = 0; i < d; ++i) {
        dot += static_cast<double>(data.q[static_cast<std::size_t>(item * d + i)]) *
               data.k_cache[static_cast<std::size_t>((j * c.kv_heads + kv) * d + i)];
      }
      weights[static_cast<std::size_t>(j - first)] = dot * c.scale();
      max_score = std::max(max_score, dot * c.scale());
    }
    double total = 0.0;
    for (double& weight : weights) {
      weight = std::exp(weight - max_score);
      total += weight;
    }
    for (std::int64_t i = 0; i < d; ++i) {
      double magnitude = 0.0;
      for (std::int64_t j = first; j <= position; ++j) {
        magnitude +=
            weights[static_cast<std::size_t>(j - first)] *
            std::fabs(data.v_cache[static_cast<std::size_t>((j * c.kv_heads + kv) * d + i)]);
      }
      magnitudes[static_cast<std::size_t>(item * d + i)] = static_cast<float>(magnitude / total);
    }
  }
  return magnitudes;
}

// f32: the GPU sums the dot products, the softmax denominator and the weighted values in other
// orders than the CPU, and its expf is within 2 ulps where glibc's is within 1. For N(0, 1)
// data each sum's rounding error walks randomly, about u·sqrt(terms) relative to its terms
// (u = 2^-24; at most 256 dimensions and 2048 keys): the scores and the probabilities move by a
// few 1e-6 of the magnitudes Σ p·|v|; bound 2^-15 ≈ 3e-5 of them. bf16: the GPU rounds
// exp(s − m) to bf16 with m the running max of its chunk or tile, the CPU with m the global max,
// so the two roundings of each probability are independent: half a bf16 ulp (2^-9) each, 2^-8
// of the magnitudes together; then each side rounds the output, half an ulp of its size each:
// within 2^-7·(magnitude + |out|).
std::vector<float> attention_bound(const std::vector<float>& expected,
                                   const std::vector<float>& magnitudes, DType dtype) {
  std::vector<float> bound(expected.size());
  for (std::size_t i = 0; i < bound.size(); ++i) {
    bound[i] = dtype == DType::kF32 ? std::ldexp(magnitudes[i], -15)
                                    : kBf16Ulp * (magnitudes[i] + std::fabs(expected[i]));
  }
  return bound;
}

// The cache [rows, row_size] with NaN in every row outside [first_visible, last_visible].
std::vector<float> nan_outside(std::vector<float> cache, std::int64_t row_size,
                               std::int64_t first_visible, std::int64_t last_visible) {
  for (std::size_t i = 0; i < cache.size(); ++i) {
    const std::int64_t row = static_cast<std::int64_t>(i) / row_size;
    if (row < first_visible || row > last_visible) cache[i] = kNaN;
  }
  return cache;
}

// The device side of an attention test: q, the caches with NaN in every row outside
// [first_visible, last_visible] (rows no query may read), the position, the workspace and the
// output, poisoned before every run.
class GpuAttention {
 public:
  GpuAttention(const AttentionCase& c, const AttentionData& data, DType dtype,
               std::int64_t first_visible, std::int64_t last_visible)
      : case_(c),
        dtype_(dtype),
        q_(data.q, dtype),
        k_cache_(nan_outside(data.k_cache, c.kv_heads * c.head_dim, first_visible, last_visible),
                 dtype),
        v_cache_(nan_outside(data.v_cache, c.kv_heads * c.head_dim, first_visible, last_visible),
                 dtype),
        position_(std::vector<std::int32_t>{0}),
        workspace_(
            static_cast<std::int64_t>(std::max<std::size_t>(
                cuda::attention_workspace_floats(c.tokens, c.heads, c.head_dim, c.capacity), 1)),
            DType::kF32),
        out_(c.tokens * c.heads * c.head_dim, dtype) {}

  // The job run() launches, at the position run() writes.
  cuda::AttentionJob job() const {
    cuda::AttentionJob job;
    job.q = q_.data();
    job.k_cache = k_cache_.data();
    job.v_cache = v_cache_.data();
    job.tokens = case_.tokens;
    job.heads = case_.heads;
    job.kv_heads = case_.kv_heads;
    job.head_dim = case_.head_dim;
    job.first_position = position_.as<const std::int32_t>();
    job.capacity = case_.capacity;
    job.window = case_.window;
    job.scale = case_.scale();
    job.out = out_.data();
    job.dtype = dtype_;
    job.workspace = workspace_.as<float>();
    return job;
  }

  // The output of attention with the queries at first_position + t.
  std::vector<float> run(std::int32_t first_position) const {
    check(cudaMemcpy(position_.data(), &first_position, sizeof(first_position),
                     cudaMemcpyHostToDevice));
    out_.poison();
    finish(cuda::attention(job(), nullptr));
    return out_.to_floats();
  }

 private:
  AttentionCase case_;
  DType dtype_;
  DeviceArray q_;
  DeviceArray k_cache_;
  DeviceArray v_cache_;
  DeviceArray position_;
  DeviceArray workspace_;
  DeviceArray out_;
};

// Runs case c on the GPU (NaN in every cache row outside the keys its queries see) and compares
// with attention_reference, through the tensor-core kernel exactly where `tensor_cores`. Returns
// the largest |actual − expected| / (magnitude + |expected|), the scale of attention_bound's bf16
// bound.
double expect_attention_matches(const AttentionCase& c, const AttentionData& data, DType dtype,
                                bool tensor_cores = false) {
  const std::int64_t last_position = c.first_position + c.tokens - 1;
  GpuAttention gpu(c, data, dtype, c.first_key(c.first_position), last_position);
  EXPECT_EQ(cuda::attention_forward_mma_takes(gpu.job()), tensor_cores) << c.describe(dtype);
  const std::vector<float> actual = gpu.run(static_cast<std::int32_t>(c.first_position));
  const std::vector<float> expected = cpu_attention(c, data, dtype);
  const std::vector<float> magnitudes = attention_magnitudes(c, data);
  expect_close(expected, actual, attention_bound(expected, magnitudes, dtype), 1.0,
               c.describe(dtype));
  double worst = 0.0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double scale = magnitudes[i] + std::fabs(expected[i]);
    if (scale > 0.0) worst = std::max(worst, std::fabs(actual[i] - expected[i]) / scale);
  }
  return worst;
}

std::vector<float> slice(const std::vector<float>& values, std::int64_t first, std::int64_t count) {
  return std::vector<float>(values.begin() + first, values.begin() + first + count);
}

// The decode of several sequences in one call each (RoPE with the cache append, then attention),
// as the model's batched decode step makes them: every sequence gets the bits it gets alone.
TEST(CudaLlamaOps, BatchedDecodeEqualsEachSequenceAlone) {
  KBIT_REQUIRE_CUDA();
  constexpr std::int64_t kSequences = 3;
  constexpr std::int64_t kHeads = 8;
  constexpr std::int64_t kKvHeads = 2;
  constexpr std::int64_t kHeadDim = 64;
  constexpr std::int64_t kCapacity = 600;  // chunks of 32 keys, the last partly used
  constexpr std::int64_t kQRow = kHeads * kHeadDim;
  constexpr std::int64_t kKvRow = kKvHeads * kHeadDim;
  constexpr std::int64_t kCache = kCapacity * kKvRow;
  const DeviceArray inv_freq(inverse_frequencies(kHeadDim), DType::kF32);
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const std::int32_t position : {0, 517}) {
      const std::vector<float> q = random_values(kSequences * kQRow, 70, dtype);
      const std::vector<float> k = random_values(kSequences * kKvRow, 71, dtype);
      const std::vector<float> v = random_values(kSequences * kKvRow, 72, dtype);
      const std::vector<float> k_cache = random_values(kSequences * kCache, 73, dtype);
      const std::vector<float> v_cache = random_values(kSequences * kCache, 74, dtype);
      const DeviceArray device_position(std::vector<std::int32_t>{position});
      // Sequences [first, first + count) in one call: their outputs, then their caches.
      const auto run = [&](std::int64_t first, std::int64_t count) {
        const DeviceArray device_q(slice(q, first * kQRow, count * kQRow), dtype);
        const DeviceArray device_k(slice(k, first * kKvRow, count * kKvRow), dtype);
        const DeviceArray device_v(slice(v, first * kKvRow, count * kKvRow), dtype);
        const DeviceArray keys(slice(k_cache, first * kCache, count * kCache), dtype);
        const DeviceArray values(slice(v_cache, first * kCache, count * kCache), dtype);
        const DeviceArray out(count * kQRow, dtype);
        const DeviceArray workspace(static_cast<std::int64_t>(cuda::attention_workspace_floats(
                                        1, kHeads, kHeadDim, kCapacity, count)),
                                    DType::kF32);
        cuda::RopeAppendJob rope;
        rope.q = device_q.data();
        rope.k = device_k.data();
        rope.v = device_v.data();
        rope.tokens = count;
        rope.heads = kHeads;
        rope.kv_heads = kKvHeads;
        rope.head_dim = kHeadDim;
        rope.first_position = device_position.as<const std::int32_t>();
        rope.inv_freq = inv_freq.as<const float>();
        rope.k_cache = keys.data();
        rope.v_cache = values.data();
        rope.dtype = dtype;
        rope.capacity = kCapacity;
        rope.sequences = count;
        finish(cuda::rope_append_kv(rope, nullptr));
        cuda::AttentionJob job;
        job.q = device_q.data();
        job.k_cache = keys.data();
        job.v_cache = values.data();
        job.tokens = 1;
        job.heads = kHeads;
        job.kv_heads = kKvHeads;
        job.head_dim = kHeadDim;
        job.first_position = device_position.as<const std::int32_t>();
        job.capacity = kCapacity;
        job.window = 0;
        job.scale = 0.125f;
        job.out = out.data();
        job.dtype = dtype;
        job.workspace = workspace.as<float>();
        job.sequences = count;
        finish(cuda::attention(job, nullptr));
        std::vector<float> results = out.to_floats();
        for (const DeviceArray* cache : {&keys, &values}) {
          const std::vector<float> rows = cache->to_floats();
          results.insert(results.end(), rows.begin(), rows.end());
        }
        return results;
      };
      const std::vector<float> batched = run(0, kSequences);
      for (std::int64_t b = 0; b < kSequences; ++b) {
        const std::vector<float> alone = run(b, 1);
        const std::string what = std::string(dtype_label(dtype)) + ", position " +
                                 std::to_string(position) + ", sequence " + std::to_string(b);
        expect_equal(slice(alone, 0, kQRow), slice(batched, b * kQRow, kQRow), what + ": out");
        for (std::int64_t c = 0; c < 2; ++c) {
          const std::int64_t batched_cache = kSequences * kQRow + c * kSequences * kCache;
          expect_equal(slice(alone, kQRow + c * kCache, kCache),
                       slice(batched, batched_cache + b * kCache, kCache),
                       what + (c == 0 ? ": k cache" : ": v cache"));
        }
      }
    }
  }
}

// rope_append_and_attend against the two calls it stands for, rope_append_kv and attention: the
// same output and caches to the bit, and q as it was. The fused call reads each block's first tile
// from shared memory where its rows fit and a kv head has several query heads (bf16 head_dim 64,
// 80 and 128, f32 64), with the appended row written there too, and the two calls read every row
// from global memory; head_dim 256 and the case without GQA keep the global reads in both.
TEST(CudaLlamaOps, RopeAppendAndAttendEqualsTheTwoCalls) {
  KBIT_REQUIRE_CUDA();
  struct Case {
    std::int64_t sequences;
    std::int64_t heads;
    std::int64_t kv_heads;
    std::int64_t head_dim;
    std::int64_t capacity;  // 10 000 rows: chunks of 64 keys, two tiles each
    std::int64_t window;
  };
  const Case cases[] = {{1, 8, 2, 64, 600, 0},     {3, 8, 2, 128, 600, 0},
                        {2, 4, 4, 128, 1000, 300}, {1, 16, 2, 80, 10000, 0},
                        {1, 6, 1, 256, 2048, 0},   {2, 32, 8, 128, 640, 1}};
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Case& c : cases) {
      const std::int64_t q_size = c.sequences * c.heads * c.head_dim;
      const std::int64_t kv_size = c.sequences * c.kv_heads * c.head_dim;
      const std::int64_t cache_size = c.sequences * c.capacity * c.kv_heads * c.head_dim;
      const std::vector<float> q = random_values(q_size, 80, dtype);
      const std::vector<float> k = random_values(kv_size, 81, dtype);
      const std::vector<float> v = random_values(kv_size, 82, dtype);
      const std::vector<float> k_cache = random_values(cache_size, 83, dtype);
      const std::vector<float> v_cache = random_values(cache_size, 84, dtype);
      const DeviceArray inv_freq(inverse_frequencies(c.head_dim), DType::kF32);
      // Positions at and around chunk boundaries, and the last row.
      for (const std::int64_t position : {std::int64_t{0}, std::int64_t{31}, std::int64_t{32},
                                          std::int64_t{517}, c.capacity - 1}) {
        const DeviceArray device_position(
            std::vector<std::int32_t>{static_cast<std::int32_t>(position)});
        // q, out and the two caches after one decode step, fused or as two calls.
        const auto run = [&](bool fused) {
          const DeviceArray device_q(q, dtype);
          const DeviceArray device_k(k, dtype);
          const DeviceArray device_v(v, dtype);
          const DeviceArray keys(k_cache, dtype);
          const DeviceArray values(v_cache, dtype);
          const DeviceArray out(q_size, dtype);
          const DeviceArray workspace(static_cast<std::int64_t>(cuda::attention_workspace_floats(
                                          1, c.heads, c.head_dim, c.capacity, c.sequences)),
                                      DType::kF32);
          const cuda::RopeAppendJob rope{device_q.data(),
                                         device_k.data(),
                                         device_v.data(),
                                         c.sequences,
                                         c.heads,
                                         c.kv_heads,
                                         c.head_dim,
                                         device_position.as<const std::int32_t>(),
                                         inv_freq.as<const float>(),
                                         keys.data(),
                                         values.data(),
                                         dtype,
                                         c.capacity,
                                         c.sequences};
          const cuda::AttentionJob job{device_q.data(),
                                       keys.data(),
                                       values.data(),
                                       1,
                                       c.heads,
                                       c.kv_heads,
                                       c.head_dim,
                                       device_position.as<const std::int32_t>(),
                                       c.capacity,
                                       c.window,
                                       1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                       out.data(),
                                       dtype,
                                       workspace.as<float>(),
                                       c.sequences};
          if (fused) {
            finish(cuda::rope_append_and_attend(rope, job, nullptr));
          } else {
            finish(cuda::rope_append_kv(rope, nullptr));
            finish(cuda::attention(job, nullptr));
          }
          return std::array<std::vector<float>, 4>{device_q.to_floats(), out.to_floats(),
                                                   keys.to_floats(), values.to_floats()};
        };
        const auto fused = run(true);
        const auto separate = run(false);
        std::ostringstream what;
        what << dtype_label(dtype) << ", " << c.sequences << " sequences at " << position
             << ", heads " << c.heads << "/" << c.kv_heads << ", head_dim " << c.head_dim
             << ", capacity " << c.capacity << ", window " << c.window;
        expect_equal(q, fused[0], what.str() + ": q, unrotated");
        expect_equal(separate[1], fused[1], what.str() + ": out");
        expect_equal(separate[2], fused[2], what.str() + ": k cache");
        expect_equal(separate[3], fused[3], what.str() + ": v cache");
      }
    }
  }
}

TEST(CudaLlamaOps, AttentionDecodeMatchesReference) {
  KBIT_REQUIRE_CUDA();
  struct Shape {
    std::int64_t heads;
    std::int64_t kv_heads;
    std::int64_t head_dim;
  };
  // GQA groups of 4 (one pass of kv head's queries), 8 (two) and 6 (a full pass and a partial
  // one), no GQA; head_dim 80 (pieces not shared evenly by the warps) and 256 (two dimensions per
  // thread).
  const Shape shapes[] = {{8, 2, 64}, {8, 2, 128}, {4, 4, 128}, {16, 2, 80}, {6, 1, 256}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& shape : shapes) {
      // Chunks of 32 keys up to 8 192 rows: 1000 rows end in a partial chunk; 10 000 rows take
      // chunks of 64 keys, each two tiles.
      for (std::int64_t capacity : {2048, 1000, 10000}) {
        AttentionCase c{1, 0, shape.heads, shape.kv_heads, shape.head_dim, 0, capacity};
        const AttentionData data = random_attention_data(c, dtype, 60);
        // Positions at and around tile and chunk boundaries, and the last row.
        for (std::int64_t position : {0, 1, 31, 32, 63, 64, 65, 255, 999, 1000, 2047, 9999}) {
          if (position >= capacity) continue;
          // 1: the key at the position alone; 300: a window across chunk boundaries.
          for (std::int64_t window : {0, 1, 300}) {
            c.first_position = position;
            c.window = window;
            expect_attention_matches(c, data, dtype);
          }
        }
      }
    }
  }
}

TEST(CudaLlamaOps, AttentionDecodeReadsThePositionFromDeviceMemory) {
  KBIT_REQUIRE_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    AttentionCase c{1, 0, 8, 2, 128, 0, 2048};
    const AttentionData data = random_attention_data(c, dtype, 70);
    // Rows past the last position are NaN: a run that read past its own position would show.
    GpuAttention gpu(c, data, dtype, 0, 1500);
    // The same job each time; only the device int changes (as in a replayed CUDA graph). The
    // last step goes back to a position whose chunks held other partials in between.
    for (std::int32_t position : {300, 1500, 5, 300}) {
      c.first_position = position;
      const std::vector<float> expected = cpu_attention(c, data, dtype);
      expect_close(expected, gpu.run(position),
                   attention_bound(expected, attention_magnitudes(c, data), dtype), 1.0,
                   c.describe(dtype));
    }
  }
}

TEST(CudaLlamaOps, AttentionPrefillMatchesReference) {
  KBIT_REQUIRE_CUDA();
  // {tokens, first_position, heads, kv_heads, head_dim, window, capacity}: a new sequence and a
  // continued one, query tiles of 32 full and partial, GQA and not, head_dim 64, 80 (not a
  // multiple of 32), 128 and 256 (beyond 48 KiB of shared memory), windows, and a cache filled
  // to its last row. The bf16 cases at head_dim 64 and 128 without a window run on tensor cores
  // (AttentionPrefillOnTensorCoresMatchesReference below); the others on the CUDA-core kernel.
  const AttentionCase cases[] = {{2, 0, 8, 2, 64, 0, 2048},      {17, 0, 8, 8, 128, 0, 2048},
                                 {33, 5, 8, 2, 128, 0, 2048},    {300, 0, 8, 2, 128, 0, 2048},
                                 {300, 1000, 8, 2, 64, 0, 2048}, {300, 1000, 8, 2, 128, 100, 2048},
                                 {64, 1000, 4, 4, 256, 0, 2048}, {40, 0, 4, 2, 80, 37, 2048},
                                 {129, 0, 2, 1, 64, 1, 256},     {100, 900, 8, 2, 128, 0, 1000}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::uint64_t seed = 80;
    for (const AttentionCase& c : cases) {
      const bool tensor_cores =
          dtype == DType::kBF16 && (c.head_dim == 64 || c.head_dim == 128) && c.window == 0;
      expect_attention_matches(c, random_attention_data(c, dtype, seed), dtype, tensor_cores);
      seed += 3;
    }
  }
}

// The FlashAttention-2 kernel of attention_forward_mma.cu, which attention() runs for bf16
// prefills at head_dim 64 and 128 without a window. Tolerance: attention_bound's bf16 bound,
// |actual − expected| <= 2^-7 · (Σ p·|v| + |expected|), for the reasons given there (each side
// rounds each probability to bf16 against its own max, and the output); its exp2f of the scores
// scaled by scale · log2(e) differs from expf by a few f32 ulps, far below that.
TEST(CudaLlamaOps, AttentionPrefillOnTensorCoresMatchesReference) {
  KBIT_REQUIRE_CUDA();
  // {tokens, first_position, heads, kv_heads, head_dim, window, capacity}: the fewest tokens, one
  // and several query tiles of 64 full and partial (tokens 2 to 600), continued sequences whose
  // first position is no multiple of 64 (so that the causal edge crosses two key tiles) up to
  // 1900, GQA groups of 1 and 4. Every cache row past the last query's position is NaN, and the
  // capacity leaves such rows in the last key tile the kernel reads (600 in a cache of 700).
  const AttentionCase cases[] = {{2, 0, 8, 2, 64, 0, 64},         {64, 0, 4, 4, 128, 0, 128},
                                 {65, 0, 8, 2, 128, 0, 100},      {127, 0, 4, 1, 64, 0, 2048},
                                 {600, 0, 8, 2, 128, 0, 700},     {600, 0, 4, 4, 64, 0, 640},
                                 {33, 7, 8, 8, 128, 0, 2048},     {2, 1900, 4, 1, 128, 0, 2048},
                                 {130, 1899, 8, 2, 64, 0, 2048},  {257, 1700, 8, 2, 128, 0, 2048},
                                 {300, 1000, 4, 1, 128, 0, 1400}, {200, 63, 8, 8, 64, 0, 300}};
  std::uint64_t seed = 120;
  double worst = 0.0;
  for (const AttentionCase& c : cases) {
    const AttentionData data = random_attention_data(c, DType::kBF16, seed);
    worst = std::max(worst, expect_attention_matches(c, data, DType::kBF16, true));
    seed += 3;
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
}

TEST(CudaLlamaOps, LaunchersRejectUnsupportedArguments) {
  KBIT_REQUIRE_CUDA();
  EXPECT_EQ(cuda::add_residual(nullptr, nullptr, 8, DType::kF16, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::silu_mul(nullptr, nullptr, 8, DType::kI8, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::convert_floats(nullptr, DType::kI32, nullptr, DType::kF32, 8, nullptr),
            cudaErrorInvalidValue);
  cuda::AttentionJob job{};
  job.tokens = 2;  // prefill: no workspace needed
  job.heads = 8;
  job.kv_heads = 3;  // does not divide heads
  job.head_dim = 128;
  job.capacity = 16;
  job.dtype = DType::kBF16;
  EXPECT_EQ(cuda::attention(job, nullptr), cudaErrorInvalidValue);
  job.kv_heads = 2;
  job.head_dim = 264;  // more than 256
  EXPECT_EQ(cuda::attention(job, nullptr), cudaErrorInvalidValue);

  // rope_append_and_attend: jobs that do not describe the same decode step.
  const DeviceArray position(std::vector<std::int32_t>{0});
  float workspace = 0.0f;
  job.tokens = 1;
  job.head_dim = 128;
  job.first_position = position.as<const std::int32_t>();
  job.workspace = &workspace;  // never read: the launch is refused
  cuda::RopeAppendJob rope{};
  rope.tokens = 1;
  rope.heads = job.heads;
  rope.kv_heads = job.kv_heads;
  rope.first_position = job.first_position;
  rope.dtype = job.dtype;
  rope.capacity = job.capacity;
  rope.head_dim = 64;  // not the attention's
  EXPECT_EQ(cuda::rope_append_and_attend(rope, job, nullptr), cudaErrorInvalidValue);
  rope.head_dim = job.head_dim;
  rope.tokens = 2;  // two tokens of one sequence: not a decode step
  EXPECT_EQ(cuda::rope_append_and_attend(rope, job, nullptr), cudaErrorInvalidValue);
  rope.tokens = 1;
  rope.capacity = job.capacity + 1;
  EXPECT_EQ(cuda::rope_append_and_attend(rope, job, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kbit::kernels
