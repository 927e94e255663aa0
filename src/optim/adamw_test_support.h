// What the AdamW tests on the CPU (adamw_test.cc) and on CUDA devices (adamw_cuda_test.cc)
// share: the golden file, views of vectors, and the tolerance of a parameter computed without the
// GPU's approximate power and square root against one computed with them. Test code only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kbit/core/tensor.h"
#include "kbit/io/safetensors.h"
#include "kbit/optim/adamw.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::optim {

// The golden data's hyperparameters (golden/README.md): bitsandbytes' defaults.
inline const AdamWHyperparameters kGoldenHyperparameters{};

// Tests against golden/optim8bit.safetensors; skipped where the shared data is absent.
class AdamWGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KBIT_REQUIRE_SHARED_DIR();
    Result<io::SafetensorsFile> file = testing::open_golden("optim8bit.safetensors");
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    file_.emplace(std::move(file).value());
  }
  std::vector<float> floats(const std::string& name) {
    return testing::golden_values<float>(*file_, name);
  }
  std::optional<io::SafetensorsFile> file_;
};

template <typename T>
TensorView view_of(std::vector<T>& values, DType dtype) {
  return TensorView(values.data(), dtype, Shape{static_cast<std::int64_t>(values.size())});
}

inline float ulp(float x) {
  const float magnitude = std::fabs(x);
  return std::nextafter(magnitude, std::numeric_limits<float>::infinity()) - magnitude;
}

// ---- The tolerance of a parameter against bitsandbytes' CUDA step (derived, not fitted).
//
// Given bit-equal moments m and v (checked: the states match bit for bit), the CPU step differs
// from the GPU's only where the GPU uses approximations the CPU does not reproduce (spec 7.3):
//  * __powf(beta, t) = ex2.approx(t · lg2.approx(beta)). CUDA Programming Guide, intrinsic
//    functions: __log2f has an absolute error below 2^-22 for beta in [0.5, 2] (else 2 ulp),
//    ex2.approx a relative error below 2^-22 (2 ulp); the product t·lg2 rounds once (2^-24
//    relative). So |__powf − beta^t| <= beta^t · (ln2 · (t·d_log + |t·log2 beta|·2^-24) + 2^-22)
//    with d_log = 2^-22 · max(1, |log2 beta|). The error reaches step_size through
//    c1 = 1 − beta1^t (relative error E1 / c1) and c2 = sqrt(1 − beta2^t) (relative error
//    E2 / (2·c2^2)), and the update's eps term through c2 once more: E1/c1 + E2/c2^2 in all.
//  * sqrt.approx (relative error below 2^-22, PTX ISA) in c2 and in sqrt(v), and the rounding
//    of the approximate divisions' inputs (each division is emulated exactly, but different
//    inputs give up to 2 ulp, 2^-22, more): 8 · 2^-22 covers them.
//  * Whether nvcc fused `p + step_size·q` and the decay's rounding: 2 ulp of the parameter.
// Every step adds |update| · r_t + 2 ulp(p) to the bound; the decay (1 − lr·wd < 1) only shrinks
// an earlier difference.
inline double power_error(double beta, std::int64_t t) {
  const double log2_beta = std::fabs(std::log2(beta));
  const double d_log = std::ldexp(1.0, -22) * std::max(1.0, log2_beta);
  return std::pow(beta, static_cast<double>(t)) *
         (std::log(2.0) * (static_cast<double>(t) * d_log +
                           static_cast<double>(t) * log2_beta * std::ldexp(1.0, -24)) +
          std::ldexp(1.0, -22));
}

inline double update_relative_error(const AdamWHyperparameters& hyperparameters, std::int64_t t) {
  const double beta1 = hyperparameters.beta1;
  const double beta2 = hyperparameters.beta2;
  const double c1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double c2_squared = 1.0 - std::pow(beta2, static_cast<double>(t));
  return power_error(beta1, t) / c1 + power_error(beta2, t) / c2_squared +
         8.0 * std::ldexp(1.0, -22);
}

// Per element: the running bound, and what the comparison found.
struct ParamComparison {
  std::vector<double> bound;
  int bit_equal = 0;
  int outside = 0;
  double max_ulps = 0;      // largest |ours − golden| in ulps of golden
  double max_fraction = 0;  // largest |ours − golden| / bound
  std::string first_outside;
};

// Adds this step's share to `bound` and compares `ours` with `golden`.
inline void compare_params(const std::vector<float>& before, const std::vector<float>& ours,
                           const std::vector<float>& golden, double relative_error,
                           const AdamWHyperparameters& hyperparameters,
                           ParamComparison* comparison) {
  const double decay = 1.0 - static_cast<double>(hyperparameters.lr) * hyperparameters.weight_decay;
  ASSERT_EQ(ours.size(), golden.size());
  if (comparison->bound.empty()) comparison->bound.assign(ours.size(), 0.0);
  std::vector<double> bound = std::move(comparison->bound);
  *comparison = ParamComparison{};
  comparison->bound = std::move(bound);
  for (std::size_t i = 0; i < ours.size(); ++i) {
    // The update, as far as the bound is concerned: what the step added before the decay.
    const double update = static_cast<double>(ours[i]) / decay - before[i];
    comparison->bound[i] += std::fabs(update) * relative_error + 2.0 * ulp(golden[i]);
    const double difference = std::fabs(static_cast<double>(ours[i]) - golden[i]);
    if (std::bit_cast<std::uint32_t>(ours[i]) == std::bit_cast<std::uint32_t>(golden[i])) {
      ++comparison->bit_equal;
    }
    comparison->max_ulps = std::max(comparison->max_ulps, difference / ulp(golden[i]));
    comparison->max_fraction =
        std::max(comparison->max_fraction, difference / comparison->bound[i]);
    if (difference > comparison->bound[i] && comparison->outside++ == 0) {
      comparison->first_outside = "index " + std::to_string(i) + ": ours " +
                                  std::to_string(ours[i]) + ", bitsandbytes " +
                                  std::to_string(golden[i]);
    }
  }
}

}  // namespace kbit::optim
