// GPU tests of training's backward kernels other than attention's (llama_backward_launchers.h)
// against the CPU reference kernels of kernels/cpu/llama_backward.h, in f32 and bf16
// activations, on fresh random data.
//
// The CPU gets f32 arrays holding exactly the values the GPU gets (rounded to the activation
// dtype first) and computes in f32 (the cross-entropy's sums in double). Every device output is
// poisoned (0xAB bytes) before the launch, so an element left unwritten fails the comparison.
//
// Tolerances: each test bounds every element by the rounding errors the two sides may make, as
// multiples of u = 2^-24 times the magnitudes the operation combines (a sum's bound grows with the
// number of terms: the CPU adds in sequence, the GPU in a tree), plus, in bf16, the half ulp of
// the GPU's final rounding. A wrong formula, sign or index errs by the size of the values
// themselves, far beyond these bounds.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kernels/cpu/llama_backward.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cuda/cuda_kernel_test_support.h"
#include "kernels/cuda/llama_backward_launchers.h"
#include "testing/shared_data.h"

namespace kbit::kernels {
namespace {

using namespace cuda_test;  // NOLINT: the shared helpers of cuda_kernel_test_support.h

constexpr float kUnitRoundoff = kF32Ulp / 2.0f;  // u = 2^-24

// The half ulp of a bf16 store of the result, nothing for f32.
float storage_rounding(float value, DType dtype) {
  return dtype == DType::kBF16 ? 0.5f * kBf16Ulp * std::fabs(value) : 0.0f;
}

// ---- rms_norm

TEST(CudaLlamaBackward, RmsNormBackwardMatchesReference) {
  KBIT_REQUIRE_CUDA();
  const float eps = 1e-5f;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // 4096: a Llama hidden size in whole 16-byte vectors; 37 and 1 odd ones. 300 rows take several
    // row ranges of the weight's gradient, 1 row a single one.
    for (const auto& [rows, cols] :
         {std::pair<std::int64_t, std::int64_t>{300, 4096}, {3, 37}, {1, 1}, {130, 2048}}) {
      for (const bool aliased : {false, true}) {
        const std::string what = dtype_label(dtype) + ", " + std::to_string(rows) + "x" +
                                 std::to_string(cols) + (aliased ? ", dx = dy" : "");
        const std::int64_t n = rows * cols;
        const std::vector<float> x = random_values(n, 20, dtype);
        const std::vector<float> dy = random_values(n, 21, dtype);
        const std::vector<float> weight = random_values(cols, 22, DType::kF32, 1.0f, 0.1f);
        const std::vector<float> dweight_before = random_values(cols, 23, DType::kF32);

        const DeviceArray device_x(x, dtype);
        const DeviceArray device_dy(dy, dtype);
        const DeviceArray device_weight(weight, DType::kF32);
        const DeviceArray device_dx(n, dtype);
        const DeviceArray device_dweight(dweight_before, DType::kF32);
        const DeviceArray workspace(
            static_cast<std::int64_t>(cuda::rms_norm_backward_workspace_floats(rows, cols)),
            DType::kF32);
        cuda::RmsNormBackwardJob job{device_x.data(),
                                     device_weight.as<const float>(),
                                     device_dy.data(),
                                     rows,
                                     cols,
                                     eps,
                                     aliased ? device_dy.data() : device_dx.data(),
                                     aliased ? nullptr : device_dweight.as<float>(),
                                     dtype,
                                     workspace.as<float>()};
        finish(cuda::rms_norm_backward(job, nullptr));

        std::vector<float> expected_dx(static_cast<std::size_t>(n));
        std::vector<float> expected_dweight = dweight_before;
        cpu::rms_norm_backward_reference({x.data(), weight.data(), dy.data(), rows, cols, eps,
                                          expected_dx.data(), expected_dweight.data()});

        // Bounds. Per row, r = rsqrt(mean(x²) + eps) and mean(g · x) are sums of `cols` terms:
        // their errors stay under 2·cols·u relative to the sums of magnitudes (each side's
        // sequential or tree sum, with the products' roundings). dx = r·g − x·r³·mean(g·x)
        // then errs by at most (2·cols + 16)·u times |r·g| + |x|·r³·mean(|g·x|).
        std::vector<float> dx_bound(expected_dx.size());
        std::vector<float> dweight_bound(static_cast<std::size_t>(cols));
        std::vector<double> dweight_magnitude(static_cast<std::size_t>(cols), 0.0);
        const float sum_factor = (2.0f * static_cast<float>(cols) + 16.0f) * kUnitRoundoff;
        for (std::int64_t r = 0; r < rows; ++r) {
          double squares = 0.0;
          double g_x_magnitude = 0.0;
          for (std::int64_t c = 0; c < cols; ++c) {
            const auto i = static_cast<std::size_t>(r * cols + c);
            squares += static_cast<double>(x[i]) * x[i];
            g_x_magnitude += std::fabs(static_cast<double>(weight[c]) * dy[i] * x[i]);
          }
          const double inv_rms = 1.0 / std::sqrt(squares / static_cast<double>(cols) + eps);
          for (std::int64_t c = 0; c < cols; ++c) {
            const auto i = static_cast<std::size_t>(r * cols + c);
            const double magnitude = std::fabs(inv_rms * weight[c] * dy[i]) +
                                     std::fabs(x[i]) * inv_rms * inv_rms * inv_rms * g_x_magnitude /
                                         static_cast<double>(cols);
            dx_bound[i] = sum_factor * static_cast<float>(magnitude) +
                          storage_rounding(expected_dx[i], dtype) * 1.01f;
            dweight_magnitude[static_cast<std::size_t>(c)] += std::fabs(dy[i] * x[i] * inv_rms);
          }
        }
        // dweight adds `rows` terms (each with r's error) to its previous value.
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = static_cast<std::size_t>(c);
          dweight_bound[i] = (2.0f * static_cast<float>(rows + cols) + 16.0f) * kUnitRoundoff *
                                 static_cast<float>(dweight_magnitude[i]) +
                             2.0f * kUnitRoundoff * std::fabs(expected_dweight[i]);
        }
        const DeviceArray& dx = aliased ? device_dy : device_dx;
        expect_close(expected_dx, dx.to_floats(), dx_bound, 1.0, what + ": dx");
        expect_close(aliased ? dweight_before : expected_dweight, device_dweight.to_floats(),
                     aliased ? std::vector<float>(dweight_bound.size(), 0.0f) : dweight_bound, 1.0,
                     what + ": dweight");
      }
    }
  }
}

TEST(CudaLlamaBackward, RmsNormBackwardIsDeterministic) {
  KBIT_REQUIRE_CUDA();
  const std::int64_t rows = 2048;
  const std::int64_t cols = 4096;
  const std::vector<float> x = random_values(rows * cols, 30, DType::kBF16);
  const std::vector<float> dy = random_values(rows * cols, 31, DType::kBF16);
  const DeviceArray device_x(x, DType::kBF16);
  const DeviceArray device_dy(dy, DType::kBF16);
  const DeviceArray weight(random_values(cols, 32, DType::kF32, 1.0f, 0.1f), DType::kF32);
  const DeviceArray workspace(
      static_cast<std::int64_t>(cuda::rms_norm_backward_workspace_floats(rows, cols)), DType::kF32);
  std::vector<std::uint8_t> first_dx, first_dweight;
  for (int run = 0; run < 2; ++run) {
    const DeviceArray dx(rows * cols, DType::kBF16);
    const DeviceArray dweight(std::vector<float>(static_cast<std::size_t>(cols), 0.5f),
                              DType::kF32);
    finish(cuda::rms_norm_backward(
        {device_x.data(), weight.as<const float>(), device_dy.data(), rows, cols, 1e-5f, dx.data(),
         dweight.as<float>(), DType::kBF16, workspace.as<float>()},
        nullptr));
    if (run == 0) {
      first_dx = dx.bytes();
      first_dweight = dweight.bytes();
    } else {
      EXPECT_TRUE(first_dx == dx.bytes()) << "dx differs between two runs";
      EXPECT_TRUE(first_dweight == dweight.bytes()) << "dweight differs between two runs";
    }
  }
}

// ---- rope

TEST(CudaLlamaBackward, RopeBackwardMatchesReference) {
  KBIT_REQUIRE_CUDA();
  struct Case {
    std::int64_t tokens, heads, head_dim, sequences;
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Case c : {Case{37, 3, 64, 1}, Case{600, 6, 128, 3}, Case{5, 9, 256, 5},
                         Case{2048, 2, 128, 1}, Case{1, 1, 2, 1}}) {
      const std::string what = dtype_label(dtype) + ", tokens " + std::to_string(c.tokens) +
                               ", heads " + std::to_string(c.heads) + ", head_dim " +
                               std::to_string(c.head_dim) + ", sequences " +
                               std::to_string(c.sequences);
      const std::int64_t n = c.tokens * c.heads * c.head_dim;
      const std::vector<float> gradient = random_values(n, 40, dtype);
      const std::vector<float> inv_freq = inverse_frequencies(c.head_dim);
      const DeviceArray device_gradient(gradient, dtype);
      const DeviceArray device_inv_freq(inv_freq, DType::kF32);
      finish(cuda::rope_backward(device_gradient.data(), c.tokens, c.heads, c.head_dim,
                                 device_inv_freq.as<const float>(), c.sequences, dtype, nullptr));

      std::vector<float> expected = gradient;
      const std::int64_t per_sequence = c.tokens / c.sequences;
      for (std::int64_t s = 0; s < c.sequences; ++s) {
        cpu::RopeJob job;
        job.x = expected.data() + s * per_sequence * c.heads * c.head_dim;
        job.tokens = per_sequence;
        job.heads = c.heads;
        job.head_dim = c.head_dim;
        job.first_position = 0;
        job.inv_freq = inv_freq.data();
        cpu::rope_backward_reference(job);
      }
      // Each output is a·cos + b·sin of its pair (a, b). CUDA's cosf and sinf and glibc's are
      // each within 2 ulps, the products and the sum add 2 roundings: 8·u·(|a| + |b|) covers
      // them. In bf16 the GPU also rounds cos and sin to bf16, as the forward does (half a bf16
      // ulp each), and the result.
      std::vector<float> bound(expected.size());
      const std::int64_t half = c.head_dim / 2;
      for (std::size_t i = 0; i < bound.size(); ++i) {
        const auto d = static_cast<std::int64_t>(i) % c.head_dim;
        const std::size_t partner =
            d < half ? i + static_cast<std::size_t>(half) : i - static_cast<std::size_t>(half);
        const float magnitude = std::fabs(gradient[i]) + std::fabs(gradient[partner]);
        bound[i] = 8.0f * kUnitRoundoff * magnitude +
                   (dtype == DType::kBF16 ? 0.5f * kBf16Ulp * magnitude : 0.0f) +
                   storage_rounding(expected[i], dtype) * 1.01f;
      }
      expect_close(expected, device_gradient.to_floats(), bound, 1.0, what);
    }
  }
}

// ---- silu_mul

TEST(CudaLlamaBackward, SiluMulBackwardMatchesReference) {
  KBIT_REQUIRE_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // 14336 · 3 in vectors; 1001 with a tail; 5 values alone.
    for (const std::int64_t count : {14336 * 3, 1001, 5}) {
      for (const bool in_place : {false, true}) {
        const std::string what = dtype_label(dtype) + ", count " + std::to_string(count) +
                                 (in_place ? ", in place" : "");
        // Gates of both signs, beyond ±8 too, where silu saturates.
        const std::vector<float> gate = random_values(count, 50, dtype, 0.0f, 4.0f);
        const std::vector<float> up = random_values(count, 51, dtype);
        const std::vector<float> d_out = random_values(count, 52, dtype);
        const DeviceArray device_gate(gate, dtype);
        const DeviceArray device_up(up, dtype);
        const DeviceArray device_d_out(d_out, dtype);
        const DeviceArray d_gate(count, dtype);
        const DeviceArray d_up(count, dtype);
        void* gate_target = in_place ? device_gate.data() : d_gate.data();
        void* up_target = in_place ? device_up.data() : d_up.data();
        finish(cuda::silu_mul_backward(device_gate.data(), device_up.data(), device_d_out.data(),
                                       count, gate_target, up_target, dtype, nullptr));

        std::vector<float> expected_gate(gate.size());
        std::vector<float> expected_up(gate.size());
        cpu::silu_mul_backward_reference(gate.data(), up.data(), d_out.data(), count,
                                         expected_gate.data(), expected_up.data());
        // sigmoid = 1 / (1 + exp(−g)) errs by a few ulps (expf within 2 on each side, the sum
        // and the division one each); silu' = sigmoid · (1 + g · (1 − sigmoid)) can cancel, so
        // its bound is on σ · (1 + |g| · (1 − σ)); three more products. 16·u of the magnitudes.
        std::vector<float> gate_bound(gate.size());
        std::vector<float> up_bound(gate.size());
        for (std::size_t i = 0; i < gate.size(); ++i) {
          const double sigmoid = 1.0 / (1.0 + std::exp(-static_cast<double>(gate[i])));
          const double derivative_magnitude =
              sigmoid * (1.0 + std::fabs(gate[i]) * (1.0 - sigmoid));
          gate_bound[i] =
              16.0f * kUnitRoundoff *
                  static_cast<float>(std::fabs(d_out[i] * up[i]) * derivative_magnitude) +
              storage_rounding(expected_gate[i], dtype) * 1.01f;
          up_bound[i] = 16.0f * kUnitRoundoff * std::fabs(d_out[i] * gate[i]) +
                        storage_rounding(expected_up[i], dtype) * 1.01f;
        }
        const DeviceArray& gate_result = in_place ? device_gate : d_gate;
        const DeviceArray& up_result = in_place ? device_up : d_up;
        expect_close(expected_gate, gate_result.to_floats(), gate_bound, 1.0, what + ": d_gate");
        expect_close(expected_up, up_result.to_floats(), up_bound, 1.0, what + ": d_up");
      }
    }
  }
}

// ---- cross_entropy

TEST(CudaLlamaBackward, CrossEntropyBackwardMatchesReference) {
  KBIT_REQUIRE_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    // Llama-3's and Llama-2's vocabularies, and small ones (fewer values than threads).
    for (const std::int64_t vocab : {128256, 32000, 1000, 37}) {
      const std::string what = dtype_label(dtype) + ", vocab " + std::to_string(vocab);
      const std::int64_t rows = 6;
      // Logits of a trained model's spread; row 2 ignored; labels at both ends of the vocabulary.
      const std::vector<float> logits = random_values(rows * vocab, 60, dtype, 0.0f, 3.0f);
      const std::vector<std::int32_t> labels = {0,
                                                static_cast<std::int32_t>(vocab - 1),
                                                cpu::kIgnoreLabel,
                                                static_cast<std::int32_t>(vocab / 2),
                                                7 % static_cast<std::int32_t>(vocab),
                                                static_cast<std::int32_t>(vocab / 3)};
      const float gradient_scale = 1.0f / 5.0f;  // five labelled rows
      const DeviceArray device_logits(logits, dtype);
      const DeviceArray device_labels(labels);
      const DeviceArray row_loss(rows, DType::kF32);
      finish(cuda::cross_entropy_backward(device_logits.data(), device_labels.as<std::int32_t>(),
                                          rows, vocab, gradient_scale, row_loss.as<float>(), dtype,
                                          nullptr));

      std::vector<float> expected = logits;
      const double expected_loss =
          cpu::cross_entropy_reference(expected.data(), labels.data(), rows, vocab, gradient_scale);
      // The GPU's row sums of exp in f32 err by at most (vocab / 256 + 16)·u relative (each
      // thread adds vocab / 256 terms, then a tree of 8 levels), which is the absolute error of
      // log(sum); max + log and − z_label add roundings of |lse| + |z_label|.
      double loss = 0.0;
      double loss_bound = 0.0;
      std::vector<float> bound(expected.size());
      const std::vector<float> losses = row_loss.to_floats();
      const float sum_error = (static_cast<float>(vocab) / 256.0f + 16.0f) * 2.0f * kUnitRoundoff;
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* z = logits.data() + r * vocab;
        double max_logit = z[0];
        for (std::int64_t c = 0; c < vocab; ++c) max_logit = std::max(max_logit, double{z[c]});
        double sum = 0.0;
        for (std::int64_t c = 0; c < vocab; ++c) sum += std::exp(z[c] - max_logit);
        const double lse = max_logit + std::log(sum);
        const bool ignored = labels[static_cast<std::size_t>(r)] == cpu::kIgnoreLabel;
        const double z_label = ignored ? 0.0 : z[labels[static_cast<std::size_t>(r)]];
        const double row_bound =
            ignored ? 0.0 : sum_error + 8.0 * kUnitRoundoff * (std::fabs(lse) + std::fabs(z_label));
        loss += losses[static_cast<std::size_t>(r)];
        loss_bound += row_bound;
        if (ignored) {
          EXPECT_EQ(losses[static_cast<std::size_t>(r)], 0.0f) << what;
        }
        // p = exp(z − lse): lse's error moves p by that much relative, the subtraction by
        // u·|z − lse|, expf by 2 ulps; then · scale and, at the label, − scale.
        for (std::int64_t c = 0; c < vocab; ++c) {
          const auto i = static_cast<std::size_t>(r * vocab + c);
          const double p = std::exp(z[c] - lse);
          const double relative =
              row_bound + 2.0 * kUnitRoundoff * std::fabs(z[c] - lse) + 6.0 * kUnitRoundoff;
          bound[i] = ignored ? 0.0f
                             : static_cast<float>(p * gradient_scale * relative +
                                                  2.0 * kUnitRoundoff * gradient_scale) +
                                   storage_rounding(expected[i], dtype) * 1.01f;
        }
      }
      EXPECT_NEAR(loss, expected_loss, loss_bound + 1e-12) << what;
      expect_close(expected, device_logits.to_floats(), bound, 1.0, what + ": gradient");
    }
  }
}

// ---- Arguments

TEST(CudaLlamaBackward, LaunchersRejectUnsupportedArguments) {
  KBIT_REQUIRE_CUDA();
  const DeviceArray buffer(4096, DType::kF32);
  const DeviceArray inv_freq(std::vector<float>(128, 1.0f), DType::kF32);
  void* p = buffer.data();
  float* f = buffer.as<float>();
  // dx = dy with a weight gradient: the gradient would read the overwritten dy.
  EXPECT_EQ(
      cuda::rms_norm_backward({p, f, p, 2, 8, 1e-5f, p, f + 100, DType::kF32, f + 200}, nullptr),
      cudaErrorInvalidValue);
  EXPECT_EQ(cuda::rms_norm_backward({p, f, p, 2, 8, 1e-5f, f + 16, nullptr, DType::kF16, f + 200},
                                    nullptr),
            cudaErrorInvalidValue);
  // Odd head_dim, head_dim beyond 256, sequences not dividing tokens.
  EXPECT_EQ(cuda::rope_backward(p, 4, 2, 7, inv_freq.as<const float>(), 1, DType::kF32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::rope_backward(p, 4, 1, 258, inv_freq.as<const float>(), 1, DType::kF32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::rope_backward(p, 4, 2, 8, inv_freq.as<const float>(), 3, DType::kF32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::silu_mul_backward(p, p, p, -1, p, p, DType::kF32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::cross_entropy_backward(p, nullptr, 2, 8, 1.0f, f, DType::kF32, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::cross_entropy_backward(p, static_cast<const std::int32_t*>(p), 2, 0, 1.0f, f,
                                         DType::kF32, nullptr),
            cudaErrorInvalidValue);
  // Nothing was queued that could fail later.
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace kbit::kernels
