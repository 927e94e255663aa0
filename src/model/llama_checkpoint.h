// Reading a Llama checkpoint's tensors for LlamaModel::load, on the CPU and for a GPU: the float
// tensors checked against the shapes config.json implies, and each Linear layer's weight as
// stored (float, or bitsandbytes' format) or quantized while loading. Errors name the folder, the
// tensor, what was expected and what was found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/io/checkpoint.h"
#include "kbit/model/quantize_options.h"
#include "model/linear_weight.h"

namespace kbit::model {

// The float tensor `name` of exactly shape `dims`, as a view of the mapping.
Result<TensorView> expect_float_tensor(const io::Checkpoint& checkpoint,
                                       const std::filesystem::path& dir, const std::string& name,
                                       std::initializer_list<std::int64_t> dims);

// The float vector `name` [size], widened to f32.
Result<std::vector<float>> load_vector(const io::Checkpoint& checkpoint,
                                       const std::filesystem::path& dir, const std::string& name,
                                       std::int64_t size);

// How each Linear module of the checkpoint is to be loaded.
struct LinearPlan {
  const io::Checkpoint& checkpoint;
  const std::filesystem::path& dir;
  // The quantization in effect (the checkpoint's or the options'), nullopt for none.
  const std::optional<QuantizeOptions>& quantization;
  bool prequantized;  // the checkpoint stores the quantized layers
  bool round_bf16;    // float weights to bf16 before quantizing (bf16 activations)
  ExecutionOptions execution;
};

// Whether the plan quantizes Linear `module` (its quantization's skip list).
Result<bool> is_quantized_module(const LinearPlan& plan, const std::string& module);

// The host weight of Linear `module` [out, in]: as stored (a view of a float tensor, or
// bitsandbytes' format), or quantized from the float tensor `source_name` (normally
// module + ".weight").
Result<LinearWeight> load_linear_weight(const LinearPlan& plan, const std::string& module,
                                        const std::string& source_name, std::int64_t out,
                                        std::int64_t in);

}  // namespace kbit::model
