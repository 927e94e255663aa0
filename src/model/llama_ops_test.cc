// Each fast Llama CPU kernel against its reference and against float64, on fresh random data.
#include "kernels/cpu/llama_ops.h"

#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "kbit/core/cpu_features.h"
#include "kernels/cpu/element_access.h"

namespace kbit::kernels::cpu {
namespace {

std::vector<float> random_vector(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// max |got − want| / max |want|
double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return diff / scale;
}

ExecutionOptions fast_options() {
  return ExecutionOptions{};
}

class LlamaOpsTest : public ::testing::Test {
 protected:
  std::mt19937 rng_{std::random_device{}()};
};

TEST_F(LlamaOpsTest, LinearEveryPathAndDtype) {
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const std::int64_t rows : {1, 3, 37}) {
      const std::int64_t in = 1100, out = 301;  // panels and vectors with tails
      const std::vector<float> x = random_vector(static_cast<std::size_t>(rows * in), rng_);
      const std::vector<float> w_f32 =
          random_vector(static_cast<std::size_t>(out * in), rng_, 0.05f);
      const std::vector<float> bias = random_vector(static_cast<std::size_t>(out), rng_);
      // The weight in its dtype, and its exact f32 value for the float64 reference.
      std::vector<std::uint8_t> storage(w_f32.size() * dtype_size(dtype));
      std::vector<double> w_exact(w_f32.size());
      visit_float_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        T* w = reinterpret_cast<T*>(storage.data());
        for (std::size_t i = 0; i < w_f32.size(); ++i) {
          w[i] = from_f32<T>(w_f32[i]);
          w_exact[i] = to_f32(w[i]);
        }
      });
      std::vector<double> want(static_cast<std::size_t>(rows * out));
      for (std::int64_t m = 0; m < rows; ++m) {
        for (std::int64_t n = 0; n < out; ++n) {
          double sum = bias[static_cast<std::size_t>(n)];
          for (std::int64_t k = 0; k < in; ++k) {
            sum += static_cast<double>(x[static_cast<std::size_t>(m * in + k)]) *
                   w_exact[static_cast<std::size_t>(n * in + k)];
          }
          want[static_cast<std::size_t>(m * out + n)] = sum;
        }
      }
      std::vector<float> y(want.size());
      LinearJob job{x.data(), storage.data(), dtype, bias.data(), rows, in, out, y.data()};
      linear_reference(job, 0, out);
      EXPECT_LT(relative_error(y, want), 1e-5) << "reference " << dtype_name(dtype);
      std::fill(y.begin(), y.end(), 0.0f);
      linear_blas(job, 0, out);
      EXPECT_LT(relative_error(y, want), 1e-5) << "blas " << dtype_name(dtype) << " rows " << rows;
      if (active_cpu_isa() == CpuIsa::kAvx512) {
        std::fill(y.begin(), y.end(), 0.0f);
        linear_gemv_avx512(job, 0, out);
        EXPECT_LT(relative_error(y, want), 1e-5) << "gemv " << dtype_name(dtype);
      }
      std::fill(y.begin(), y.end(), 0.0f);
      linear_op(job, fast_options());
      EXPECT_LT(relative_error(y, want), 1e-5) << "linear_op " << dtype_name(dtype);
    }
  }
}

TEST_F(LlamaOpsTest, RmsNorm) {
  const std::int64_t rows = 7, cols = 389;
  const std::vector<float> x = random_vector(static_cast<std::size_t>(rows * cols), rng_, 3.0f);
  const std::vector<float> weight = random_vector(static_cast<std::size_t>(cols), rng_);
  std::vector<double> want(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i)
      sum += std::pow(x[static_cast<std::size_t>(r * cols + i)], 2);
    const double inv = 1.0 / std::sqrt(sum / static_cast<double>(cols) + 1e-5);
    for (std::int64_t i = 0; i < cols; ++i) {
      const auto at = static_cast<std::size_t>(r * cols + i);
      want[at] = weight[static_cast<std::size_t>(i)] * (x[at] * inv);
    }
  }
  std::vector<float> y(x.size());
  const RmsNormJob job{x.data(), weight.data(), rows, cols, 1e-5f, y.data()};
  rms_norm_reference(job, 0, rows);
  EXPECT_LT(relative_error(y, want), 1e-5);
  if (active_cpu_isa() == CpuIsa::kAvx512) {
    rms_norm_avx512(job, 0, rows);
    EXPECT_LT(relative_error(y, want), 1e-5);
  }
}

TEST_F(LlamaOpsTest, AttentionGroupedCausalAndWindowed) {
  const std::int64_t heads = 6, kv_heads = 2, d = 40, cached = 300, tokens = 5;
  const std::int64_t first = cached - tokens;
  const std::vector<float> q = random_vector(static_cast<std::size_t>(tokens * heads * d), rng_);
  const std::vector<float> k = random_vector(static_cast<std::size_t>(cached * kv_heads * d), rng_);
  const std::vector<float> v = random_vector(static_cast<std::size_t>(cached * kv_heads * d), rng_);
  for (const std::int64_t window : {0, 7}) {
    std::vector<double> want(q.size());
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t g = h / (heads / kv_heads), pos = first + t;
        const std::int64_t lo = window > 0 ? std::max<std::int64_t>(0, pos - window + 1) : 0;
        std::vector<double> p;
        double mx = -1e300;
        for (std::int64_t j = lo; j <= pos; ++j) {
          double dot = 0.0;
          for (std::int64_t i = 0; i < d; ++i) {
            dot += static_cast<double>(q[static_cast<std::size_t>((t * heads + h) * d + i)]) *
                   k[static_cast<std::size_t>((j * kv_heads + g) * d + i)];
          }
          p.push_back(dot / std::sqrt(static_cast<double>(d)));
          mx = std::max(mx, p.back());
        }
        double total = 0.0;
        for (double& s : p) total += (s = std::exp(s - mx));
        for (std::int64_t i = 0; i < d; ++i) {
          double sum = 0.0;
          for (std::int64_t j = lo; j <= pos; ++j) {
            sum += p[static_cast<std::size_t>(j - lo)] / total *
                   v[static_cast<std::size_t>((j * kv_heads + g) * d + i)];
          }
          want[static_cast<std::size_t>((t * heads + h) * d + i)] = sum;
        }
      }
    }
    std::vector<float> out(q.size());
    const AttentionJob job{
        q.data(),  k.data(), v.data(), tokens, heads,
        kv_heads,  d,        first,    window, 1.0f / std::sqrt(static_cast<float>(d)),
        out.data()};
    attention_reference(job, 0, tokens * heads);
    EXPECT_LT(relative_error(out, want), 1e-5) << "window " << window;
    if (active_cpu_isa() == CpuIsa::kAvx512) {
      std::fill(out.begin(), out.end(), 0.0f);
      attention_avx512(job, 0, tokens * heads);
      EXPECT_LT(relative_error(out, want), 1e-5) << "avx512 window " << window;
    }
  }
}

TEST_F(LlamaOpsTest, SiluMul) {
  std::vector<float> gate = random_vector(1000, rng_, 4.0f);
  const std::vector<float> up = random_vector(1000, rng_);
  std::vector<double> want(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) {
    want[i] = gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i];
  }
  silu_mul_op(gate.data(), up.data(), 1000, fast_options());
  EXPECT_LT(relative_error(gate, want), 1e-6);
}

}  // namespace
}  // namespace kbit::kernels::cpu
