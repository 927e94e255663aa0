// FullTrainingModel against PyTorch (testdata/full_gradients_shakespeare_llama2.safetensors,
// described in testdata/README.md): shakespeare-llama2 cut to its first 2 layers in f32, every
// weight trainable, a batch of 2 × 32 tokens; the loss and the gradients compared with
// PyTorch's float64 run: the 5 norm weights' whole gradients, 4 rows of each of the 15 matrices
// (the tied embedding's rows chosen to hold the lookup's part, lm_head's part, or both), and
// every tensor's whole-gradient norm.
//
// Measured, relative to the float64 run: loss |Δ| / loss 5.4e-9; gradients, the largest over the
// 20 tensors of ‖Δ‖₂ / ‖reference‖₂ over the stored values, 1.6e-6, and of |‖g‖₂ − ‖reference‖₂| /
// ‖reference‖₂ over the whole tensors, 1.1e-6. PyTorch's own float32 run lies up to 1.2e-6 away
// (README). The bounds are the LoRA reference test's: 2e-7 and 5e-6.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kbit/io/safetensors.h"
#include "kbit/model/llama.h"
#include "kbit/train/full_training_model.h"
#include "testing/relative_error.h"
#include "testing/temp_dir.h"
#include "train/pytorch_reference_test_support.h"

namespace kbit::train {
namespace {

constexpr double kLossTolerance = 2e-7;
constexpr double kGradientTolerance = 5e-6;

const char* kReference = "/src/train/testdata/full_gradients_shakespeare_llama2.safetensors";

TEST(FullPytorchReference, LossAndGradients) {
  KBIT_REQUIRE_SHARED_DIR();
  const io::SafetensorsFile reference =
      io::SafetensorsFile::open(std::string(KBIT_SOURCE_DIR) + kReference).value();
  const kbit::testing::TempDir dir;
  write_two_layer_cut(dir.path());
  const model::LlamaModel base = model::LlamaModel::load(dir.path(), {}).value();
  FullTrainingModel model = FullTrainingModel::create(base, dir.path()).value();

  const Result<double> loss = reference_batch_loss(model, reference);
  ASSERT_TRUE(loss.ok()) << loss.status().to_string();
  const double want = values_f64(reference, "loss_f64").at(0);
  const double loss_error = std::fabs(*loss - want) / want;
  EXPECT_LT(loss_error, kLossTolerance);

  double largest = 0.0;
  double largest_norm = 0.0;
  const std::vector<TrainableParameter> parameters = model.parameters();
  ASSERT_EQ(parameters.size(), 20u);
  for (const TrainableParameter& p : parameters) {
    const std::vector<double> expected = values_f64(reference, "grad64." + p.name);
    std::vector<float> got;
    const std::span<float> gradient = p.host_gradient();
    if (expected.size() == gradient.size()) {  // a norm: the whole gradient
      got.assign(gradient.begin(), gradient.end());
    } else {                                          // a matrix: the stored rows
      const std::size_t width = expected.size() / 4;  // 4 rows of [out, in]
      for (const std::int64_t row :
           values<std::int64_t>(reference, "rows." + p.name, DType::kI64)) {
        const auto first = gradient.begin() + static_cast<std::ptrdiff_t>(row * width);
        got.insert(got.end(), first, first + static_cast<std::ptrdiff_t>(width));
      }
    }
    ASSERT_EQ(got.size(), expected.size()) << p.name;
    const double error = kbit::testing::relative_error<float>(got, expected);
    EXPECT_LT(error, kGradientTolerance) << p.name;
    largest = std::max(largest, error);

    double norm = 0.0;
    for (const float g : p.host_gradient()) norm += static_cast<double>(g) * g;
    const double want_norm = values_f64(reference, "grad64_norm." + p.name).at(0);
    const double norm_error = std::fabs(std::sqrt(norm) - want_norm) / want_norm;
    EXPECT_LT(norm_error, kGradientTolerance) << p.name;
    largest_norm = std::max(largest_norm, norm_error);
  }
  std::cout << "[ train] full: loss " << *loss << " (PyTorch f64 " << want << "), relative error "
            << loss_error << "; largest gradient error " << largest << ", of a norm "
            << largest_norm << "\n";
}

}  // namespace
}  // namespace kbit::train
