#include "model/cuda/llama_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/cuda_runtime.h"
#include "kbit/core/allocator.h"
#include "kbit/model/rope.h"
#include "kernels/cuda/int8_quantized_row.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "model/cuda/device_linear.h"

namespace kbit::model {

namespace kc = kbit::kernels::cuda;

// Everything one batch of sequences needs on the device. Buffers of activations hold
// kPrefillChunkTokens rows (a prompt chunk of one sequence, or one token of each sequence).
struct KvCache::DeviceState {
  Device device;
  cudaStream_t stream = nullptr;
  std::unique_ptr<kc::LinearContext> linear;
  std::int64_t batch = 1;
  std::int64_t capacity = 0;
  std::int64_t rows = 0;        // rows of the activation buffers
  Tensor keys, values;          // [layers, batch, capacity, kv_heads, head_dim]
  Tensor hidden, normed, proj;  // [rows, hidden]
  Tensor q, attn;               // [rows, heads · head_dim]
  Tensor k, v;                  // [rows, kv_heads · head_dim]
  Tensor gate, up;              // [rows, intermediate]
  Tensor logits_act;            // [kLogitChunkRows, vocab] in the activation dtype
  Tensor logits;                // [kLogitChunkRows, vocab] f32
  Tensor token_ids;             // i32 [rows]
  Tensor position;              // i32 [1]: the position of the step's first token
  Tensor inv_freq;              // f32 [head_dim / 2]
  Tensor attention_workspace;   // f32
  // u8: a decode row of `normed` quantized for the int8 layers that read it
  // (int8_quantized_row.h); made for a model with int8 layers whose hidden size add_rms_norm can
  // quantize (a multiple of 16, at most kMaxInt8QuantizedNormCols).
  Tensor normed_int8;
  // The LoRA terms' f32 scratch, made when the model has adapters: [rows, widest in], [rows,
  // largest rank] and [rows, widest out] of the Linears with terms, rows those of the
  // activations or of a logit chunk, whichever is more.
  Tensor lora_input, lora_hidden, lora_term;
  std::vector<float> uploaded_inv_freq;  // what inv_freq holds
  // The captured one-token step of `graph_batch` sequences.
  cudaGraphExec_t graph = nullptr;
  std::int64_t graph_batch = 0;

  ~DeviceState() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    if (graph != nullptr) cudaGraphExecDestroy(graph);
    linear.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

namespace cuda {
namespace {

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(error, what);
}

std::string gib_text(std::size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return text;
}

// The widest input and output and the largest rank among the Linears with LoRA terms (all 0
// without adapters).
struct LoraWidths {
  std::int64_t in = 0, out = 0, rank = 0;
};

LoraWidths lora_widths(const DeviceWeights& weights) {
  LoraWidths widths;
  const auto visit = [&](const DeviceLinear& linear) {
    for (const DeviceLoraTerm& term : linear.lora) {
      widths.in = std::max(widths.in, linear.weight.in_features());
      widths.out = std::max(widths.out, linear.weight.out_features());
      widths.rank = std::max(widths.rank, term.a.shape()[0]);
    }
  };
  visit(weights.lm_head);
  for (const DeviceLayer& layer : weights.layers) {
    for (const DeviceLinear* linear : layer.linears()) visit(*linear);
  }
  return widths;
}

bool has_int8_layers(const DeviceWeights& weights) {
  for (const DeviceLayer& layer : weights.layers) {
    for (const DeviceLinear* linear : layer.linears()) {
      if (linear->weight.format() == LinearFormat::kInt8) return true;
    }
  }
  return false;
}

void* row_pointer(const Tensor& tensor, std::int64_t row, std::int64_t row_elements) {
  return static_cast<std::byte*>(tensor.view().data()) +
         static_cast<std::size_t>(row * row_elements) * dtype_size(tensor.dtype());
}

// A float layer's weight as linear_float_layers takes it.
const void* float_weight_data(const LinearWeight& weight) {
  return weight.float_weight().data();
}

// The layers of one fused launch: kc::FloatLayer, kc::FourBitLayer or kc::Int8Layer.
template <typename Layer>
struct FusedLayers {
  std::array<Layer, kc::kMaxFusedLayers> layers{};
  std::size_t count = 0;
  std::span<const Layer> span() const { return {layers.data(), count}; }
};

// `layers` as Layer, each with its weight as weight_device(layer->weight) gives it, its bias
// and its output ys[i].
template <typename Layer, typename WeightDevice>
FusedLayers<Layer> fused_layers(std::initializer_list<const DeviceLinear*> layers,
                                std::initializer_list<void*> ys, WeightDevice weight_device) {
  FusedLayers<Layer> fused;
  auto y = ys.begin();
  for (const DeviceLinear* layer : layers) {
    const void* bias = layer->bias.numel() > 0 ? layer->bias.view().data() : nullptr;
    fused.layers.at(fused.count++) = {weight_device(layer->weight), bias,
                                      layer->weight.out_features(), *y++};
  }
  return fused;
}

// Gives each 4-bit weight in the decode tiles with a nested absmax its absmax rounded to the
// compute dtype (LinearWeight::set_rounded_absmax), which the decode steps' GEMVs then read instead
// of decoding the nested form: the same bits, 2 bytes a block of 64 more memory, nf4_dq decode 12%
// faster (BENCHMARKS.md, twenty-second session). A plain absmax gains nothing from it (its f32
// load is no slower than the 2-byte one), nor do other compute dtypes (no product decode).
Status round_nested_absmax(DeviceWeights& weights, DType compute_dtype) {
  if (compute_dtype != DType::kBF16 && compute_dtype != DType::kF16) return ok_status();
  for (DeviceLayer& layer : weights.layers) {
    for (DeviceLinear* linear : layer.linears()) {
      LinearWeight& w = linear->weight;
      if (w.format() != LinearFormat::kFourBit ||
          w.layout() != quant::FourBitLayout::kDecodeTiles || !w.quant_state().nested) {
        continue;
      }
      Result<Tensor> made = Tensor::empty(w.absmax().shape(), compute_dtype, w.device());
      if (!made.ok()) {
        return made.status().with_context(
            "keeping the double-quantized weights' absmax rounded for decoding (2 bytes a block "
            "of 64 values); --lean-double-quant loads without it");
      }
      Tensor rounded = std::move(made).value();
      KBIT_RETURN_IF_ERROR(kc::round_4bit_absmax(four_bit_weight_device(w), w.out_features(),
                                                 w.in_features(), compute_dtype,
                                                 rounded.view().data(), nullptr));
      w.set_rounded_absmax(std::move(rounded));
    }
  }
  return cuda_status(cudaDeviceSynchronize(), "round_4bit_absmax");
}

}  // namespace

struct CudaLlama::Impl {
  LlamaConfig config;
  Device device;
  LinearNumerics numerics;
  DeviceWeights weights;
  std::int64_t window = 0;
  float attention_scale = 1.0f;

  DType dtype() const { return numerics.activation_dtype; }

  // y [rows, out] = layer(x [rows, in]) with its LoRA terms.
  Status linear(KvCache::DeviceState& s, const DeviceLinear& layer, const void* x,
                std::int64_t rows, void* y) const {
    // Decode steps decode the weights as bitsandbytes' batch-1 kernel does.
    KBIT_RETURN_IF_ERROR(device_linear_forward(*s.linear, layer, numerics, x, rows, y,
                                               kernels::cpu::FourBitDecode::kBitsandbytes));
    const kc::LoraShape shape{rows, layer.weight.in_features(), layer.weight.out_features()};
    for (const DeviceLoraTerm& term : layer.lora) {
      KBIT_RETURN_IF_ERROR(kc::lora_forward(
          *s.linear, lora_adapter_on(layer, term.a, term.b, term.scaling), shape, x, nullptr,
          dtype(),
          {s.lora_input.view().data(), s.lora_hidden.view().data(), s.lora_term.data_as<float>()},
          y));
    }
    return ok_status();
  }

  // Whether layers of the same x run in one call: all of one format, without LoRA terms.
  static bool fusable(std::initializer_list<const DeviceLinear*> layers) {
    const LinearFormat format = (*layers.begin())->weight.format();
    return std::all_of(layers.begin(), layers.end(), [&](const DeviceLinear* layer) {
      return layer->weight.format() == format && layer->lora.empty();
    });
  }

  // For one row of `normed` that `layers` read in one int8 call: where its norm quantizes it for
  // them (s.normed_int8), so that their GEMV's blocks need not; else nullopt.
  std::optional<kc::Int8QuantizedRow> int8_normed_row(
      KvCache::DeviceState& s, std::initializer_list<const DeviceLinear*> layers,
      std::int64_t rows) const {
    if (rows != 1 || s.normed_int8.numel() == 0 || !fusable(layers) ||
        (*layers.begin())->weight.format() != LinearFormat::kInt8) {
      return std::nullopt;
    }
    return kc::int8_quantized_row_in(s.normed_int8.view().data(), config.hidden_size);
  }

  // Layers of the same x (q, k and v; gate and up), ys[i] = layers[i](x): in one call where
  // fusable (linear_float_layers, linear_4bit_layers, linear_int8_layers, which reads x's
  // quantization where `quantized_x` has it), else one call each. With kSiluMul (gate, up),
  // ys[0] = silu_mul(gate, up) and ys[1] is scratch.
  Status linears(KvCache::DeviceState& s, std::initializer_list<const DeviceLinear*> layers,
                 const void* x, std::int64_t rows, std::initializer_list<void*> ys,
                 kc::LinearEpilogue epilogue = kc::LinearEpilogue::kStore,
                 const std::optional<kc::Int8QuantizedRow>& quantized_x = std::nullopt) const {
    const DeviceLinear& first = **layers.begin();
    const LinearFormat format = first.weight.format();
    const bool one_call = fusable(layers);
    const std::int64_t in = first.weight.in_features();
    if (one_call && format == LinearFormat::kFloat) {
      const auto float_layers = fused_layers<kc::FloatLayer>(layers, ys, float_weight_data);
      return kc::linear_float_layers(*s.linear, x, float_layers.span(), rows, in, dtype(),
                                     epilogue);
    }
    if (one_call && format == LinearFormat::kFourBit) {
      const auto four_bit = fused_layers<kc::FourBitLayer>(layers, ys, four_bit_weight_device);
      return kc::linear_4bit_layers(*s.linear, x, four_bit.span(), rows, in, numerics.compute_dtype,
                                    dtype(), kernels::cpu::FourBitDecode::kBitsandbytes, epilogue);
    }
    if (one_call && format == LinearFormat::kInt8) {
      const auto int8 = fused_layers<kc::Int8Layer>(layers, ys, int8_weight_device);
      return kc::linear_int8_layers(*s.linear, x, int8.span(), rows, in, numerics.int8_threshold,
                                    dtype(), epilogue, quantized_x ? &*quantized_x : nullptr);
    }
    auto y = ys.begin();
    for (const DeviceLinear* layer : layers) KBIT_RETURN_IF_ERROR(linear(s, *layer, x, rows, *y++));
    if (epilogue == kc::LinearEpilogue::kStore) return ok_status();
    const std::int64_t count = rows * first.weight.out_features();
    return cuda_status(kc::silu_mul(*ys.begin(), *(ys.begin() + 1), count, dtype(), s.stream),
                       "silu_mul");
  }

  // hidden (+= delta) and normed = rms_norm(hidden) · weight over `rows` rows, and where
  // `quantized` says so (int8_normed_row), normed's one row quantized for the int8 layers.
  Status add_norm(KvCache::DeviceState& s, bool add_delta, const Tensor& weight, std::int64_t rows,
                  const std::optional<kc::Int8QuantizedRow>& quantized = std::nullopt) const {
    return cuda_status(
        kc::add_rms_norm(s.hidden.view().data(), add_delta ? s.proj.view().data() : nullptr,
                         weight.data_as<const float>(), rows, config.hidden_size,
                         static_cast<float>(config.rms_norm_eps), s.normed.view().data(), dtype(),
                         s.stream, quantized ? &*quantized : nullptr, numerics.int8_threshold),
        "add_rms_norm");
  }

  // The attention block of layer l for `sequences` sequences of `per_sequence` rows each, the
  // first being sequence `first_sequence` of the cache: for one token per sequence (decode), RoPE,
  // the cache append and attention in one call for all sequences; otherwise RoPE and the cache
  // append in one call, then attention one call per sequence.
  Status attention(KvCache::DeviceState& s, std::size_t l, std::int64_t first_sequence,
                   std::int64_t sequences, std::int64_t per_sequence) const {
    const LlamaConfig& c = config;
    const std::int64_t q_width = c.num_attention_heads * c.head_dim;
    const std::int64_t kv_width = c.num_key_value_heads * c.head_dim;
    const std::int64_t first_cache_row =
        (static_cast<std::int64_t>(l) * s.batch + first_sequence) * s.capacity;
    void* k_cache = row_pointer(s.keys, first_cache_row, kv_width);
    void* v_cache = row_pointer(s.values, first_cache_row, kv_width);
    const kc::RopeAppendJob rope{s.q.view().data(),
                                 s.k.view().data(),
                                 s.v.view().data(),
                                 sequences * per_sequence,
                                 c.num_attention_heads,
                                 c.num_key_value_heads,
                                 c.head_dim,
                                 s.position.data_as<const std::int32_t>(),
                                 s.inv_freq.data_as<const float>(),
                                 k_cache,
                                 v_cache,
                                 dtype(),
                                 s.capacity,
                                 sequences};
    // Sequence b's attention: its queries (all sequences' at once for a decode) over its cache.
    const auto attention_job = [&](std::int64_t b, std::int64_t count) {
      const std::int64_t row = b * per_sequence;
      const std::int64_t cache_row = first_cache_row + b * s.capacity;
      return kc::AttentionJob{row_pointer(s.q, row, q_width),
                              row_pointer(s.keys, cache_row, kv_width),
                              row_pointer(s.values, cache_row, kv_width),
                              per_sequence,
                              c.num_attention_heads,
                              c.num_key_value_heads,
                              c.head_dim,
                              s.position.data_as<const std::int32_t>(),
                              s.capacity,
                              window,
                              attention_scale,
                              row_pointer(s.attn, row, q_width),
                              dtype(),
                              s.attention_workspace.data_as<float>(),
                              count};
    };
    if (per_sequence == 1) {
      return cuda_status(kc::rope_append_and_attend(rope, attention_job(0, sequences), s.stream),
                         "rope_append_and_attend");
    }
    KBIT_RETURN_IF_ERROR(cuda_status(kc::rope_append_kv(rope, s.stream), "rope_append_kv"));
    for (std::int64_t b = 0; b < sequences; ++b) {
      KBIT_RETURN_IF_ERROR(cuda_status(kc::attention(attention_job(b, 1), s.stream), "attention"));
    }
    return ok_status();
  }

  // One pass of every layer over the token ids in s.token_ids: `sequences` sequences of
  // `per_sequence` tokens each (rows = their product), at position *s.position; leaves the
  // final-normed hidden states in s.normed.
  Status layers(KvCache::DeviceState& s, std::int64_t first_sequence, std::int64_t sequences,
                std::int64_t per_sequence) const {
    const LlamaConfig& c = config;
    const std::int64_t rows = sequences * per_sequence;
    const Tensor& embed = weights.embed;
    KBIT_RETURN_IF_ERROR(
        cuda_status(kc::embedding_lookup(s.token_ids.data_as<const std::int32_t>(), rows,
                                         embed.view().data(), embed.dtype(), c.hidden_size,
                                         s.hidden.view().data(), dtype(), s.stream),
                    "embedding_lookup"));
    bool pending_delta = false;  // s.proj holds the MLP output of the previous layer
    for (std::size_t l = 0; l < weights.layers.size(); ++l) {
      const DeviceLayer& layer = weights.layers[l];
      const auto qkv_x = int8_normed_row(s, {&layer.q, &layer.k, &layer.v}, rows);
      KBIT_RETURN_IF_ERROR(add_norm(s, pending_delta, layer.input_norm, rows, qkv_x));
      KBIT_RETURN_IF_ERROR(linears(s, {&layer.q, &layer.k, &layer.v}, s.normed.view().data(), rows,
                                   {s.q.view().data(), s.k.view().data(), s.v.view().data()},
                                   kc::LinearEpilogue::kStore, qkv_x));
      KBIT_RETURN_IF_ERROR(attention(s, l, first_sequence, sequences, per_sequence));
      KBIT_RETURN_IF_ERROR(linear(s, layer.o, s.attn.view().data(), rows, s.proj.view().data()));
      const auto mlp_x = int8_normed_row(s, {&layer.gate, &layer.up}, rows);
      KBIT_RETURN_IF_ERROR(add_norm(s, true, layer.post_attention_norm, rows, mlp_x));
      KBIT_RETURN_IF_ERROR(linears(s, {&layer.gate, &layer.up}, s.normed.view().data(), rows,
                                   {s.gate.view().data(), s.up.view().data()},
                                   kc::LinearEpilogue::kSiluMul, mlp_x));
      KBIT_RETURN_IF_ERROR(linear(s, layer.down, s.gate.view().data(), rows, s.proj.view().data()));
      pending_delta = true;
    }
    return add_norm(s, pending_delta, weights.final_norm, rows);
  }

  // logits f32 of the normed rows [first_row, first_row + count) into s.logits (count at most
  // kLogitChunkRows).
  Status logits_of_rows(KvCache::DeviceState& s, std::int64_t first_row, std::int64_t count) const {
    const std::int64_t vocab = config.vocab_size;
    KBIT_RETURN_IF_ERROR(linear(s, weights.lm_head,
                                row_pointer(s.normed, first_row, config.hidden_size), count,
                                s.logits_act.view().data()));
    return cuda_status(
        kc::convert_floats(s.logits_act.view().data(), dtype(), s.logits.view().data(), DType::kF32,
                           count * vocab, s.stream),
        "convert_floats (logits)");
  }

  // Queues a copy of `count` rows of s.logits to rows [first_row, ...) of `out`.
  Status copy_logits(KvCache::DeviceState& s, std::int64_t count, TensorView out,
                     std::int64_t first_row) const {
    const std::size_t row_bytes = static_cast<std::size_t>(config.vocab_size) * sizeof(float);
    return cuda_status(
        cudaMemcpyAsync(static_cast<std::byte*>(out.data()) + first_row * row_bytes,
                        s.logits.view().data(), static_cast<std::size_t>(count) * row_bytes,
                        cudaMemcpyDefault, s.stream),
        "cudaMemcpyAsync (logits)");
  }

  // Writes the step's token ids and first position to the device (the host values are staged
  // by the runtime at the call, so they need not outlive it).
  Status upload_step(KvCache::DeviceState& s, std::span<const std::int32_t> ids,
                     std::int32_t position) const {
    KBIT_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(s.token_ids.view().data(), ids.data(), ids.size_bytes(),
                                    cudaMemcpyHostToDevice, s.stream),
                    "cudaMemcpyAsync (token ids)"));
    return cuda_status(cudaMemcpyAsync(s.position.view().data(), &position, sizeof(position),
                                       cudaMemcpyHostToDevice, s.stream),
                       "cudaMemcpyAsync (position)");
  }

  // Dynamic RoPE's frequencies depend on the sequence length; the others were uploaded once.
  Status update_inv_freq(KvCache::DeviceState& s, std::int64_t seq_len) const {
    if (config.rope.type != RopeType::kDynamic) return ok_status();
    std::vector<float> inv_freq =
        rope_inv_freq(config.rope, config.head_dim, config.max_position_embeddings, seq_len);
    if (inv_freq == s.uploaded_inv_freq) return ok_status();
    s.uploaded_inv_freq = std::move(inv_freq);
    return cuda_status(cudaMemcpyAsync(s.inv_freq.view().data(), s.uploaded_inv_freq.data(),
                                       s.uploaded_inv_freq.size() * sizeof(float),
                                       cudaMemcpyHostToDevice, s.stream),
                       "cudaMemcpyAsync (inv_freq)");
  }

  // One token of each of `batch` sequences, through the captured graph (captured now if this
  // is the first such step): logits of each into s.logits rows [0, batch).
  Status decode_step(KvCache::DeviceState& s, std::int64_t batch) const {
    if (s.graph == nullptr || s.graph_batch != batch) {
      if (s.graph != nullptr) cudaGraphExecDestroy(s.graph);
      s.graph = nullptr;
      KBIT_RETURN_IF_ERROR(
          cuda_status(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal),
                      "cudaStreamBeginCapture"));
      Status recorded = layers(s, 0, batch, 1);
      if (recorded.ok()) recorded = logits_of_rows(s, 0, batch);
      cudaGraph_t graph = nullptr;
      const cudaError_t ended = cudaStreamEndCapture(s.stream, &graph);
      KBIT_RETURN_IF_ERROR(recorded);
      KBIT_RETURN_IF_ERROR(cuda_status(ended, "cudaStreamEndCapture"));
      const cudaError_t made = cudaGraphInstantiate(&s.graph, graph, 0);
      cudaGraphDestroy(graph);
      KBIT_RETURN_IF_ERROR(cuda_status(made, "cudaGraphInstantiate (decode step)"));
      s.graph_batch = batch;
    }
    return cuda_status(cudaGraphLaunch(s.graph, s.stream), "cudaGraphLaunch (decode step)");
  }

  // The tokens of one sequence in chunks; logits of every position or only of the last.
  Status prefill(KvCache::DeviceState& s, std::int64_t sequence, std::span<const std::int32_t> ids,
                 std::int64_t start, TensorView logits, std::int64_t logits_row,
                 bool all_positions) const {
    const auto count = static_cast<std::int64_t>(ids.size());
    for (std::int64_t first = 0; first < count; first += s.rows) {
      const std::int64_t rows = std::min(s.rows, count - first);
      KBIT_RETURN_IF_ERROR(upload_step(
          s, ids.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(rows)),
          static_cast<std::int32_t>(start + first)));
      KBIT_RETURN_IF_ERROR(layers(s, sequence, 1, rows));
      if (all_positions) {
        for (std::int64_t r = 0; r < rows; r += kLogitChunkRows) {
          const std::int64_t n = std::min(kLogitChunkRows, rows - r);
          KBIT_RETURN_IF_ERROR(logits_of_rows(s, r, n));
          KBIT_RETURN_IF_ERROR(copy_logits(s, n, logits, logits_row + first + r));
        }
      } else if (first + rows == count) {
        KBIT_RETURN_IF_ERROR(logits_of_rows(s, rows - 1, 1));
        KBIT_RETURN_IF_ERROR(copy_logits(s, 1, logits, logits_row));
      }
      // The next chunk's upload overwrites the ids and position this one reads: the stream
      // orders them, and the host values were staged at the call.
    }
    return ok_status();
  }
};

CudaLlama::CudaLlama(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLlama::~CudaLlama() = default;

Result<std::unique_ptr<CudaLlama>> CudaLlama::create(const LlamaConfig& config, Device device,
                                                     const LinearNumerics& numerics,
                                                     DeviceWeights weights, bool rounded_absmax) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->device = device;
  impl->numerics = numerics;
  impl->weights = std::move(weights);
  if (rounded_absmax) {
    KBIT_RETURN_IF_ERROR(round_nested_absmax(impl->weights, numerics.compute_dtype));
  }
  impl->window = config.sliding_window.value_or(0);
  impl->attention_scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
  return std::unique_ptr<CudaLlama>(new CudaLlama(std::move(impl)));
}

const LlamaConfig& CudaLlama::config() const {
  return impl_->config;
}

Device CudaLlama::device() const {
  return impl_->device;
}

const LinearNumerics& CudaLlama::numerics() const {
  return impl_->numerics;
}

const DeviceWeights& CudaLlama::weights() const {
  return impl_->weights;
}

std::size_t CudaLlama::weight_bytes() const {
  const DeviceWeights& w = impl_->weights;
  const auto linear_bytes = [](const DeviceLinear& linear) {
    std::size_t bytes = linear.weight.nbytes() + linear.bias.nbytes();
    for (const DeviceLoraTerm& term : linear.lora) bytes += term.a.nbytes() + term.b.nbytes();
    return bytes;
  };
  std::size_t total = w.embed.nbytes() + w.final_norm.nbytes();
  const bool tied = w.lm_head.weight.format() == LinearFormat::kFloat &&
                    w.lm_head.weight.float_weight().data() == w.embed.view().data();
  if (!tied) total += linear_bytes(w.lm_head);
  for (const DeviceLayer& layer : w.layers) {
    total += layer.input_norm.nbytes() + layer.post_attention_norm.nbytes();
    for (const DeviceLinear* linear : layer.linears()) total += linear_bytes(*linear);
  }
  return total;
}

Result<std::shared_ptr<KvCache::DeviceState>> CudaLlama::new_cache_state(std::int64_t max_tokens,
                                                                         std::int64_t batch) const {
  const LlamaConfig& c = impl_->config;
  const DType dtype = impl_->dtype();
  auto s = std::make_shared<KvCache::DeviceState>();
  s->device = impl_->device;
  s->batch = batch;
  s->capacity = max_tokens;
  s->rows = std::max(std::min(kPrefillChunkTokens, max_tokens), batch);
  KBIT_RETURN_IF_ERROR(cuda_status(cudaSetDevice(impl_->device.index), "cudaSetDevice"));
  KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking),
                                   "cudaStreamCreate"));
  const std::int64_t kv_width = c.num_key_value_heads * c.head_dim;
  const std::int64_t q_width = c.num_attention_heads * c.head_dim;
  const std::int64_t cache_elements = c.num_hidden_layers * batch * max_tokens * kv_width;
  const std::size_t cache_bytes = 2 * static_cast<std::size_t>(cache_elements) * dtype_size(dtype);
  const auto attempt = [&]() -> Status {
    const Device d = impl_->device;
    KBIT_ASSIGN_OR_RETURN(s->keys, Tensor::empty({cache_elements}, dtype, d));
    KBIT_ASSIGN_OR_RETURN(s->values, Tensor::empty({cache_elements}, dtype, d));
    const std::int64_t r = s->rows;
    for (auto [tensor, width] : {std::pair{&s->hidden, c.hidden_size},
                                 {&s->normed, c.hidden_size},
                                 {&s->proj, c.hidden_size},
                                 {&s->q, q_width},
                                 {&s->attn, q_width},
                                 {&s->k, kv_width},
                                 {&s->v, kv_width},
                                 {&s->gate, c.intermediate_size},
                                 {&s->up, c.intermediate_size}}) {
      KBIT_ASSIGN_OR_RETURN(*tensor, Tensor::empty({r, width}, dtype, d));
    }
    const std::int64_t logit_rows = std::max(kLogitChunkRows, batch);
    KBIT_ASSIGN_OR_RETURN(s->logits_act, Tensor::empty({logit_rows, c.vocab_size}, dtype, d));
    KBIT_ASSIGN_OR_RETURN(s->logits, Tensor::empty({logit_rows, c.vocab_size}, DType::kF32, d));
    KBIT_ASSIGN_OR_RETURN(s->token_ids, Tensor::empty({r}, DType::kI32, d));
    KBIT_ASSIGN_OR_RETURN(s->position, Tensor::empty({1}, DType::kI32, d));
    KBIT_ASSIGN_OR_RETURN(s->inv_freq, Tensor::empty({c.head_dim / 2}, DType::kF32, d));
    if (has_int8_layers(impl_->weights) && c.hidden_size % 16 == 0 &&
        c.hidden_size <= kc::kMaxInt8QuantizedNormCols) {
      const auto bytes = static_cast<std::int64_t>(kc::int8_quantized_row_bytes(c.hidden_size));
      KBIT_ASSIGN_OR_RETURN(s->normed_int8, Tensor::empty({bytes}, DType::kU8, d));
    }
    const std::size_t attention_floats =
        kc::attention_workspace_floats(r, c.num_attention_heads, c.head_dim, max_tokens, batch);
    KBIT_ASSIGN_OR_RETURN(
        s->attention_workspace,
        Tensor::empty({static_cast<std::int64_t>(std::max<std::size_t>(attention_floats, 1))},
                      DType::kF32, d));
    // Every layer's Linear on a chunk of rows, and lm_head on a chunk of logit rows.
    const kc::LinearContext::CallShape calls[] = {
        {r, std::max({c.hidden_size, c.intermediate_size, q_width}),
         std::max({c.intermediate_size, q_width, c.hidden_size})},
        {logit_rows, c.hidden_size, c.vocab_size}};
    KBIT_ASSIGN_OR_RETURN(s->linear, kc::LinearContext::create(s->stream, calls));
    const LoraWidths lora = lora_widths(impl_->weights);
    if (lora.rank > 0) {
      const std::int64_t lora_rows = std::max(r, logit_rows);
      KBIT_ASSIGN_OR_RETURN(s->lora_input, Tensor::empty({lora_rows, lora.in}, DType::kF32, d));
      KBIT_ASSIGN_OR_RETURN(s->lora_hidden, Tensor::empty({lora_rows, lora.rank}, DType::kF32, d));
      KBIT_ASSIGN_OR_RETURN(s->lora_term, Tensor::empty({lora_rows, lora.out}, DType::kF32, d));
    }
    return ok_status();
  };
  const Status made = attempt();
  if (made.code() == StatusCode::kOutOfMemory) {
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return out_of_memory(
        "not enough GPU memory for a context of " + std::to_string(max_tokens) + " tokens × " +
        std::to_string(batch) + " sequence(s): its KV cache needs " + gib_text(cache_bytes) +
        " and the activations of a " + std::to_string(s->rows) + "-token chunk more, while " +
        gib_text(free_bytes) + " of " + gib_text(total_bytes) +
        " are free with the weights loaded. Try a shorter context (--context), fewer sequences, "
        "or a smaller weight format (--load-in-4bit). (" +
        made.message() + ")");
  }
  KBIT_RETURN_IF_ERROR(made);
  if (c.rope.type != RopeType::kDynamic) {
    s->uploaded_inv_freq = rope_inv_freq(c.rope, c.head_dim, c.max_position_embeddings, max_tokens);
    KBIT_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(s->inv_freq.view().data(), s->uploaded_inv_freq.data(),
                                    s->uploaded_inv_freq.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, s->stream),
                    "cudaMemcpyAsync (inv_freq)"));
  }
  return s;
}

Status CudaLlama::forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                          KvCache::DeviceState& s, std::int64_t start, TensorView logits,
                          bool all_positions) const {
  const Impl& m = *impl_;
  KBIT_RETURN_IF_ERROR(cuda_status(cudaSetDevice(m.device.index), "cudaSetDevice"));
  const auto per_sequence = static_cast<std::int64_t>(tokens.size()) / batch;
  KBIT_RETURN_IF_ERROR(m.update_inv_freq(s, start + per_sequence));
  if (per_sequence == 1 && batch <= s.rows) {
    KBIT_RETURN_IF_ERROR(m.upload_step(s, tokens, static_cast<std::int32_t>(start)));
    KBIT_RETURN_IF_ERROR(m.decode_step(s, batch));
    KBIT_RETURN_IF_ERROR(m.copy_logits(s, batch, logits, 0));
  } else {
    for (std::int64_t b = 0; b < batch; ++b) {
      const std::span<const std::int32_t> ids = tokens.subspan(
          static_cast<std::size_t>(b * per_sequence), static_cast<std::size_t>(per_sequence));
      const std::int64_t logits_row = all_positions ? b * per_sequence : b;
      KBIT_RETURN_IF_ERROR(m.prefill(s, b, ids, start, logits, logits_row, all_positions));
    }
  }
  if (logits.device().is_cpu()) {
    return cuda_status(cudaStreamSynchronize(s.stream), "forward on the GPU");
  }
  return ok_status();
}

Device CudaLlama::device(const KvCache::DeviceState& state) {
  return state.device;
}

Stream CudaLlama::stream(const KvCache::DeviceState& state) {
  return Stream{state.stream};
}

std::size_t CudaLlama::device_bytes(const KvCache::DeviceState& state) {
  std::size_t total = state.linear ? state.linear->workspace_bytes() : 0;
  for (const Tensor* t : {&state.keys, &state.values, &state.hidden, &state.normed, &state.proj,
                          &state.q, &state.attn, &state.k, &state.v, &state.gate, &state.up,
                          &state.logits_act, &state.logits, &state.token_ids, &state.position,
                          &state.inv_freq, &state.attention_workspace, &state.normed_int8}) {
    total += t->nbytes();
  }
  return total;
}

}  // namespace cuda
}  // namespace kbit::model
