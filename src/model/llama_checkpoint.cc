#include "model/llama_checkpoint.h"

#include "kbit/core/convert.h"
#include "kernels/cpu/element_access.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

std::string shape_text(std::initializer_list<std::int64_t> dims) {
  std::string text = "[";
  bool first = true;
  for (std::int64_t d : dims) {
    text += (first ? "" : ", ") + std::to_string(d);
    first = false;
  }
  return text + "]";
}

std::vector<float> to_f32_vector(const TensorView& tensor) {
  std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
  k::visit_float_dtype(tensor.dtype(), [&](auto type_tag) {
    using T = decltype(type_tag);
    const T* data = tensor.data_as<const T>();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = k::to_f32(data[i]);
  });
  return out;
}

// Quantizes the float weight `source` (named `name`) as the plan says.
Result<LinearWeight> quantize_weight(const LinearPlan& plan, const TensorView& source,
                                     const std::string& name) {
  if (!plan.round_bf16 || source.dtype() == DType::kBF16) {
    return LinearWeight::quantize(source, *plan.quantization, name, plan.execution);
  }
  KBIT_ASSIGN_OR_RETURN(Tensor rounded, Tensor::empty(source.shape(), DType::kBF16));
  KBIT_RETURN_IF_ERROR(convert_tensor(source, rounded.view()));
  return LinearWeight::quantize(rounded.view(), *plan.quantization, name, plan.execution);
}

}  // namespace

Result<TensorView> expect_float_tensor(const io::Checkpoint& checkpoint,
                                       const std::filesystem::path& dir, const std::string& name,
                                       std::initializer_list<std::int64_t> dims) {
  Result<TensorView> tensor = checkpoint.tensor(name);
  if (!tensor.ok()) {
    const bool quantized = checkpoint.contains(name + ".absmax") ||
                           checkpoint.contains(name.substr(0, name.rfind('.')) + ".SCB");
    if (quantized) {
      return invalid_argument(dir.string() + ": tensor '" + name +
                              "' is stored quantized by bitsandbytes, but config.json has no "
                              "quantization_config, or its llm_int8_skip_modules names this "
                              "module; the config and the weights do not match");
    }
    return not_found(dir.string() + ": tensor '" + name + "' is missing from the checkpoint; " +
                     "config.json implies it (is the folder complete?)");
  }
  if (!is_floating(tensor->dtype())) {
    return invalid_argument(dir.string() + ": tensor '" + name + "' has dtype " +
                            std::string(dtype_name(tensor->dtype())) +
                            " where a float weight (f32, f16 or bf16) belongs; is config.json's "
                            "quantization_config missing or its skip list wrong?");
  }
  const Shape want(dims);
  if (!(tensor->shape() == want)) {
    return invalid_argument(dir.string() + ": tensor '" + name + "' has shape " +
                            tensor->shape().to_string() + " but config.json implies " +
                            shape_text(dims) + "; the config and the weights do not match");
  }
  return tensor;
}

Result<std::vector<float>> load_vector(const io::Checkpoint& checkpoint,
                                       const std::filesystem::path& dir, const std::string& name,
                                       std::int64_t size) {
  KBIT_ASSIGN_OR_RETURN(const TensorView tensor,
                        expect_float_tensor(checkpoint, dir, name, {size}));
  return to_f32_vector(tensor);
}

Result<bool> is_quantized_module(const LinearPlan& plan, const std::string& module) {
  if (!plan.quantization) return false;
  return quantizes_module(plan.quantization->config, module);
}

Result<LinearWeight> load_linear_weight(const LinearPlan& plan, const std::string& module,
                                        const std::string& source_name, std::int64_t out,
                                        std::int64_t in) {
  KBIT_ASSIGN_OR_RETURN(const bool quantized, is_quantized_module(plan, module));
  if (quantized && plan.prequantized) {
    const io::BnbQuantizationConfig& q = plan.quantization->config;
    Result<LinearWeight> weight =
        q.mode == io::BnbQuantMode::kInt8
            ? LinearWeight::read_int8(plan.checkpoint, module, out, in)
            : LinearWeight::read_4bit(plan.checkpoint, module, out, in,
                                      FourBitFormat{q.four_bit_type, q.double_quant, 0});
    if (!weight.ok()) return weight.status().with_context(plan.dir.string());
    return weight;
  }
  KBIT_ASSIGN_OR_RETURN(const TensorView source,
                        expect_float_tensor(plan.checkpoint, plan.dir, source_name, {out, in}));
  if (!quantized) return LinearWeight::float_view(source);
  Result<LinearWeight> weight = quantize_weight(plan, source, source_name);
  if (!weight.ok()) return weight.status().with_context(plan.dir.string());
  return weight;
}

}  // namespace kbit::model
