// Loading a Llama model's weights onto a GPU (kbit/model/llama.h, model/cuda/llama_cuda.h): one
// tensor at a time from the mapped checkpoint through the DeviceLoader's pinned staging, each
// float weight converted to the activation dtype on the device, each weight to quantize
// quantized there (with bitsandbytes' bits), each pre-quantized one uploaded as stored, each
// adapter's LoRA weights widened to f32. Pages of the mapping are released once uploaded. Or, for
// benchmarks, random weights of the same shapes made on the device.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/io/checkpoint.h"
#include "kbit/io/peft_adapter.h"
#include "kbit/model/llama_config.h"
#include "kbit/model/quantize_options.h"
#include "model/cuda/device_loader.h"
#include "model/cuda/llama_cuda.h"

namespace kbit::model {

struct DeviceLoadPlan {
  const LlamaConfig& config;
  // The checkpoint to read, or null for random weights.
  const io::Checkpoint* checkpoint;
  const std::filesystem::path& dir;  // for errors
  // The quantization in effect (the checkpoint's or the options'), nullopt for none.
  const std::optional<QuantizeOptions>& quantization;
  bool prequantized;       // the checkpoint stores the quantized layers
  DType activation_dtype;  // f32 or bf16
  ExecutionOptions execution;
  // Random weights: normal(0, 0.02) (norm weights normal(1, 0.02)), made in random_dtype as a
  // checkpoint would store them, each tensor from its own stream of kbit::normal_sample derived
  // from random_seed and its name.
  std::uint64_t random_seed = 0;
  DType random_dtype = DType::kBF16;
  // PEFT adapters whose LoRA terms the Linear layers take (checked to fit the model).
  std::span<const io::PeftAdapter> adapters = {};
};

Result<cuda::DeviceWeights> load_device_weights(const DeviceLoadPlan& plan,
                                                cuda::DeviceLoader& loader);

}  // namespace kbit::model
