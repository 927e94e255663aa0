#include "model/linear_weight.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "kbit/core/convert.h"
#include "kbit/core/device.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/int8_rowwise.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cpu/element_access.h"
#include "kernels/cpu/llama_ops.h"
#include "kernels/cpu/quantized_linear.h"

namespace kbit::model {
namespace {

namespace k = kbit::kernels::cpu;

// The code table bitsandbytes stores as weight.quant_map: its FP4 table has +0.0 for code 8,
// where its CUDA kernels (and kFp4Values) decode -0.0 (spec 12.6).
std::array<float, 16> stored_quant_map(quant::FourBitType type) {
  if (type == quant::FourBitType::kNf4) return quant::kNf4Values;
  std::array<float, 16> map = quant::kFp4Values;
  map[8] = 0.0f;
  return map;
}

Status check_float_weight(const TensorView& weight, const std::string& name) {
  if (!is_floating(weight.dtype()) || weight.rank() != 2 || !weight.is_contiguous()) {
    return invalid_argument("tensor '" + name +
                            "': a Linear weight to quantize must be a contiguous f32, f16 or "
                            "bf16 [out, in] tensor, got " +
                            weight.describe());
  }
  return ok_status();
}

std::shared_ptr<Tensor> shared(Tensor tensor) {
  return std::make_shared<Tensor>(std::move(tensor));
}

// An owned tensor holding a copy of `values`.
template <typename T>
Result<Tensor> tensor_of(const T* values, Shape shape, DType dtype) {
  KBIT_ASSIGN_OR_RETURN(Tensor tensor, Tensor::empty(shape, dtype));
  std::memcpy(tensor.view().data(), values, tensor.nbytes());
  return tensor;
}

// Fetches `name` and checks its dtype and element count (bitsandbytes' shapes vary: [n/2, 1] or
// [n/2] for the packed codes).
Result<TensorView> expect_tensor(const io::Checkpoint& checkpoint, const std::string& name,
                                 DType dtype, std::int64_t numel, const std::string& why) {
  Result<TensorView> tensor = checkpoint.tensor(name);
  if (!tensor.ok()) {
    return not_found("tensor '" + name + "' is missing: " + why +
                     " (is the checkpoint complete, and was it saved by bitsandbytes?)");
  }
  if (tensor->dtype() != dtype || tensor->numel() != numel) {
    return invalid_argument("tensor '" + name + "' is " + tensor->describe() + " but must be " +
                            std::string(dtype_name(dtype)) + " with " + std::to_string(numel) +
                            " elements: " + why);
  }
  return tensor;
}

// The float values of `table` must equal `expected` (as numbers: +0.0 equals -0.0).
template <std::size_t N>
Status expect_table(const TensorView& table, const std::array<float, N>& expected,
                    const std::string& name) {
  const float* values = table.data_as<const float>();
  for (std::size_t i = 0; i < N; ++i) {
    if (!(values[i] == expected[i])) {
      return invalid_argument("tensor '" + name + "' entry " + std::to_string(i) + " is " +
                              std::to_string(values[i]) + " but bitsandbytes' table has " +
                              std::to_string(expected[i]) +
                              "; kbit computes with the standard tables only");
    }
  }
  return ok_status();
}

Status check_4bit_layout(std::int64_t in_features, std::int64_t block_size,
                         const std::string& name) {
  if (!quant::is_valid_4bit_block_size(block_size)) {
    return invalid_argument("tensor '" + name + "': block size " + std::to_string(block_size) +
                            " is not one of 32, 64, 128, ..., 4096");
  }
  if (!k::is_supported_4bit_layout(in_features, block_size)) {
    return invalid_argument("tensor '" + name + "': block size " + std::to_string(block_size) +
                            " neither divides its " + std::to_string(in_features) +
                            " input features nor is a multiple of them, so blocks would "
                            "straddle rows; choose a block size that divides " +
                            std::to_string(in_features) + " (e.g. --blocksize 64)");
  }
  return ok_status();
}

}  // namespace

LinearWeight LinearWeight::float_view(const TensorView& weight) {
  LinearWeight linear;
  linear.format_ = LinearFormat::kFloat;
  linear.device_ = weight.device();
  linear.out_features_ = weight.shape()[0];
  linear.in_features_ = weight.shape()[1];
  linear.float_weight_ = weight;
  return linear;
}

Result<LinearWeight> LinearWeight::float_rounded_to_bf16(const TensorView& weight) {
  KBIT_ASSIGN_OR_RETURN(Tensor rounded, Tensor::empty(weight.shape(), DType::kBF16));
  KBIT_RETURN_IF_ERROR(convert_tensor(weight, rounded.view()));
  LinearWeight linear = float_view(rounded.view());
  linear.owned_.push_back(shared(std::move(rounded)));
  return linear;
}

LinearWeight LinearWeight::float_owned(Tensor weight) {
  LinearWeight linear = float_view(weight.view());
  linear.device_ = weight.device();
  linear.owned_.push_back(shared(std::move(weight)));
  return linear;
}

Result<LinearWeight> LinearWeight::quantize(const TensorView& weight,
                                            const QuantizeOptions& options, const std::string& name,
                                            const ExecutionOptions& execution) {
  const io::BnbQuantizationConfig& q = options.config;
  if (q.mode == io::BnbQuantMode::kInt8) return quantize_int8(weight, name, execution);
  return quantize_4bit(weight, FourBitFormat{q.four_bit_type, q.double_quant, options.block_size},
                       name, execution);
}

Result<LinearWeight> LinearWeight::quantize_4bit(const TensorView& weight,
                                                 const FourBitFormat& format,
                                                 const std::string& name,
                                                 const ExecutionOptions& execution) {
  KBIT_RETURN_IF_ERROR(check_float_weight(weight, name));
  LinearWeight linear;
  linear.format_ = LinearFormat::kFourBit;
  linear.device_ = weight.device();
  linear.out_features_ = weight.shape()[0];
  linear.in_features_ = weight.shape()[1];
  KBIT_RETURN_IF_ERROR(check_4bit_layout(linear.in_features_, format.block_size, name));
  const std::int64_t n = weight.numel();
  const std::int64_t blocks = quant::block_count(n, format.block_size);
  const Device device = weight.device();
  KBIT_ASSIGN_OR_RETURN(Tensor packed,
                        Tensor::empty({quant::packed_4bit_bytes(n), 1}, DType::kU8, device));
  KBIT_ASSIGN_OR_RETURN(Tensor absmax, Tensor::empty({blocks}, DType::kF32, device));
  const Status quantized = quant::quantize_4bit(weight, format.type, format.block_size,
                                                packed.view(), absmax.view(), execution);
  if (!quantized.ok()) return quantized.with_context("tensor '" + name + "'");

  linear.quant_state_ =
      io::QuantState{format.type, format.block_size, weight.dtype(), weight.shape(), std::nullopt};
  if (format.double_quant) {
    KBIT_ASSIGN_OR_RETURN(Tensor codes, Tensor::empty({blocks}, DType::kU8, device));
    KBIT_ASSIGN_OR_RETURN(
        Tensor nested,
        Tensor::empty({quant::block_count(blocks, quant::kNestedBlockSize)}, DType::kF32, device));
    float offset = 0;
    KBIT_RETURN_IF_ERROR(quant::quantize_absmax_nested(absmax.view(), codes.view(), nested.view(),
                                                       &offset, execution));
    linear.quant_state_.nested = io::NestedQuantState{quant::kNestedBlockSize, offset};
    KBIT_ASSIGN_OR_RETURN(Tensor nested_map,
                          tensor_of(quant::kDynamicSignedMap.data(), {256}, DType::kF32));
    linear.nested_absmax_ = nested.view();
    linear.nested_quant_map_ = nested_map.view();
    absmax = std::move(codes);
    linear.owned_.push_back(shared(std::move(nested)));
    linear.owned_.push_back(shared(std::move(nested_map)));
  }
  const std::array<float, 16> map = stored_quant_map(format.type);
  KBIT_ASSIGN_OR_RETURN(Tensor quant_map, tensor_of(map.data(), {16}, DType::kF32));
  KBIT_ASSIGN_OR_RETURN(const std::string blob, io::serialize_quant_state(linear.quant_state_));
  KBIT_ASSIGN_OR_RETURN(
      Tensor blob_tensor,
      tensor_of(blob.data(), {static_cast<std::int64_t>(blob.size())}, DType::kU8));
  linear.packed_ = packed.view();
  linear.absmax_ = absmax.view();
  linear.quant_map_ = quant_map.view();
  linear.quant_state_blob_ = blob_tensor.view();
  for (Tensor* owned : {&packed, &absmax, &quant_map, &blob_tensor}) {
    linear.owned_.push_back(shared(std::move(*owned)));
  }
  return linear;
}

Result<LinearWeight> LinearWeight::quantize_int8(const TensorView& weight, const std::string& name,
                                                 const ExecutionOptions& execution) {
  KBIT_RETURN_IF_ERROR(check_float_weight(weight, name));
  LinearWeight linear;
  linear.format_ = LinearFormat::kInt8;
  linear.device_ = weight.device();
  linear.out_features_ = weight.shape()[0];
  linear.in_features_ = weight.shape()[1];
  KBIT_ASSIGN_OR_RETURN(Tensor codes, Tensor::empty(weight.shape(), DType::kI8, linear.device_));
  KBIT_ASSIGN_OR_RETURN(Tensor row_absmax,
                        Tensor::empty({linear.out_features_}, DType::kF32, linear.device_));
  const Status quantized = quant::quantize_int8_rowwise(weight, 0.0f, codes.view(),
                                                        row_absmax.view(), nullptr, execution);
  if (!quantized.ok()) return quantized.with_context("tensor '" + name + "'");
  const std::uint8_t row_format = 0;
  KBIT_ASSIGN_OR_RETURN(Tensor weight_format, tensor_of(&row_format, Shape{}, DType::kU8));
  linear.codes_ = codes.view();
  linear.row_absmax_ = row_absmax.view();
  linear.weight_format_ = weight_format.view();
  for (Tensor* owned : {&codes, &row_absmax, &weight_format}) {
    linear.owned_.push_back(shared(std::move(*owned)));
  }
  if (linear.device_.is_cpu()) {
    linear.code_row_sums_.resize(static_cast<std::size_t>(linear.out_features_));
    k::int8_code_row_sums(linear.codes_.data_as<const std::int8_t>(), linear.out_features_,
                          linear.in_features_, linear.code_row_sums_.data());
  }
  return linear;
}

Result<LinearWeight> LinearWeight::read_4bit(const io::Checkpoint& checkpoint,
                                             const std::string& prefix, std::int64_t out_features,
                                             std::int64_t in_features,
                                             const FourBitFormat& expected) {
  const std::string w = prefix + ".weight";
  const std::string type_name(quant::four_bit_type_name(expected.type));
  const std::string blob_name = w + ".quant_state." + io::quant_state_key_suffix(expected.type);
  const std::string why_blob = "the quantization_config says " + type_name +
                               ", so bitsandbytes "
                               "writes this blob for every 4-bit Linear";
  Result<TensorView> blob = checkpoint.tensor(blob_name);
  if (!blob.ok() || blob->dtype() != DType::kU8 || blob->rank() != 1) {
    return not_found("tensor '" + blob_name +
                     "' (U8, the QuantState JSON) is missing or not "
                     "U8: " +
                     why_blob);
  }
  Result<io::QuantState> state = io::parse_quant_state(
      std::string_view(blob->data_as<const char>(), static_cast<std::size_t>(blob->numel())));
  if (!state.ok()) return state.status().with_context("tensor '" + blob_name + "'");
  const Shape shape{out_features, in_features};
  if (state->type != expected.type || !(state->shape == shape) ||
      state->nested.has_value() != expected.double_quant) {
    return invalid_argument(
        "tensor '" + blob_name + "' describes a " +
        std::string(quant::four_bit_type_name(state->type)) + " weight of shape " +
        state->shape.to_string() + (state->nested ? " with" : " without") +
        " double quantization, but config.json implies " + type_name + " " + shape.to_string() +
        (expected.double_quant ? " with" : " without") + " it; the files do not belong together");
  }
  if (!is_floating(state->dtype)) {
    return invalid_argument("tensor '" + blob_name + "': dtype " +
                            std::string(dtype_name(state->dtype)) + " is not a float dtype");
  }
  if (state->nested && state->nested->blocksize != quant::kNestedBlockSize) {
    return unimplemented("tensor '" + blob_name + "': nested_blocksize " +
                         std::to_string(state->nested->blocksize) +
                         " is not supported; bitsandbytes always writes 256");
  }
  KBIT_RETURN_IF_ERROR(check_4bit_layout(in_features, state->blocksize, w));

  LinearWeight linear;
  linear.format_ = LinearFormat::kFourBit;
  linear.out_features_ = out_features;
  linear.in_features_ = in_features;
  linear.quant_state_ = *state;
  linear.quant_state_blob_ = *blob;
  const std::int64_t n = out_features * in_features;
  const std::int64_t blocks = quant::block_count(n, state->blocksize);
  KBIT_ASSIGN_OR_RETURN(linear.packed_,
                        expect_tensor(checkpoint, w, DType::kU8, quant::packed_4bit_bytes(n),
                                      "the packed 4-bit codes"));
  KBIT_ASSIGN_OR_RETURN(linear.quant_map_, expect_tensor(checkpoint, w + ".quant_map", DType::kF32,
                                                         16, "the 4-bit code table"));
  KBIT_RETURN_IF_ERROR(
      expect_table(linear.quant_map_, stored_quant_map(state->type), w + ".quant_map"));
  if (state->nested) {
    KBIT_ASSIGN_OR_RETURN(linear.absmax_,
                          expect_tensor(checkpoint, w + ".absmax", DType::kU8, blocks,
                                        "double quantization stores one 8-bit code per block"));
    KBIT_ASSIGN_OR_RETURN(linear.nested_absmax_,
                          expect_tensor(checkpoint, w + ".nested_absmax", DType::kF32,
                                        quant::block_count(blocks, quant::kNestedBlockSize),
                                        "double quantization stores one scale per 256 blocks"));
    KBIT_ASSIGN_OR_RETURN(linear.nested_quant_map_,
                          expect_tensor(checkpoint, w + ".nested_quant_map", DType::kF32, 256,
                                        "the 8-bit code table of double quantization"));
    KBIT_RETURN_IF_ERROR(
        expect_table(linear.nested_quant_map_, quant::kDynamicSignedMap, w + ".nested_quant_map"));
  } else {
    KBIT_ASSIGN_OR_RETURN(linear.absmax_, expect_tensor(checkpoint, w + ".absmax", DType::kF32,
                                                        blocks, "one f32 scale per block"));
  }
  return linear;
}

Result<LinearWeight> LinearWeight::read_int8(const io::Checkpoint& checkpoint,
                                             const std::string& prefix, std::int64_t out_features,
                                             std::int64_t in_features) {
  LinearWeight linear;
  linear.format_ = LinearFormat::kInt8;
  linear.out_features_ = out_features;
  linear.in_features_ = in_features;
  KBIT_ASSIGN_OR_RETURN(
      linear.codes_,
      expect_tensor(checkpoint, prefix + ".weight", DType::kI8, out_features * in_features,
                    "an 8-bit Linear stores its weight as int8 [out, in]"));
  if (!(linear.codes_.shape() == Shape{out_features, in_features})) {
    return invalid_argument("tensor '" + prefix + ".weight' has shape " +
                            linear.codes_.shape().to_string() + " but config.json implies " +
                            Shape{out_features, in_features}.to_string());
  }
  KBIT_ASSIGN_OR_RETURN(linear.row_absmax_,
                        expect_tensor(checkpoint, prefix + ".SCB", DType::kF32, out_features,
                                      "an int8 weight needs its row scales (SCB) to be read"));
  const std::string format_name = prefix + ".weight_format";
  if (checkpoint.contains(format_name)) {
    KBIT_ASSIGN_OR_RETURN(linear.weight_format_, expect_tensor(checkpoint, format_name, DType::kU8,
                                                               1, "the int8 weight layout code"));
    const std::uint8_t code = *linear.weight_format_.data_as<const std::uint8_t>();
    if (code != 0) {
      return unimplemented("tensor '" + format_name + "' is " + std::to_string(code) +
                           " (a GPU-specific tiled layout); only 0 (\"row\") is readable, as in "
                           "current bitsandbytes: save the model again with bitsandbytes >= "
                           "0.43.1");
    }
  }
  linear.code_row_sums_.resize(static_cast<std::size_t>(out_features));
  k::int8_code_row_sums(linear.codes_.data_as<const std::int8_t>(), out_features, in_features,
                        linear.code_row_sums_.data());
  return linear;
}

Result<TensorView> LinearWeight::copied_to(const TensorView& source, const Device& device,
                                           const TensorCopier& copier) {
  if (source.data() == nullptr || source.device() == device) return source;
  Tensor copy;
  if (copier) {
    KBIT_ASSIGN_OR_RETURN(copy, copier(source));
  } else {
    KBIT_ASSIGN_OR_RETURN(copy, Tensor::empty(source.shape(), source.dtype(), device));
    KBIT_RETURN_IF_ERROR(copy_tensor(source, copy.view()));
  }
  const TensorView view = copy.view();
  owned_.push_back(shared(std::move(copy)));
  return view;
}

Result<LinearWeight> LinearWeight::to_device(const Device& device,
                                             const TensorCopier& copier) const {
  LinearWeight copy;
  copy.format_ = format_;
  copy.device_ = device;
  copy.out_features_ = out_features_;
  copy.in_features_ = in_features_;
  copy.quant_state_ = quant_state_;
  copy.quant_map_ = quant_map_;
  copy.nested_quant_map_ = nested_quant_map_;
  copy.quant_state_blob_ = quant_state_blob_;
  copy.weight_format_ = weight_format_;
  // The host metadata may be views into tensors this weight owns: share those.
  for (const std::shared_ptr<Tensor>& tensor : owned_) {
    for (const TensorView* metadata :
         {&quant_map_, &nested_quant_map_, &quant_state_blob_, &weight_format_}) {
      if (tensor->view().data() == metadata->data()) copy.owned_.push_back(tensor);
    }
  }
  for (auto [from, to] : {std::pair{&float_weight_, &copy.float_weight_},
                          {&packed_, &copy.packed_},
                          {&absmax_, &copy.absmax_},
                          {&nested_absmax_, &copy.nested_absmax_},
                          {&codes_, &copy.codes_},
                          {&row_absmax_, &copy.row_absmax_}}) {
    KBIT_ASSIGN_OR_RETURN(*to, copy.copied_to(*from, device, copier));
    // A view already on `device` may be one of ours: share its storage.
    for (const std::shared_ptr<Tensor>& tensor : owned_) {
      if (from->data() != nullptr && tensor->view().data() == from->data() &&
          from->device() == device) {
        copy.owned_.push_back(tensor);
      }
    }
  }
  copy.layout_ = layout_;
  if (layout_ == quant::FourBitLayout::kDecodeTiles && !device.is_cuda()) {
    // Host weights keep bitsandbytes' layout (what the CPU kernels and the writers read).
    KBIT_RETURN_IF_ERROR(copy.move_to_layout(quant::FourBitLayout::kBitsandbytes, {}));
  }
  if (format_ == LinearFormat::kInt8 && device.is_cpu()) {
    copy.code_row_sums_.resize(static_cast<std::size_t>(out_features_));
    k::int8_code_row_sums(copy.codes_.data_as<const std::int8_t>(), out_features_, in_features_,
                          copy.code_row_sums_.data());
  }
  return copy;
}

Status LinearWeight::to_decode_tiles(const ExecutionOptions& execution) {
  if (format_ != LinearFormat::kFourBit || !device_.is_cuda() ||
      layout_ == quant::FourBitLayout::kDecodeTiles ||
      !quant::decode_tiles_apply(out_features_, in_features_, quant_state_.blocksize)) {
    return ok_status();
  }
  return move_to_layout(quant::FourBitLayout::kDecodeTiles, execution);
}

void LinearWeight::set_rounded_absmax(Tensor rounded) {
  rounded_absmax_ = rounded.view();
  owned_.push_back(shared(std::move(rounded)));
}

Status LinearWeight::move_to_layout(quant::FourBitLayout layout,
                                    const ExecutionOptions& execution) {
  KBIT_ASSIGN_OR_RETURN(Tensor packed, Tensor::empty(packed_.shape(), DType::kU8, device_));
  KBIT_ASSIGN_OR_RETURN(Tensor absmax, Tensor::empty(absmax_.shape(), absmax_.dtype(), device_));
  KBIT_RETURN_IF_ERROR(
      layout == quant::FourBitLayout::kDecodeTiles
          ? quant::tile_4bit_for_decode(packed_, absmax_, out_features_, in_features_,
                                        packed.view(), absmax.view(), execution)
          : quant::untile_4bit_for_decode(packed_, absmax_, out_features_, in_features_,
                                          packed.view(), absmax.view(), execution));
  if (device_.is_cuda()) KBIT_RETURN_IF_ERROR(synchronize(device_));
  std::erase_if(owned_, [&](const std::shared_ptr<Tensor>& tensor) {
    return tensor->view().data() == packed_.data() || tensor->view().data() == absmax_.data() ||
           tensor->view().data() == rounded_absmax_.data();
  });
  rounded_absmax_ = TensorView();
  packed_ = packed.view();
  absmax_ = absmax.view();
  owned_.push_back(shared(std::move(packed)));
  owned_.push_back(shared(std::move(absmax)));
  layout_ = layout;
  return ok_status();
}

std::vector<io::NamedTensor> LinearWeight::state_dict(const std::string& prefix) const {
  const std::string w = prefix + ".weight";
  switch (format_) {
    case LinearFormat::kFloat:
      return {{w, float_weight_}};
    case LinearFormat::kInt8: {
      std::vector<io::NamedTensor> entries = {{w, codes_}, {prefix + ".SCB", row_absmax_}};
      if (weight_format_.data() != nullptr) {
        entries.push_back({prefix + ".weight_format", weight_format_});
      }
      return entries;
    }
    case LinearFormat::kFourBit: {
      std::vector<io::NamedTensor> entries = {
          {w, packed_}, {w + ".absmax", absmax_}, {w + ".quant_map", quant_map_}};
      if (quant_state_.nested) {
        entries.push_back({w + ".nested_absmax", nested_absmax_});
        entries.push_back({w + ".nested_quant_map", nested_quant_map_});
      }
      entries.push_back(
          {w + ".quant_state." + io::quant_state_key_suffix(quant_state_.type), quant_state_blob_});
      return entries;
    }
  }
  return {};
}

std::size_t LinearWeight::nbytes() const {
  std::size_t total = code_row_sums_.size() * sizeof(std::int32_t);
  for (const TensorView* view : {&float_weight_, &packed_, &absmax_, &nested_absmax_,
                                 &rounded_absmax_, &codes_, &row_absmax_}) {
    if (view->data() != nullptr) total += view->nbytes();
  }
  return total;
}

std::size_t LinearWeight::parameter_bytes() const {
  switch (format_) {
    case LinearFormat::kFloat:
      return float_weight_.nbytes();
    case LinearFormat::kFourBit:
      return packed_.nbytes();
    case LinearFormat::kInt8:
      return codes_.nbytes();
  }
  return 0;
}

k::FourBitWeight LinearWeight::four_bit_weight() const {
  const bool nested = quant_state_.nested.has_value();
  return k::FourBitWeight{packed_.data_as<const std::uint8_t>(),
                          quant_state_.type,
                          quant_state_.blocksize,
                          nested ? nullptr : absmax_.data_as<const float>(),
                          nested ? absmax_.data_as<const std::uint8_t>() : nullptr,
                          nested ? nested_absmax_.data_as<const float>() : nullptr,
                          nested ? quant_state_.nested->offset : 0.0f,
                          quant_state_.dtype};
}

void LinearWeight::forward(const float* x, std::int64_t rows, const float* bias,
                           const LinearNumerics& numerics, float* y,
                           const ExecutionOptions& execution) const {
  const bool bf16_activations = numerics.activation_dtype == DType::kBF16;
  switch (format_) {
    case LinearFormat::kFloat: {
      const k::LinearJob job{
          x, float_weight_.data(), float_weight_.dtype(), bias, rows, in_features_, out_features_,
          y, bf16_activations};
      k::linear_op(job, execution);
      return;
    }
    case LinearFormat::kFourBit: {
      const k::Linear4bitJob job{
          x, four_bit_weight(), bias, rows, in_features_, out_features_, numerics.compute_dtype, y};
      k::linear_4bit_op(job, execution);
      // Linear4bit returns its output cast back to the input's dtype.
      if (bf16_activations && numerics.compute_dtype != DType::kBF16) {
        k::round_to_bf16(y, rows * out_features_);
      }
      return;
    }
    case LinearFormat::kInt8: {
      const k::Int8Weight weight{codes_.data_as<const std::int8_t>(),
                                 row_absmax_.data_as<const float>(), code_row_sums_.data()};
      const k::LinearInt8Job job{x,
                                 weight,
                                 bias,
                                 numerics.activation_dtype,
                                 rows,
                                 in_features_,
                                 out_features_,
                                 numerics.int8_threshold,
                                 numerics.activation_dtype,
                                 y};
      k::linear_int8_op(job, execution);
      return;
    }
  }
}

}  // namespace kbit::model
