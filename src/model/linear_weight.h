// The weight of one Linear layer W [out_features, in_features] in each form kbit computes with:
//   float   f32, f16 or bf16: a view of the mapped checkpoint, or an owned rounded copy
//   4-bit   NF4/FP4 blockwise, optionally with double-quantized absmax, as bitsandbytes'
//           Linear4bit holds it (spec 2-4)
//   int8    LLM.int8 row-wise codes and row absmax, as Linear8bitLt holds it (spec 6.1-6.2)
// A weight is made by quantizing a float tensor (owning the result), or read from a
// bitsandbytes state dict in a checkpoint (viewing the mapping, which must outlive it).
//
// Its data (the float weight, the codes and their scales) lives on one device: the host, or a
// GPU when it was quantized from a device tensor or moved there with to_device(). The small
// metadata (code tables, the QuantState JSON, the int8 weight_format) always stays on the host.
//
// Move-only; immutable once made, so forward() may run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kbit/core/execution.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/io/bnb_quant_state.h"
#include "kbit/io/checkpoint.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/quantize_options.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/decode_tiles.h"
#include "kernels/cpu/quantized_linear.h"

namespace kbit::model {

enum class LinearFormat { kFloat, kFourBit, kInt8 };

// How a 4-bit weight is made (BitsAndBytesConfig's bnb_4bit_* options and kbit's block size).
struct FourBitFormat {
  quant::FourBitType type = quant::FourBitType::kNf4;
  bool double_quant = false;
  std::int64_t block_size = 64;
};

// The numerics of one call: the dtype the activations hold, and for 4-bit weights the compute
// dtype (bnb_4bit_compute_dtype); for int8 weights the outlier threshold (llm_int8_threshold).
struct LinearNumerics {
  DType activation_dtype = DType::kF32;  // f32 or bf16
  DType compute_dtype = DType::kF32;     // f32, f16 or bf16
  float int8_threshold = 6.0f;
};

class LinearWeight {
 public:
  LinearWeight() = default;
  LinearWeight(LinearWeight&&) noexcept = default;
  LinearWeight& operator=(LinearWeight&&) noexcept = default;

  // A view of a float weight [out, in] (f32, f16 or bf16, contiguous, host).
  static LinearWeight float_view(const TensorView& weight);
  // Takes ownership of a float weight [out, in] on any device.
  static LinearWeight float_owned(Tensor weight);
  // An owned copy of a float weight rounded to bf16 (transformers' model.to(torch.bfloat16)).
  static Result<LinearWeight> float_rounded_to_bf16(const TensorView& weight);
  // Quantizes a float weight [out, in] as `options` say (4-bit or int8, below). `name` is for
  // errors. The weight may be on the host or a GPU; the result lives on the same device (a GPU
  // quantizes with bitsandbytes' own kernels' bits, as the host does).
  static Result<LinearWeight> quantize(const TensorView& weight, const QuantizeOptions& options,
                                       const std::string& name, const ExecutionOptions& execution);
  // Quantizes a float weight [out, in] as bitsandbytes' Params4bit does on the GPU. `name` is
  // for errors. Fails for a layout the 4-bit kernels do not take (see is_supported_4bit_layout
  // in kernels/cpu/quantized_linear.h), naming the tensor, the block size and the fix.
  static Result<LinearWeight> quantize_4bit(const TensorView& weight, const FourBitFormat& format,
                                            const std::string& name,
                                            const ExecutionOptions& execution);
  // Quantizes a float weight [out, in] as Int8Params does (row-wise, via f16).
  static Result<LinearWeight> quantize_int8(const TensorView& weight, const std::string& name,
                                            const ExecutionOptions& execution);

  // Reads the 4-bit state dict of module `prefix` (e.g. "model.layers.0.mlp.up_proj") from a
  // checkpoint: every key of spec 4.1 present with its dtype and size, the JSON blob's shape
  // equal to [out, in], its quant type `expected.type`, nested exactly when
  // `expected.double_quant`, the code tables equal to bitsandbytes'. Errors name the tensor.
  static Result<LinearWeight> read_4bit(const io::Checkpoint& checkpoint, const std::string& prefix,
                                        std::int64_t out_features, std::int64_t in_features,
                                        const FourBitFormat& expected);
  // Reads the int8 state dict of module `prefix` (spec 6.2): weight I8 [out, in], SCB F32 [out],
  // weight_format absent or 0 ("row").
  static Result<LinearWeight> read_int8(const io::Checkpoint& checkpoint, const std::string& prefix,
                                        std::int64_t out_features, std::int64_t in_features);

  // Copies a tensor to some device (e.g. through pinned staging buffers) and returns the copy.
  using TensorCopier = std::function<Result<Tensor>(const TensorView& source)>;
  // A copy of the data on `device` (the metadata shared as it is): host -> GPU for a model on a
  // GPU, GPU -> host to save a weight quantized there. `copier` makes the copies that need a
  // transfer; without one, copy_tensor does (waiting for each).
  Result<LinearWeight> to_device(const Device& device, const TensorCopier& copier = {}) const;

  // For a 4-bit GPU weight whose shape takes them: moves its codes and absmax into the decode
  // tiles (kbit/quant/decode_tiles.h), which the CUDA kernels read faster, on execution.stream;
  // waits for the device before it releases the untiled storage. Leaves any other weight as it is.
  Status to_decode_tiles(const ExecutionOptions& execution);
  // For a 4-bit GPU weight: takes `rounded` [blocks], round_C(absmax) of each block in the
  // weight's layout as kernels::cuda::round_4bit_absmax makes it (C = its dtype, f16 or bf16),
  // which the decode GEMV reads instead of the absmax for calls of that compute dtype. A layout
  // change drops it; to_device() does not copy it.
  void set_rounded_absmax(Tensor rounded);
  const TensorView& rounded_absmax() const { return rounded_absmax_; }
  // Where a 4-bit weight's codes and absmax lie. Host weights are always in bitsandbytes' layout:
  // to_device(cpu) puts a tiled weight back into it.
  quant::FourBitLayout layout() const { return layout_; }

  LinearFormat format() const { return format_; }
  Device device() const { return device_; }
  std::int64_t out_features() const { return out_features_; }
  std::int64_t in_features() const { return in_features_; }
  // For a float weight: its view.
  const TensorView& float_weight() const { return float_weight_; }
  // For a 4-bit weight: the packed codes u8 [ceil(n/2)], the absmax (f32 [blocks], or u8 codes
  // [blocks] when nested), the nested absmax f32 [ceil(blocks/256)] (empty view when not
  // nested) and the QuantState (type, block size, dtype, nested offset).
  const TensorView& packed() const { return packed_; }
  const TensorView& absmax() const { return absmax_; }
  const TensorView& nested_absmax() const { return nested_absmax_; }
  const io::QuantState& quant_state() const { return quant_state_; }
  // For a 4-bit host weight: the kernels' description of it (kernels/cpu/quantized_linear.h).
  kernels::cpu::FourBitWeight four_bit_weight() const;
  // For an int8 weight: the codes i8 [out, in] and the row absmax f32 [out].
  const TensorView& codes() const { return codes_; }
  const TensorView& row_absmax() const { return row_absmax_; }

  // Requires a host weight. The entries bitsandbytes' state_dict() has for this weight under module
  // `prefix`, named prefix + ".weight" and so on: 4-bit: weight, weight.absmax, weight.quant_map,
  // [weight.nested_absmax, weight.nested_quant_map,] weight.quant_state.bitsandbytes__<type>;
  // int8: weight, SCB, weight_format; float: weight. Views into this object (valid while it
  // lives).
  std::vector<io::NamedTensor> state_dict(const std::string& prefix) const;

  // Bytes of the weight's data and statistics (what it costs in memory): the float weight, or
  // the codes, absmax, nested absmax, row absmax and row sums. The code tables and the JSON
  // description (under 1.3 KB per weight) are not counted.
  std::size_t nbytes() const;
  // Bytes transformers' get_memory_footprint counts: the parameter only (the packed codes for
  // 4-bit, the int8 codes), not the quantization statistics.
  std::size_t parameter_bytes() const;

  // Requires a host weight (a GPU model calls the CUDA kernels itself: model/cuda/).
  // y[rows, out] = x[rows, in] · Wᵀ (+ bias[out]), with the numerics of the format; y holds values
  // of numerics.activation_dtype.
  void forward(const float* x, std::int64_t rows, const float* bias, const LinearNumerics& numerics,
               float* y, const ExecutionOptions& execution) const;

  // Requires a host weight. The gradient of forward()'s input for a frozen weight:
  //   dx[rows, in] = round_R(round_R(dy[rows, out]) · round_R(W)), f32 sums
  // with W as bitsandbytes' backward multiplies it, in the dtype R of that product:
  //   float   the stored values widened to f32; R = numerics.activation_dtype
  //   4-bit   dequantize_4bit's values (code value · absmax rounded to the weight's dtype,
  //           exactly as forward() decodes them); R = numerics.compute_dtype (MatMul4Bit)
  //   int8    code · fl32(SCB · fl32(1/127)); R = numerics.activation_dtype (MatMul8bitLt)
  // With R = f32 nothing is rounded. W is decoded a panel at a time inside the product (never
  // as a whole copy) and the input features are split over the thread pool; the result does
  // not depend on the thread count. dx is overwritten.
  void backward_input(const float* dy, std::int64_t rows, const LinearNumerics& numerics, float* dx,
                      const ExecutionOptions& execution) const;

 private:
  // The view of `source`'s data on `device`, copied into owned_ (or source itself if it is
  // already there, or empty).
  Result<TensorView> copied_to(const TensorView& source, const Device& device,
                               const TensorCopier& copier);
  // Moves the 4-bit codes and absmax into `layout` (from the other one) through new storage on
  // device_, queued on execution.stream; waits for the device before it releases the old storage.
  Status move_to_layout(quant::FourBitLayout layout, const ExecutionOptions& execution);

  LinearFormat format_ = LinearFormat::kFloat;
  Device device_;
  std::int64_t out_features_ = 0;
  std::int64_t in_features_ = 0;
  TensorView float_weight_;  // kFloat
  // kFourBit: packed u8 [ceil(n/2), 1]; absmax f32 [blocks] or u8 codes when nested;
  // nested_absmax f32 [ceil(blocks/256)]; the code tables and the JSON blob as stored.
  TensorView packed_, absmax_, nested_absmax_, quant_map_, nested_quant_map_, quant_state_blob_;
  io::QuantState quant_state_;
  quant::FourBitLayout layout_ = quant::FourBitLayout::kBitsandbytes;
  TensorView rounded_absmax_;  // kFourBit on a GPU, optional: set_rounded_absmax
  // kInt8: codes i8 [out, in], row absmax f32 [out], weight_format u8 [] (0 = "row").
  TensorView codes_, row_absmax_, weight_format_;
  std::vector<std::int32_t> code_row_sums_;  // [out]; host weights only (the VNNI kernel's)
  // Storage behind views this weight made itself; shared by copies that to_device() leaves
  // where they are (the host metadata).
  std::vector<std::shared_ptr<Tensor>> owned_;
};

}  // namespace kbit::model
