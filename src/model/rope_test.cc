#include "kbit/model/rope.h"

#include <cmath>
#include <numbers>

#include <gtest/gtest.h>

#include "kernels/cpu/llama_ops.h"

namespace kbit::model {
namespace {

// transformers' formulas (modeling_rope_utils.py) in float64.
std::vector<double> inv_freq_f64(const RopeParameters& rope, std::int64_t d,
                                 std::int64_t max_positions, std::int64_t seq_len) {
  double base = rope.theta;
  if (rope.type == RopeType::kDynamic) {
    const double length = static_cast<double>(std::max(seq_len, max_positions));
    base *=
        std::pow(rope.factor * length / static_cast<double>(max_positions) - (rope.factor - 1.0),
                 static_cast<double>(d) / static_cast<double>(d - 2));
  }
  std::vector<double> out;
  for (std::int64_t k = 0; k < d / 2; ++k) {
    double f = 1.0 / std::pow(base, static_cast<double>(2 * k) / static_cast<double>(d));
    if (rope.type == RopeType::kLinear) f /= rope.factor;
    if (rope.type == RopeType::kLlama3) {
      const double n0 = static_cast<double>(rope.original_max_position_embeddings);
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > n0 / rope.low_freq_factor) {
        f /= rope.factor;
      } else if (wavelen >= n0 / rope.high_freq_factor) {
        const double s =
            (n0 / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
        f = (1.0 - s) * f / rope.factor + s * f;
      }
    }
    out.push_back(f);
  }
  return out;
}

void expect_close(const RopeParameters& rope, std::int64_t d, std::int64_t max_positions,
                  std::int64_t seq_len) {
  const std::vector<float> got = rope_inv_freq(rope, d, max_positions, seq_len);
  const std::vector<double> want = inv_freq_f64(rope, d, max_positions, seq_len);
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t k = 0; k < got.size(); ++k) {
    EXPECT_NEAR(got[k], want[k], 4e-6 * want[k])
        << rope_type_name(rope.type) << " k=" << k << " seq_len=" << seq_len;
  }
}

TEST(Rope, InverseFrequenciesOfEveryType) {
  RopeParameters rope;
  expect_close(rope, 128, 4096, 1);
  rope.theta = 500000.0;
  expect_close(rope, 64, 4096, 1);
  rope.type = RopeType::kLinear;
  rope.factor = 4.0;
  expect_close(rope, 128, 4096, 1);
  rope.type = RopeType::kDynamic;
  rope.factor = 2.0;
  expect_close(rope, 128, 4096, 100);   // within the trained length: unchanged
  expect_close(rope, 128, 4096, 9000);  // past it: the base grows
  rope.type = RopeType::kLlama3;
  rope.factor = 8.0;
  rope.low_freq_factor = 1.0;
  rope.high_freq_factor = 4.0;
  rope.original_max_position_embeddings = 8192;
  expect_close(rope, 128, 131072, 1);
  rope.original_max_position_embeddings = 256;  // shakespeare-llama3: every band used
  expect_close(rope, 64, 1024, 1);
}

TEST(Rope, DynamicGrowsOnlyPastTheTrainedLength) {
  RopeParameters rope;
  rope.type = RopeType::kDynamic;
  rope.factor = 2.0;
  EXPECT_EQ(rope_inv_freq(rope, 64, 512, 10), rope_inv_freq(RopeParameters{}, 64, 512, 10));
  EXPECT_LT(rope_inv_freq(rope, 64, 512, 2000)[5], rope_inv_freq(rope, 64, 512, 10)[5]);
}

// The kernel's rotate_half rotation against float64.
TEST(Rope, KernelRotatesHalvesAsTransformers) {
  const std::int64_t tokens = 5, heads = 3, d = 16, first = 1000;
  RopeParameters rope;
  const std::vector<float> inv_freq = rope_inv_freq(rope, d, 2048, 0);
  std::vector<float> x(static_cast<std::size_t>(tokens * heads * d));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i) * 0.37f);
  std::vector<float> rotated = x;
  kernels::cpu::rope_reference({rotated.data(), tokens, heads, d, first, inv_freq.data()}, 0,
                               tokens);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t h = 0; h < heads; ++h) {
      const float* in = x.data() + (t * heads + h) * d;
      const float* out = rotated.data() + (t * heads + h) * d;
      for (std::int64_t i = 0; i < d; ++i) {
        const std::int64_t k = i % (d / 2);
        const double angle = static_cast<double>(first + t) * static_cast<double>(inv_freq[k]);
        const double partner = i < d / 2 ? -in[i + d / 2] : in[i - d / 2];
        const double want = in[i] * std::cos(angle) + partner * std::sin(angle);
        // f32 angles of ~1000 radians carry ~6e-5 absolute error, as in transformers.
        EXPECT_NEAR(out[i], want, 2e-4) << "t=" << t << " h=" << h << " i=" << i;
      }
    }
  }
}

}  // namespace
}  // namespace kbit::model
