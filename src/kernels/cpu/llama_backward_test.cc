// Tests of the backward reference kernels (llama_backward.h). Each op's forward is written again
// here in double precision, checked against the f32 forward kernel of llama_ops.h, and
// differentiated by central finite differences; the loss is L = Σ forward(inputs) ⊙ R for a fixed
// random R, so that the gradient the backward kernel receives is R. A wrong term in a gradient
// moves the relative error to order one; the f32 kernels against f64 differences stay below 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kbit/core/dtype.h"
#include "kbit/core/random.h"
#include "kernels/cpu/llama_backward.h"
#include "kernels/cpu/llama_ops.h"
#include "testing/relative_error.h"

namespace kbit::kernels::cpu {
namespace {

constexpr double kGradientTolerance = 1e-5;  // ‖analytic − numeric‖₂ / ‖numeric‖₂
constexpr double kForwardTolerance = 1e-6;   // f32 kernel against the f64 forward, relative
constexpr double kStep = 1e-4;               // the finite differences' step

std::vector<float> random_values(std::size_t count, std::uint64_t seed, double scale = 1.0) {
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    values[i] = static_cast<float>(scale * normal_sample(seed, i));
  }
  return values;
}

std::vector<double> widened(std::span<const float> values) {
  return std::vector<double>(values.begin(), values.end());
}

double dot(std::span<const double> a, std::span<const float> b) {
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// The gradient of `loss` at `at` by central differences.
std::vector<double> numeric_gradient(const std::function<double(std::span<const double>)>& loss,
                                     std::vector<double> at) {
  std::vector<double> gradient(at.size());
  for (std::size_t i = 0; i < at.size(); ++i) {
    const double saved = at[i];
    at[i] = saved + kStep;
    const double above = loss(at);
    at[i] = saved - kStep;
    const double below = loss(at);
    at[i] = saved;
    gradient[i] = (above - below) / (2 * kStep);
  }
  return gradient;
}

void expect_gradient(std::span<const float> analytic, std::span<const double> numeric,
                     const std::string& what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  EXPECT_LT(kbit::testing::relative_error<float>(analytic, numeric), kGradientTolerance) << what;
}

void expect_forward(std::span<const float> kernel, std::span<const double> definition,
                    const std::string& what) {
  ASSERT_EQ(kernel.size(), definition.size()) << what;
  EXPECT_LT(kbit::testing::relative_error<float>(kernel, definition), kForwardTolerance) << what;
}

// ---- linear -------------------------------------------------------------------------------------
struct LinearShape {
  std::int64_t rows = 3, in = 5, out = 4;
};

std::vector<double> linear_f64(const LinearShape& s, std::span<const double> x,
                               std::span<const double> w) {
  std::vector<double> y(static_cast<std::size_t>(s.rows * s.out));
  for (std::int64_t r = 0; r < s.rows; ++r) {
    for (std::int64_t o = 0; o < s.out; ++o) {
      double sum = 0.0;
      for (std::int64_t i = 0; i < s.in; ++i) sum += x[r * s.in + i] * w[o * s.in + i];
      y[r * s.out + o] = sum;
    }
  }
  return y;
}

TEST(LinearBackward, MatchesFiniteDifferences) {
  const LinearShape s;
  const auto x = random_values(s.rows * s.in, 1);
  const auto w = random_values(s.out * s.in, 2);
  const auto r = random_values(s.rows * s.out, 3);

  std::vector<float> y(r.size());
  linear_reference({x.data(), w.data(), DType::kF32, nullptr, s.rows, s.in, s.out, y.data()}, 0,
                   s.out);
  expect_forward(y, linear_f64(s, widened(x), widened(w)), "linear forward");

  // dweight accumulates: start it from a known value and take that off afterwards.
  std::vector<float> dx(x.size(), -7.0f);
  std::vector<float> dw(w.size(), 0.5f);
  linear_backward_reference(
      {x.data(), w.data(), r.data(), s.rows, s.in, s.out, dx.data(), dw.data()});
  for (float& value : dw) value -= 0.5f;
  expect_gradient(
      dx,
      numeric_gradient([&](auto at) { return dot(linear_f64(s, at, widened(w)), r); }, widened(x)),
      "linear dx");
  expect_gradient(
      dw,
      numeric_gradient([&](auto at) { return dot(linear_f64(s, widened(x), at), r); }, widened(w)),
      "linear dweight");
}

TEST(LinearBackward, FrozenWeightAndUnwantedInputGradientAreSkipped) {
  const LinearShape s;
  const auto x = random_values(s.rows * s.in, 4);
  const auto w = random_values(s.out * s.in, 5);
  const auto r = random_values(s.rows * s.out, 6);
  std::vector<float> dx(x.size());
  linear_backward_reference(
      {x.data(), w.data(), r.data(), s.rows, s.in, s.out, dx.data(), nullptr});
  std::vector<float> dw(w.size(), 0.0f);
  linear_backward_reference(
      {x.data(), w.data(), r.data(), s.rows, s.in, s.out, nullptr, dw.data()});
  std::vector<float> dx_again(x.size());
  std::vector<float> dw_again(w.size(), 0.0f);
  linear_backward_reference(
      {x.data(), w.data(), r.data(), s.rows, s.in, s.out, dx_again.data(), dw_again.data()});
  EXPECT_EQ(dx, dx_again);
  EXPECT_EQ(dw, dw_again);
}

// The fast kernel against the float64 sum and the reference, on a shape that crosses its panels
// (128 output features, 1 024 input features) with partial ones, and the same bytes for one
// thread as for two.
TEST(LinearWeightGradient, MatchesTheFloat64SumForAnyThreadCount) {
  const LinearShape s{37, 1100, 300};
  const auto x = random_values(s.rows * s.in, 7);
  const auto dy = random_values(s.rows * s.out, 8);
  const auto start = random_values(s.out * s.in, 9);  // dweight accumulates onto this
  std::vector<double> expected(widened(start));
  for (std::int64_t r = 0; r < s.rows; ++r) {
    for (std::int64_t o = 0; o < s.out; ++o) {
      for (std::int64_t i = 0; i < s.in; ++i) {
        expected[o * s.in + i] +=
            static_cast<double>(dy[r * s.out + o]) * static_cast<double>(x[r * s.in + i]);
      }
    }
  }
  std::vector<float> reference(start);
  linear_backward_reference(
      {x.data(), nullptr, dy.data(), s.rows, s.in, s.out, nullptr, reference.data()});
  ExecutionOptions options;
  options.threads = 1;
  std::vector<float> one_thread(start);
  linear_weight_gradient_op(x.data(), dy.data(), s.rows, s.in, s.out, one_thread.data(), options);
  options.threads = 2;
  std::vector<float> two_threads(start);
  linear_weight_gradient_op(x.data(), dy.data(), s.rows, s.in, s.out, two_threads.data(), options);
  EXPECT_LT(kbit::testing::relative_error<float>(reference, expected), kForwardTolerance);
  EXPECT_LT(kbit::testing::relative_error<float>(one_thread, expected), kForwardTolerance);
  EXPECT_EQ(one_thread, two_threads);
}

// ---- lora ---------------------------------------------------------------------------------------
struct LoraShape {
  std::int64_t rows = 3, in = 6, out = 5, rank = 2;
  float scaling = 8.0f;  // lora_alpha 16 over rank 2
};

// scaling · ((keep ⊙ x) · Aᵀ) · Bᵀ; keep empty: none.
std::vector<double> lora_f64(const LoraShape& s, std::span<const double> x,
                             std::span<const double> a, std::span<const double> b,
                             std::span<const float> keep = {}) {
  std::vector<double> y(static_cast<std::size_t>(s.rows * s.out), 0.0);
  for (std::int64_t r = 0; r < s.rows; ++r) {
    for (std::int64_t k = 0; k < s.rank; ++k) {
      double h = 0.0;
      for (std::int64_t i = 0; i < s.in; ++i) {
        const double factor = keep.empty() ? 1.0 : keep[static_cast<std::size_t>(r * s.in + i)];
        h += factor * x[r * s.in + i] * a[k * s.in + i];
      }
      for (std::int64_t o = 0; o < s.out; ++o)
        y[r * s.out + o] += s.scaling * h * b[o * s.rank + k];
    }
  }
  return y;
}

// Without dropout, and with dropout's factors (p = 0.4: 0 or 1 / 0.6, about half of each).
TEST(LoraBackward, MatchesFiniteDifferences) {
  const LoraShape s;
  const auto x = random_values(s.rows * s.in, 30);
  const auto a = random_values(s.rank * s.in, 31, 0.4);
  const auto b = random_values(s.out * s.rank, 32, 0.1);  // trained: no longer zero
  const auto r = random_values(s.rows * s.out, 33);
  std::vector<float> dropout(x.size());
  for (std::size_t i = 0; i < dropout.size(); ++i) dropout[i] = i % 3 == 1 ? 0.0f : 1.0f / 0.6f;

  for (const std::vector<float>& keep : {std::vector<float>{}, dropout}) {
    SCOPED_TRACE(keep.empty() ? "no dropout" : "dropout");
    // Every gradient accumulates: start each from a known value and take that off afterwards.
    std::vector<float> da(a.size(), 0.25f);
    std::vector<float> db(b.size(), -0.5f);
    std::vector<float> dx(x.size(), 2.0f);
    lora_backward_reference({x.data(), a.data(), b.data(), r.data(), s.rows, s.in, s.out, s.rank,
                             s.scaling, da.data(), db.data(), dx.data(),
                             keep.empty() ? nullptr : keep.data()});
    for (float& value : da) value -= 0.25f;
    for (float& value : db) value += 0.5f;
    for (float& value : dx) value -= 2.0f;
    const auto wx = widened(x);
    const auto wa = widened(a);
    const auto wb = widened(b);
    const auto loss = [&](auto at_x, auto at_a, auto at_b) {
      return dot(lora_f64(s, at_x, at_a, at_b, keep), r);
    };
    expect_gradient(da, numeric_gradient([&](auto at) { return loss(wx, at, wb); }, wa), "lora dA");
    expect_gradient(db, numeric_gradient([&](auto at) { return loss(wx, wa, at); }, wb), "lora dB");
    expect_gradient(dx, numeric_gradient([&](auto at) { return loss(at, wa, wb); }, wx), "lora dx");
  }
}

// ---- rms_norm -----------------------------------------------------------------------------------
struct RmsNormShape {
  std::int64_t rows = 3, cols = 8;
  float eps = 1e-5f;
};

std::vector<double> rms_norm_f64(const RmsNormShape& s, std::span<const double> x,
                                 std::span<const double> w) {
  std::vector<double> y(x.size());
  for (std::int64_t r = 0; r < s.rows; ++r) {
    double sum_squares = 0.0;
    for (std::int64_t c = 0; c < s.cols; ++c) sum_squares += x[r * s.cols + c] * x[r * s.cols + c];
    const double inverse = 1.0 / std::sqrt(sum_squares / static_cast<double>(s.cols) + s.eps);
    for (std::int64_t c = 0; c < s.cols; ++c)
      y[r * s.cols + c] = w[c] * x[r * s.cols + c] * inverse;
  }
  return y;
}

TEST(RmsNormBackward, MatchesFiniteDifferences) {
  const RmsNormShape s;
  const auto x = random_values(s.rows * s.cols, 7);
  const auto w = random_values(s.cols, 8, 0.5);
  const auto r = random_values(x.size(), 9);

  std::vector<float> y(x.size());
  rms_norm_reference({x.data(), w.data(), s.rows, s.cols, s.eps, y.data()}, 0, s.rows);
  expect_forward(y, rms_norm_f64(s, widened(x), widened(w)), "rms_norm forward");

  // dx may be dy itself: the gradient overwrites the copy of R.
  std::vector<float> dx = r;
  std::vector<float> dw(w.size(), 0.0f);
  rms_norm_backward_reference(
      {x.data(), w.data(), dx.data(), s.rows, s.cols, s.eps, dx.data(), dw.data()});
  expect_gradient(dx,
                  numeric_gradient([&](auto at) { return dot(rms_norm_f64(s, at, widened(w)), r); },
                                   widened(x)),
                  "rms_norm dx");
  expect_gradient(dw,
                  numeric_gradient([&](auto at) { return dot(rms_norm_f64(s, widened(x), at), r); },
                                   widened(w)),
                  "rms_norm dweight");
}

// ---- rope ---------------------------------------------------------------------------------------
struct RopeShape {
  std::int64_t tokens = 3, heads = 2, head_dim = 8, first_position = 5;
};

std::vector<float> inverse_frequencies(const RopeShape& s) {
  std::vector<float> inv_freq(static_cast<std::size_t>(s.head_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = static_cast<float>(
        std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(s.head_dim)));
  }
  return inv_freq;
}

// The angles in f32, as the kernel computes them; their cosines and sines in double.
std::vector<double> rope_f64(const RopeShape& s, std::span<const float> inv_freq,
                             std::span<const double> x) {
  std::vector<double> y(x.size());
  const std::int64_t half = s.head_dim / 2;
  for (std::int64_t t = 0; t < s.tokens; ++t) {
    for (std::int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<float>(s.first_position + t) * inv_freq[i];
      for (std::int64_t h = 0; h < s.heads; ++h) {
        const std::int64_t at = (t * s.heads + h) * s.head_dim;
        y[at + i] = x[at + i] * std::cos(angle) - x[at + i + half] * std::sin(angle);
        y[at + i + half] = x[at + i + half] * std::cos(angle) + x[at + i] * std::sin(angle);
      }
    }
  }
  return y;
}

TEST(RopeBackward, MatchesFiniteDifferences) {
  const RopeShape s;
  const auto inv_freq = inverse_frequencies(s);
  const auto x = random_values(s.tokens * s.heads * s.head_dim, 10);
  const auto r = random_values(x.size(), 11);

  std::vector<float> y = x;
  rope_reference({y.data(), s.tokens, s.heads, s.head_dim, s.first_position, inv_freq.data()}, 0,
                 s.tokens);
  expect_forward(y, rope_f64(s, inv_freq, widened(x)), "rope forward");

  std::vector<float> dx = r;
  rope_backward_reference(
      {dx.data(), s.tokens, s.heads, s.head_dim, s.first_position, inv_freq.data()});
  expect_gradient(
      dx, numeric_gradient([&](auto at) { return dot(rope_f64(s, inv_freq, at), r); }, widened(x)),
      "rope dx");
}

// ---- attention ----------------------------------------------------------------------------------
struct AttentionShape {
  std::int64_t tokens = 5, heads = 4, kv_heads = 2, head_dim = 4;
  float scale = 0.5f;
  std::size_t q_size() const { return static_cast<std::size_t>(tokens * heads * head_dim); }
  std::size_t kv_size() const { return static_cast<std::size_t>(tokens * kv_heads * head_dim); }
};

std::vector<double> attention_f64(const AttentionShape& s, std::span<const double> q,
                                  std::span<const double> k, std::span<const double> v) {
  const std::int64_t d = s.head_dim;
  std::vector<double> out(s.q_size(), 0.0);
  for (std::int64_t t = 0; t < s.tokens; ++t) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const std::int64_t kv = h / (s.heads / s.kv_heads);
      std::vector<double> p(static_cast<std::size_t>(t + 1));
      double sum = 0.0;
      for (std::int64_t j = 0; j <= t; ++j) {
        double score = 0.0;
        for (std::int64_t i = 0; i < d; ++i) {
          score += q[(t * s.heads + h) * d + i] * k[(j * s.kv_heads + kv) * d + i];
        }
        sum += p[j] = std::exp(score * s.scale);
      }
      for (std::int64_t j = 0; j <= t; ++j) {
        for (std::int64_t i = 0; i < d; ++i) {
          out[(t * s.heads + h) * d + i] += p[j] / sum * v[(j * s.kv_heads + kv) * d + i];
        }
      }
    }
  }
  return out;
}

TEST(AttentionBackward, MatchesFiniteDifferencesWithGroupedQueries) {
  const AttentionShape s;
  const auto q = random_values(s.q_size(), 12);
  const auto k = random_values(s.kv_size(), 13);
  const auto v = random_values(s.kv_size(), 14);
  const auto r = random_values(s.q_size(), 15);

  std::vector<float> out(s.q_size());
  const AttentionJob forward{q.data(),   k.data(), v.data(), s.tokens, s.heads,   s.kv_heads,
                             s.head_dim, 0,        0,        s.scale,  out.data()};
  attention_reference(forward, 0, s.tokens * s.heads);
  expect_forward(out, attention_f64(s, widened(q), widened(k), widened(v)), "attention forward");

  std::vector<float> dq(q.size(), -7.0f);
  std::vector<float> dk(k.size(), -7.0f);
  std::vector<float> dv(v.size(), -7.0f);
  attention_backward_reference({q.data(), k.data(), v.data(), r.data(), s.tokens, s.heads,
                                s.kv_heads, s.head_dim, s.scale, dq.data(), dk.data(), dv.data()});
  const auto wq = widened(q);
  const auto wk = widened(k);
  const auto wv = widened(v);
  expect_gradient(
      dq, numeric_gradient([&](auto at) { return dot(attention_f64(s, at, wk, wv), r); }, wq),
      "attention dq");
  expect_gradient(
      dk, numeric_gradient([&](auto at) { return dot(attention_f64(s, wq, at, wv), r); }, wk),
      "attention dk");
  expect_gradient(
      dv, numeric_gradient([&](auto at) { return dot(attention_f64(s, wq, wk, at), r); }, wv),
      "attention dv");
}

// ---- silu_mul -----------------------------------------------------------------------------------
std::vector<double> silu_mul_f64(std::span<const double> gate, std::span<const double> up) {
  std::vector<double> out(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) {
    out[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  }
  return out;
}

TEST(SiluMulBackward, MatchesFiniteDifferences) {
  constexpr std::size_t kCount = 17;
  const auto gate = random_values(kCount, 16, 3.0);
  const auto up = random_values(kCount, 17);
  const auto r = random_values(kCount, 18);

  std::vector<float> out = gate;
  silu_mul_reference(out.data(), up.data(), 0, kCount);
  expect_forward(out, silu_mul_f64(widened(gate), widened(up)), "silu_mul forward");

  std::vector<float> d_gate(kCount);
  std::vector<float> d_up(kCount);
  silu_mul_backward_reference(gate.data(), up.data(), r.data(), kCount, d_gate.data(), d_up.data());
  expect_gradient(d_gate,
                  numeric_gradient([&](auto at) { return dot(silu_mul_f64(at, widened(up)), r); },
                                   widened(gate)),
                  "silu_mul d_gate");
  expect_gradient(d_up,
                  numeric_gradient([&](auto at) { return dot(silu_mul_f64(widened(gate), at), r); },
                                   widened(up)),
                  "silu_mul d_up");
}

// ---- cross_entropy ------------------------------------------------------------------------------
constexpr std::int64_t kVocab = 7;

// Σ over labelled rows of logsumexp(z) − z_label.
double cross_entropy_f64(std::span<const double> logits, std::span<const std::int32_t> labels) {
  double loss = 0.0;
  for (std::size_t r = 0; r < labels.size(); ++r) {
    if (labels[r] == kIgnoreLabel) continue;
    double sum = 0.0;
    for (std::int64_t c = 0; c < kVocab; ++c) sum += std::exp(logits[r * kVocab + c]);
    loss += std::log(sum) - logits[r * kVocab + labels[r]];
  }
  return loss;
}

TEST(CrossEntropy, LossAndGradientOfTheMeanOverLabelledRows) {
  const std::vector<std::int32_t> labels{3, kIgnoreLabel, 0, 6};
  const auto rows = static_cast<std::int64_t>(labels.size());
  const auto logits = random_values(rows * kVocab, 19, 4.0);
  const float scale = 1.0f / 3.0f;  // three labelled rows

  std::vector<float> gradient = logits;
  const double loss = cross_entropy_reference(gradient.data(), labels.data(), rows, kVocab, scale);
  EXPECT_NEAR(loss, cross_entropy_f64(widened(logits), labels), 1e-5);
  expect_gradient(gradient,
                  numeric_gradient([&](auto at) { return scale * cross_entropy_f64(at, labels); },
                                   widened(logits)),
                  "cross_entropy dlogits");
  for (std::int64_t c = 0; c < kVocab; ++c) EXPECT_EQ(gradient[kVocab + c], 0.0f) << c;
}

TEST(CrossEntropy, ChunksOfRowsGiveTheWholeBatchsResult) {
  const std::vector<std::int32_t> labels{1, 5, kIgnoreLabel, 2, 4};
  const auto rows = static_cast<std::int64_t>(labels.size());
  const auto logits = random_values(rows * kVocab, 20, 4.0);
  const float scale = 1.0f / 4.0f;

  std::vector<float> whole = logits;
  const double whole_loss =
      cross_entropy_reference(whole.data(), labels.data(), rows, kVocab, scale);
  std::vector<float> chunked = logits;
  double chunked_loss = 0.0;
  for (std::int64_t first = 0; first < rows; first += 2) {
    const std::int64_t count = std::min<std::int64_t>(2, rows - first);
    chunked_loss += cross_entropy_reference(chunked.data() + first * kVocab, labels.data() + first,
                                            count, kVocab, scale);
  }
  EXPECT_EQ(chunked, whole);
  EXPECT_NEAR(chunked_loss, whole_loss, 1e-12);
}

}  // namespace
}  // namespace kbit::kernels::cpu
