// Checking a TrainableModel's gradients on the tiny random Llama (tiny_llama_test_support.h)
// against finite differences of the loss the same model computes, for the tests of
// LoraTrainingModel and FullTrainingModel.
//
// The finite differences are directional: for each parameter, along 3 random directions v
// (entries N(0, 1)), d/dε L(W + ε v) at 0 by central differences with Richardson extrapolation,
//   D(h) = (L(W + h v) − L(W − h v)) / 2h,   D = (4 D(h/2) − D(h)) / 3,
// whose truncation error is O(h⁴). The loss is computed in f32 (summed in double), with rounding
// noise that the quotient magnifies by 1/h: each test states the step and the tolerance it
// measured.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kbit/core/random.h"
#include "kbit/model/llama.h"
#include "kbit/train/trainable_model.h"
#include "testing/relative_error.h"
#include "testing/temp_dir.h"
#include "train/tiny_llama_test_support.h"

namespace kbit::train {

// Two sequences of 9 tokens, labels the ids (as a causal LM trains), some ignored.
struct Batch {
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> labels;
  std::int64_t batch = 2;
};

inline Batch tiny_batch() {
  Batch b;
  for (std::uint64_t i = 0; i < 18; ++i) {
    b.ids.push_back(static_cast<std::int32_t>(std::fabs(normal_sample(99, i)) * 20) % 64);
  }
  b.labels = b.ids;
  for (const int ignored : {3, 9, 10, 11}) b.labels[static_cast<std::size_t>(ignored)] = -100;
  return b;
}

// The tiny model written into `dir` and loaded on the CPU in f32, quantized as `quantize` says.
inline model::LlamaModel load_tiny(const kbit::testing::TempDir& dir, bool tied,
                                   std::optional<model::QuantizeOptions> quantize = std::nullopt) {
  write_tiny_llama(dir.path(), 5, tied);
  model::LlamaLoadOptions options;
  options.quantize = quantize;
  Result<model::LlamaModel> loaded = model::LlamaModel::load(dir.path(), options);
  EXPECT_TRUE(loaded.ok()) << loaded.status().to_string();
  return std::move(loaded).value();
}

inline double loss(TrainableModel& model, const Batch& batch) {
  Result<double> value = model.loss_and_gradients(batch.ids, batch.labels, batch.batch);
  EXPECT_TRUE(value.ok()) << value.status().to_string();
  return value.ok() ? *value : 0.0;
}

// The directional derivatives of the loss along `directions` of `values`, by the formula above.
inline std::vector<double> numeric_derivatives(TrainableModel& model, const Batch& batch,
                                               std::span<float> values,
                                               const std::vector<std::vector<double>>& directions,
                                               double step) {
  const std::vector<float> saved(values.begin(), values.end());
  const auto loss_at = [&](const std::vector<double>& v, double h) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      values[i] = static_cast<float>(saved[i] + h * v[i]);
    }
    return loss(model, batch);
  };
  std::vector<double> derivatives;
  for (const std::vector<double>& v : directions) {
    const double whole = (loss_at(v, step) - loss_at(v, -step)) / (2 * step);
    const double half = (loss_at(v, step / 2) - loss_at(v, -step / 2)) / step;
    derivatives.push_back((4 * half - whole) / 3);
  }
  std::copy(saved.begin(), saved.end(), values.begin());
  return derivatives;
}

// Checks every parameter's gradient (‖analytic − numeric‖ / ‖numeric‖ over its 3 directions
// below `tolerance`); returns the largest relative error.
inline double check_gradients(TrainableModel& model, const Batch& batch, double step,
                              double tolerance) {
  const std::vector<TrainableParameter> parameters = model.parameters();
  for (const TrainableParameter& p : parameters) {
    std::ranges::fill(p.host_gradient(), 0.0f);
  }
  loss(model, batch);
  // The analytic gradients, before the finite differences add to them.
  std::vector<std::vector<float>> analytic;
  for (const TrainableParameter& p : parameters) {
    analytic.emplace_back(p.host_gradient().begin(), p.host_gradient().end());
  }
  double largest = 0.0;
  std::uint64_t stream = 500;
  for (std::size_t p = 0; p < parameters.size(); ++p) {
    const std::vector<float>& gradient = analytic[p];
    std::vector<std::vector<double>> directions(3, std::vector<double>(gradient.size()));
    std::vector<double> expected;
    for (std::vector<double>& v : directions) {
      double dot = 0.0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        v[i] = normal_sample(stream, i);
        dot += v[i] * gradient[i];
      }
      ++stream;
      expected.push_back(dot);
    }
    const double error = kbit::testing::relative_error<double>(
        expected, numeric_derivatives(model, batch, parameters[p].host_values(), directions, step));
    EXPECT_LT(error, tolerance) << parameters[p].name;
    largest = std::max(largest, error);
  }
  return largest;
}

// The mean cross-entropy of LlamaModel::forward's logits for each sequence of `batch` against
// its shifted labels, in double: the loss a training model of the same weights must give.
inline double forward_loss(const model::LlamaModel& model, const Batch& batch) {
  const std::int64_t vocab = model.config().vocab_size;
  const std::size_t tokens = batch.ids.size() / static_cast<std::size_t>(batch.batch);
  std::vector<float> logits(tokens * static_cast<std::size_t>(vocab));
  double sum = 0.0;
  int count = 0;
  for (std::size_t b = 0; b < static_cast<std::size_t>(batch.batch); ++b) {
    model::KvCache cache = model.new_cache(static_cast<std::int64_t>(tokens)).value();
    const std::span<const std::int32_t> ids(batch.ids.data() + b * tokens, tokens);
    const TensorView view(logits.data(), DType::kF32, {static_cast<std::int64_t>(tokens), vocab});
    EXPECT_TRUE(model.forward(ids, cache, view, true).ok());
    for (std::size_t t = 0; t + 1 < tokens; ++t) {
      const std::int32_t label = batch.labels[b * tokens + t + 1];
      if (label == -100) continue;
      const float* z = logits.data() + t * static_cast<std::size_t>(vocab);
      double normaliser = 0.0;
      for (std::int64_t c = 0; c < vocab; ++c) normaliser += std::exp(static_cast<double>(z[c]));
      sum += std::log(normaliser) - z[label];
      ++count;
    }
  }
  return sum / count;
}

}  // namespace kbit::train
