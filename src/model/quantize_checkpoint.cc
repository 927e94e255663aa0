#include "kbit/model/quantize_checkpoint.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kbit/io/bnb_quantization_config.h"
#include "kbit/io/checkpoint.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/llama_config.h"
#include "model/cuda/device_loader.h"
#include "model/linear_weight.h"
#include "model/model_folder.h"

namespace kbit::model {
namespace {

namespace fs = std::filesystem;

// The quantized Linear weights of the checkpoint, keyed by their float tensor's name.
using QuantizedWeights = std::map<std::string, LinearWeight>;

// Quantizes `weight` on `device` (uploading it there first when that is a GPU); the result on the
// host.
Result<LinearWeight> quantize_on(const TensorView& weight, const QuantizeOptions& options,
                                 const std::string& name, const ExecutionOptions& execution,
                                 cuda::DeviceLoader* loader) {
  if (loader == nullptr) return LinearWeight::quantize(weight, options, name, execution);
  KBIT_ASSIGN_OR_RETURN(const Tensor on_device, loader->upload(weight));
  ExecutionOptions on_stream = execution;
  on_stream.stream = loader->stream();
  KBIT_ASSIGN_OR_RETURN(const LinearWeight quantized,
                        LinearWeight::quantize(on_device.view(), options, name, on_stream));
  KBIT_RETURN_IF_ERROR(loader->finish());
  return quantized.to_device(Device::cpu());
}

Result<QuantizedWeights> quantize_linears(const io::Checkpoint& checkpoint,
                                          const LlamaConfig& config, const QuantizeOptions& options,
                                          const ExecutionOptions& execution, const Device& device) {
  std::unique_ptr<cuda::DeviceLoader> loader;
  if (device.is_cuda()) {
    KBIT_ASSIGN_OR_RETURN(loader, cuda::DeviceLoader::create(device));
  }
  QuantizedWeights quantized;
  for (const LinearModule& module : linear_modules(config)) {
    KBIT_ASSIGN_OR_RETURN(const bool quantize, quantizes_module(options.config, module.name));
    if (!quantize) continue;
    if (module.name == "lm_head" && config.tie_word_embeddings) {
      return unimplemented(
          "lm_head is tied to the embedding (tie_word_embeddings) and cannot be saved "
          "quantized; keep it unquantized (the default --skip-modules lm_head)");
    }
    const std::string name = module.name + ".weight";
    KBIT_ASSIGN_OR_RETURN(const TensorView weight, checkpoint.tensor(name));
    const Shape expected{module.out_features, module.in_features};
    if (!(weight.shape() == expected)) {
      return invalid_argument("tensor '" + name + "' has shape " + weight.shape().to_string() +
                              " but config.json implies " + expected.to_string());
    }
    KBIT_ASSIGN_OR_RETURN(LinearWeight linear,
                          quantize_on(weight, options, name, execution, loader.get()));
    checkpoint.release(name);
    quantized.emplace(name, std::move(linear));
  }
  return quantized;
}

// Writes the folder's contents into `staging` (an empty folder).
Status write_quantized_folder(const fs::path& model_dir, const fs::path& staging,
                              const QuantizeOptions& options, const ExecutionOptions& execution,
                              const Device& device) {
  KBIT_ASSIGN_OR_RETURN(const FloatModel model,
                        open_float_model(model_dir, "quantize the original float model instead"));
  const LlamaConfig& config = model.config;
  const io::Checkpoint& checkpoint = model.checkpoint;
  KBIT_ASSIGN_OR_RETURN(const QuantizedWeights quantized,
                        quantize_linears(checkpoint, config, options, execution, device));

  std::vector<io::NamedTensor> tensors;
  for (const std::string& name : checkpoint.names()) {
    // transformers does not save a tied head: the embedding is the head.
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;
    const auto found = quantized.find(name);
    if (found == quantized.end()) {
      KBIT_ASSIGN_OR_RETURN(const TensorView tensor, checkpoint.tensor(name));
      tensors.push_back({name, tensor});
      continue;
    }
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    for (io::NamedTensor& entry : found->second.state_dict(module)) {
      tensors.push_back(std::move(entry));
    }
  }
  KBIT_RETURN_IF_ERROR(write_model_weights(staging, std::move(tensors)));
  KBIT_RETURN_IF_ERROR(io::write_config_with_quantization(model_dir / "config.json", options.config,
                                                          staging / "config.json"));

  return copy_model_files(model_dir, staging, /*config_too=*/false);
}

}  // namespace

Status quantize_checkpoint(const fs::path& model_dir, const fs::path& output_dir,
                           const QuantizeOptions& options, const ExecutionOptions& execution,
                           const Device& device) {
  KBIT_RETURN_IF_ERROR(validate_quantize_options(options));
  return write_model_folder(output_dir, [&](const fs::path& staging) {
    return write_quantized_folder(model_dir, staging, options, execution, device);
  });
}

}  // namespace kbit::model
