// One Linear of a model on a CUDA device (DeviceLinear, model/cuda/llama_cuda.h) run by the
// launcher of its weight's format (kernels/cuda/linear_launchers.h): the forward that inference
// and training share, and the input gradient training takes through a frozen Linear.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>

#include "kbit/core/status.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "model/cuda/llama_cuda.h"

namespace kbit::model::cuda {

// The device pointers of a 4-bit weight on the device.
kernels::cuda::FourBitWeightDevice four_bit_weight_device(const LinearWeight& weight);

// The device pointers of an int8 weight on the device.
kernels::cuda::Int8WeightDevice int8_weight_device(const LinearWeight& weight);

// LoRA weights a f32 [rank, in] and b f32 [out, rank] on the device, with `scaling`, as the LoRA
// launchers take them on `layer`: PEFT's rounding for the layer's kind of base.
kernels::cuda::LoraAdapterDevice lora_adapter_on(const DeviceLinear& layer, const Tensor& a,
                                                 const Tensor& b, float scaling);

// y [rows, out] = layer(x [rows, in]) without its LoRA terms, x and y of
// numerics.activation_dtype; 4-bit weights decoded by `decode`.
Status device_linear_forward(kernels::cuda::LinearContext& context, const DeviceLinear& layer,
                             const LinearNumerics& numerics, const void* x, std::int64_t rows,
                             void* y, kernels::cpu::FourBitDecode decode);

// The dtype dequantize_device_linear writes the layer's weight in: the compute dtype for 4-bit,
// the activation dtype for int8; nullopt for a float weight, which is its own matrix.
std::optional<DType> dequantized_dtype(const DeviceLinear& layer, const LinearNumerics& numerics);

// weight_out [out, in] (in dequantized_dtype, 16-byte aligned) = W as the input gradient
// multiplies it: a 4-bit weight decoded exactly (dequantize_4bit_weight), an int8 one as
// bitsandbytes' MatMul8bitLt backward takes it (dequantize_int8_weight). Queued on `stream`.
// kInvalidArgument for a float weight.
Status dequantize_device_linear(const DeviceLinear& layer, const LinearNumerics& numerics,
                                void* weight_out, cudaStream_t stream);

// dx [rows, in] = dy [rows, out] · W, overwritten, as bitsandbytes' backward takes it through a
// frozen layer. `dequantized`: W from dequantize_device_linear in the activation dtype, or
// nullptr; without it a 4-bit weight is dequantized a chunk at a time (the context must have been
// created with the input-gradient call shape), and an int8 weight is refused (kInvalidArgument:
// dequantize it first).
Status device_linear_backward_input(kernels::cuda::LinearContext& context,
                                    const DeviceLinear& layer, const LinearNumerics& numerics,
                                    const void* dy, std::int64_t rows, void* dx,
                                    const void* dequantized = nullptr);

}  // namespace kbit::model::cuda
