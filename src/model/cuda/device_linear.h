// One Linear of a model on a CUDA device (DeviceLinear, model/cuda/llama_cuda.h) run by the
// launcher of its weight's format (kernels/cuda/linear_launchers.h): the forward that inference
// and training share, and the input gradient training takes through a frozen Linear.
#pragma once

#include <cstdint>

#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "model/cuda/llama_cuda.h"

namespace kbit::model::cuda {

// The device pointers of a 4-bit weight on the device.
kernels::cuda::FourBitWeightDevice four_bit_weight_device(const LinearWeight& weight);

// LoRA weights a f32 [rank, in] and b f32 [out, rank] on the device, with `scaling`, as the LoRA
// launchers take them on `layer`: PEFT's rounding for the layer's kind of base.
kernels::cuda::LoraAdapterDevice lora_adapter_on(const DeviceLinear& layer, const Tensor& a,
                                                 const Tensor& b, float scaling);

// y [rows, out] = layer(x [rows, in]) without its LoRA terms, x and y of
// numerics.activation_dtype; 4-bit weights decoded by `decode`.
Status device_linear_forward(kernels::cuda::LinearContext& context, const DeviceLinear& layer,
                             const LinearNumerics& numerics, const void* x, std::int64_t rows,
                             void* y, kernels::cpu::FourBitDecode decode);

// Ok where device_linear_backward_input takes the layer's format: float and 4-bit weights;
// kUnimplemented for int8 ones (training on an int8 base runs on the CPU for now), saying what to
// do instead.
Status check_device_input_gradient(const DeviceLinear& layer);

// dx [rows, in] = dy [rows, out] · W, overwritten, as bitsandbytes' backward takes it through a
// frozen layer (the weight dequantized on the fly for 4-bit ones). The context must have been
// created with the input-gradient call shape for 4-bit weights. Fails as
// check_device_input_gradient for the formats it does not take.
Status device_linear_backward_input(kernels::cuda::LinearContext& context,
                                    const DeviceLinear& layer, const LinearNumerics& numerics,
                                    const void* dy, std::int64_t rows, void* dx);

}  // namespace kbit::model::cuda
