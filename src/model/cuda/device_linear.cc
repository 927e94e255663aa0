#include "model/cuda/device_linear.h"

namespace kbit::model::cuda {

namespace kc = kbit::kernels::cuda;

kc::FourBitWeightDevice four_bit_weight_device(const LinearWeight& w) {
  const io::QuantState& state = w.quant_state();
  const bool nested = state.nested.has_value();
  return {w.packed().data_as<const std::uint8_t>(),
          state.type,
          state.blocksize,
          nested ? nullptr : w.absmax().data_as<const float>(),
          nested ? w.absmax().data_as<const std::uint8_t>() : nullptr,
          nested ? w.nested_absmax().data_as<const float>() : nullptr,
          nested ? state.nested->offset : 0.0f,
          state.dtype};
}

kc::LoraAdapterDevice lora_adapter_on(const DeviceLinear& layer, const Tensor& a, const Tensor& b,
                                      float scaling) {
  return {a.data_as<const float>(), b.data_as<const float>(), a.shape()[0], scaling,
          layer.weight.format() != LinearFormat::kFloat};
}

Status device_linear_forward(kc::LinearContext& context, const DeviceLinear& layer,
                             const LinearNumerics& numerics, const void* x, std::int64_t rows,
                             void* y, kernels::cpu::FourBitDecode decode) {
  const LinearWeight& w = layer.weight;
  const DType dtype = numerics.activation_dtype;
  const void* bias = layer.bias.numel() > 0 ? layer.bias.view().data() : nullptr;
  switch (w.format()) {
    case LinearFormat::kFloat:
      return kc::linear_float(context, x, w.float_weight().data(), bias, rows, w.in_features(),
                              w.out_features(), y, dtype);
    case LinearFormat::kFourBit:
      return kc::linear_4bit(context, x, four_bit_weight_device(w), bias, rows, w.in_features(),
                             w.out_features(), numerics.compute_dtype, y, dtype, decode);
    case LinearFormat::kInt8: {
      const kc::Int8WeightDevice weight{w.codes().data_as<const std::int8_t>(),
                                        w.row_absmax().data_as<const float>()};
      return kc::linear_int8(context, x, weight, bias, rows, w.in_features(), w.out_features(),
                             numerics.int8_threshold, y, dtype);
    }
  }
  return internal_error("unknown Linear format");
}

Status check_device_input_gradient(const DeviceLinear& layer) {
  if (layer.weight.format() != LinearFormat::kInt8) return ok_status();
  return unimplemented(
      "training on an int8 base runs on the CPU only for now; load the base in 4-bit "
      "(--load-in-4bit) or 16-bit on the GPU, or train on the CPU (--device cpu)");
}

Status device_linear_backward_input(kc::LinearContext& context, const DeviceLinear& layer,
                                    const LinearNumerics& numerics, const void* dy,
                                    std::int64_t rows, void* dx) {
  const LinearWeight& w = layer.weight;
  const DType dtype = numerics.activation_dtype;
  switch (w.format()) {
    case LinearFormat::kFloat:
      return kc::linear_float_backward_input(context, dy, w.float_weight().data(), rows,
                                             w.in_features(), w.out_features(), dx, dtype);
    case LinearFormat::kFourBit:
      return kc::linear_4bit_backward_input(context, dy, four_bit_weight_device(w), rows,
                                            w.in_features(), w.out_features(),
                                            numerics.compute_dtype, dx, dtype);
    case LinearFormat::kInt8:
      return check_device_input_gradient(layer);
  }
  return internal_error("unknown Linear format");
}

}  // namespace kbit::model::cuda
