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
          state.dtype,
          w.layout(),
          w.rounded_absmax().data(),
          w.rounded_absmax().dtype()};
}

kc::Int8WeightDevice int8_weight_device(const LinearWeight& w) {
  return {w.codes().data_as<const std::int8_t>(), w.row_absmax().data_as<const float>()};
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
    case LinearFormat::kInt8:
      return kc::linear_int8(context, x, int8_weight_device(w), bias, rows, w.in_features(),
                             w.out_features(), numerics.int8_threshold, y, dtype);
  }
  return internal_error("unknown Linear format");
}

std::optional<DType> dequantized_dtype(const DeviceLinear& layer, const LinearNumerics& numerics) {
  switch (layer.weight.format()) {
    case LinearFormat::kFloat:
      return std::nullopt;
    case LinearFormat::kFourBit:
      return numerics.compute_dtype;
    case LinearFormat::kInt8:
      return numerics.activation_dtype;
  }
  return std::nullopt;
}

Status dequantize_device_linear(const DeviceLinear& layer, const LinearNumerics& numerics,
                                void* weight_out, cudaStream_t stream) {
  const LinearWeight& w = layer.weight;
  switch (w.format()) {
    case LinearFormat::kFloat:
      break;
    case LinearFormat::kFourBit:
      return kc::dequantize_4bit_weight(four_bit_weight_device(w), w.out_features(),
                                        w.in_features(), numerics.compute_dtype, weight_out,
                                        stream);
    case LinearFormat::kInt8:
      return kc::dequantize_int8_weight(int8_weight_device(w), w.out_features(), w.in_features(),
                                        numerics.activation_dtype, weight_out, stream);
  }
  return invalid_argument("dequantize_device_linear: a float weight is its own matrix");
}

Status device_linear_backward_input(kc::LinearContext& context, const DeviceLinear& layer,
                                    const LinearNumerics& numerics, const void* dy,
                                    std::int64_t rows, void* dx, const void* dequantized) {
  const LinearWeight& w = layer.weight;
  const DType dtype = numerics.activation_dtype;
  if (dequantized != nullptr) {
    return kc::linear_float_backward_input(context, dy, dequantized, rows, w.in_features(),
                                           w.out_features(), dx, dtype);
  }
  switch (w.format()) {
    case LinearFormat::kFloat:
      return kc::linear_float_backward_input(context, dy, w.float_weight().data(), rows,
                                             w.in_features(), w.out_features(), dx, dtype);
    case LinearFormat::kFourBit:
      return kc::linear_4bit_backward_input(context, dy, four_bit_weight_device(w), rows,
                                            w.in_features(), w.out_features(),
                                            numerics.compute_dtype, dx, dtype);
    case LinearFormat::kInt8:
      return invalid_argument(
          "device_linear_backward_input: an int8 weight's input gradient takes it dequantized "
          "(dequantize_device_linear)");
  }
  return internal_error("unknown Linear format");
}

}  // namespace kbit::model::cuda
