// Reading the PyTorch references of src/train/testdata (README.md there) for the gradient tests
// of LoRA and full fine-tuning, and writing the model they were made on: shakespeare-llama2 cut
// to its first 2 layers, in f32.
//
// kbit has no f64 dtype, so the files store each float64 value x as two F32 tensors, <key>.hi =
// float32(x) and <key>.lo = float32(x − hi); double(hi) + double(lo) gives x to about 48 bits.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kbit/core/convert.h"
#include "kbit/io/checkpoint.h"
#include "kbit/io/safetensors.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/train/trainable_model.h"
#include "testing/golden.h"
#include "testing/shared_data.h"

namespace kbit::train {

// The values of tensor `name`, which must be of dtype `dtype` (T's); empty, with a test failure,
// when it is missing or of another dtype.
template <typename T>
inline std::vector<T> values(const io::SafetensorsFile& file, const std::string& name,
                             DType dtype) {
  const Result<TensorView> tensor = file.tensor(name);
  if (tensor.ok() && tensor->dtype() != dtype) {
    ADD_FAILURE() << "tensor '" << name << "' of the reference has another dtype";
    return {};
  }
  return kbit::testing::golden_values<T>(file, name);
}

// The float64 values stored as `name`.hi + `name`.lo (F32 each).
inline std::vector<double> values_f64(const io::SafetensorsFile& file, const std::string& name) {
  const std::vector<float> hi = values<float>(file, name + ".hi", DType::kF32);
  const std::vector<float> lo = values<float>(file, name + ".lo", DType::kF32);
  if (hi.size() != lo.size()) {
    ADD_FAILURE() << name << ".hi and .lo differ in size";
    return {};
  }
  std::vector<double> sum(hi.size());
  for (std::size_t i = 0; i < hi.size(); ++i) {
    sum[i] = static_cast<double>(hi[i]) + static_cast<double>(lo[i]);
  }
  return sum;
}

// Replaces the first `from` of `text` by `to`.
inline void replace(std::string& text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << "shakespeare-llama2's config.json changed: no " << from;
  text.replace(at, from.size(), to);
}

// The 2-layer f32 cut of shakespeare-llama2, in `dir`.
inline void write_two_layer_cut(const std::filesystem::path& dir) {
  const std::filesystem::path model = kbit::testing::shared_file("models/shakespeare-llama2");
  std::ifstream in(model / "config.json");
  std::stringstream text;
  text << in.rdbuf();
  std::string config = text.str();
  replace(config, "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 2");
  replace(config, "\"dtype\": \"bfloat16\"", "\"dtype\": \"float32\"");
  std::ofstream(dir / "config.json") << config;
  Result<io::Checkpoint> checkpoint = io::Checkpoint::open(model);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().to_string();
  std::vector<Tensor> widened;
  std::vector<io::NamedTensor> tensors;
  for (const std::string& name : checkpoint->names()) {
    if (name.starts_with("model.layers.2.") || name.starts_with("model.layers.3.")) continue;
    const TensorView stored = checkpoint->tensor(name).value();
    widened.push_back(Tensor::empty(stored.shape(), DType::kF32).value());
    ASSERT_TRUE(convert_tensor(stored, widened.back().view()).ok()) << name;
    tensors.push_back({name, widened.back().view()});
  }
  ASSERT_TRUE(io::write_safetensors(dir / "model.safetensors", tensors).ok());
}

// The loss `model` computes for the reference's batch (input_ids and labels I64 [2, T]), its
// gradients added to the model's.
inline Result<double> reference_batch_loss(TrainableModel& model,
                                           const io::SafetensorsFile& reference) {
  const std::vector<std::int64_t> ids = values<std::int64_t>(reference, "input_ids", DType::kI64);
  const std::vector<std::int64_t> labels = values<std::int64_t>(reference, "labels", DType::kI64);
  return model.loss_and_gradients(std::vector<std::int32_t>(ids.begin(), ids.end()),
                                  std::vector<std::int32_t>(labels.begin(), labels.end()), 2);
}

}  // namespace kbit::train
