// LoRA training on a CUDA device (kbit/train/cuda_lora_training_model.h): the CPU's
// causal_lm_backward.cc and layer_pass.cc, step for step, as CUDA kernels on whole passes of
// sequences.
#include "kbit/train/cuda_lora_training_model.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "core/cuda_runtime.h"
#include "kbit/core/random.h"
#include "kbit/model/rope.h"
#include "kernels/cuda/linear_launchers.h"
#include "kernels/cuda/llama_backward_launchers.h"
#include "kernels/cuda/llama_launchers.h"
#include "kernels/cuda/lora_launchers.h"
#include "model/cuda/device_linear.h"
#include "train/causal_lm_backward.h"
#include "train/lora_placement.h"

namespace kbit::train {
namespace {

namespace kc = kbit::kernels::cuda;
using model::LayerLinear;
using model::cuda::DeviceLayer;
using model::cuda::DeviceLinear;

// Logit rows of the loss at once: [512, vocab] in the activation dtype (131 MB in bf16 for
// Llama 3's 128 256), enough rows for lm_head's GEMMs and cross-entropy to run at full rate.
constexpr std::int64_t kLossChunkRows = 512;

// Which input each Linear of a layer reads (the normed hidden state for q, k and v, the
// attention for o, the second normed state for gate and up, the activation for down): without
// dropout the Linears of one input share the copy of it their f32 LoRA terms take, and bf16 terms
// read the input itself.
constexpr std::array<int, model::kLinearsPerLayer> kInputOfLinear = {0, 0, 0, 1, 2, 2, 3};

Status cuda_status(cudaError_t error, const char* what) {
  return detail::status_from_cuda_error(error, what);
}

// Element `row` · width of an array of `dtype`.
void* at_row(const Tensor& tensor, std::int64_t row, std::int64_t width) {
  return static_cast<std::byte*>(tensor.view().data()) +
         static_cast<std::size_t>(row * width) * dtype_size(tensor.dtype());
}

// One module's adapter and its gradients, f32 on the device.
struct DeviceLoraModule {
  std::string name;
  std::int64_t rank = 0;
  std::int64_t in = 0;
  std::int64_t out = 0;
  Tensor a, b, grad_a, grad_b;  // [rank, in], [out, rank] and their gradients
  Tensor a_bf16, b_bf16;        // bf16 LoRA: a and b rounded, refreshed before each batch
};

// A 1-D view of a whole tensor.
TensorView flat(const Tensor& tensor) {
  return TensorView(tensor.view().data(), tensor.dtype(), Shape{tensor.numel()}, tensor.device());
}

}  // namespace

struct CudaLoraTrainingModel::Impl {
  const model::cuda::CudaLlama* base = nullptr;
  // The state create() was given without its values (the device holds them), its modules in the
  // order of `modules`: what state() fills from the device.
  LoraState host_state;
  float scaling = 1.0f;
  kc::LoraPrecision precision = kc::LoraPrecision::kF32;
  std::vector<DeviceLoraModule> modules;
  LoraPlacement placement;
  std::int64_t sequences_per_pass = 1;
  std::uint64_t dropout_seed = 0;
  cudaStream_t stream = nullptr;

  // The pass being run: `sequences` of `tokens` positions each (rows = their product).
  std::int64_t sequences = 0;
  std::int64_t tokens = 0;
  // The buffers, made for the largest pass so far (capacity_rows rows, sequences of up to
  // capacity_tokens positions); a pass packs its rows at the front of each.
  std::int64_t capacity_rows = 0;
  std::int64_t capacity_tokens = 0;
  std::unique_ptr<kc::LinearContext> linear;
  Tensor checkpoints;  // [layers + 1, rows, hidden]
  // [rows, hidden]; normed_attention and normed are the inputs of q, k, v and of gate, up.
  Tensor normed_attention, normed, h, proj, d_hidden, d_normed, scratch;
  Tensor q, attn, d_attn, dq;                 // [rows, heads · head_dim]
  Tensor k, v, k_rotated, v_cache, dk, dv;    // [rows, kv_heads · head_dim]
  Tensor gate, up, activation, d_activation;  // [rows, intermediate]
  Tensor logits;                              // [kLossChunkRows, vocab]
  Tensor row_loss;                            // f32 [rows]
  Tensor token_ids, targets;                  // i32 [rows]
  Tensor position;                            // i32 [1]: 0
  Tensor inv_freq;                            // f32 [head_dim / 2]
  Tensor norm_workspace, attention_workspace, attention_backward_workspace;  // f32
  // LoRA's buffers (f32, or bf16 for bf16 terms where lora_launchers.h says): each input's copy
  // (one per Linear with dropout; none for bf16 terms without), each Linear's x · Aᵀ and dropout
  // factors, and the backward's scratch.
  std::array<Tensor, model::kLinearsPerLayer> lora_input, lora_h, keep;
  Tensor lora_term, lora_dy, lora_dh, lora_dx;
  // The quantized Linears of one layer dequantized whole (dequantize_device_linear) for its
  // forward, its recomputation and its backward, which then multiply by linear_float (int8:
  // the backward only; the forward stays LLM.int8's): bytes; dequantized_layer the layer it holds
  // (-1: none), dequantized[j] Linear j's matrix in it, or nullptr where Linear j is float or
  // takes linear_4bit (dequantizes_whole).
  Tensor layer_weights;
  std::int64_t dequantized_layer = -1;
  std::array<const void*, model::kLinearsPerLayer> dequantized{};
  std::vector<float> uploaded_inv_freq;
  std::vector<float> host_row_loss;

  ~Impl() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    linear.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  const model::LlamaConfig& config() const { return base->config(); }
  const model::LinearNumerics& numerics() const { return base->numerics(); }
  DType dtype() const { return numerics().activation_dtype; }
  std::int64_t rows() const { return sequences * tokens; }
  std::int64_t q_width() const { return config().num_attention_heads * config().head_dim; }
  std::int64_t kv_width() const { return config().num_key_value_heads * config().head_dim; }
  float eps() const { return static_cast<float>(config().rms_norm_eps); }
  double dropout_probability() const { return host_state.config().lora_dropout; }
  bool dropout() const { return dropout_probability() > 0; }
  const DeviceLinear& base_linear(std::size_t l, int j) const {
    return *base->weights().layers[l].linears()[static_cast<std::size_t>(j)];
  }
  const DeviceLoraModule* module(std::size_t l, int j) const {
    const int index = placement[l][static_cast<std::size_t>(j)];
    return index < 0 ? nullptr : &modules[static_cast<std::size_t>(index)];
  }
  std::size_t lora_input_slot(int j) const {
    return static_cast<std::size_t>(dropout() ? j : kInputOfLinear[static_cast<std::size_t>(j)]);
  }
  bool bf16_lora() const { return precision == kc::LoraPrecision::kBf16; }
  // The layer's input of Linear j, live from its layer_forward through its layer_backward.
  const void* input_of(int j) const {
    const Tensor* inputs[] = {&normed_attention, &attn, &normed, &activation};
    return inputs[kInputOfLinear[static_cast<std::size_t>(j)]]->view().data();
  }
  // x̃ of Linear j's LoRA term: the input itself for bf16 terms without dropout.
  void* lora_input_of(int j) const {
    if (bf16_lora() && !dropout()) return const_cast<void*>(input_of(j));
    return lora_input[lora_input_slot(j)].view().data();
  }
  const float* keep_of(int j) const {
    return dropout() ? keep[static_cast<std::size_t>(j)].data_as<const float>() : nullptr;
  }
  // Module m, on Linear j of layer l, as the launchers take it.
  kc::LoraAdapterDevice adapter(std::size_t l, int j, const DeviceLoraModule& m) const {
    kc::LoraAdapterDevice adapter =
        model::cuda::lora_adapter_on(base_linear(l, j), m.a, m.b, scaling);
    adapter.precision = precision;
    adapter.a_bf16 = m.a_bf16.view().data();  // null for f32 LoRA
    adapter.b_bf16 = m.b_bf16.view().data();
    return adapter;
  }

  Status round_lora_weights();

  // Whether the layer's weight is dequantized whole: an int8 one (whose input gradient takes
  // it so), or a 4-bit one without a bias in a model whose compute dtype is its activation dtype,
  // where linear_float multiplies as linear_4bit does.
  bool dequantizes_whole(const DeviceLinear& layer) const {
    switch (layer.weight.format()) {
      case model::LinearFormat::kInt8:
        return true;
      case model::LinearFormat::kFourBit:
        return layer.bias.view().data() == nullptr && numerics().compute_dtype == dtype();
      case model::LinearFormat::kFloat:
        break;
    }
    return false;
  }
  // Bytes of layer_weights a Linear takes, rounded up to keep every matrix 256-byte aligned.
  std::size_t dequantized_bytes(const DeviceLinear& layer) const {
    const std::size_t bytes =
        static_cast<std::size_t>(layer.weight.out_features() * layer.weight.in_features()) *
        dtype_size(*model::cuda::dequantized_dtype(layer, numerics()));
    return (bytes + 255) / 256 * 256;
  }
  const void* dequantized_weight(std::size_t l, int j) const {
    return static_cast<std::int64_t>(l) == dequantized_layer
               ? dequantized[static_cast<std::size_t>(j)]
               : nullptr;
  }

  Status allocate();
  Status allocate_layer_weights();
  Status dequantize_layer(std::size_t l);
  Status rms_norm_backward(const void* input, const Tensor& weight, void* d_input);
  Status upload_pass(std::span<const std::int32_t> ids, std::span<const std::int32_t> targets);
  Status draw_dropout(std::size_t l, std::int64_t first_sequence);
  Status linear_forward(std::size_t l, int j, const void* x, void* y, bool base_product);
  Status linear_backward(std::size_t l, int j, const void* dy, void* dx, bool accumulate);
  Status layer_forward(std::size_t l, const void* x, void* out);
  Status layer_backward(std::size_t l, const void* x);
  Status head(const void* final_hidden, float gradient_scale);
  Result<double> run_pass(std::span<const std::int32_t> ids, std::span<const std::int32_t> targets,
                          std::int64_t first_sequence, float gradient_scale);
  std::size_t device_bytes() const;
};

Status CudaLoraTrainingModel::Impl::allocate() {
  if (rows() <= capacity_rows && tokens <= capacity_tokens) return ok_status();
  capacity_rows = std::max(capacity_rows, rows());
  capacity_tokens = std::max(capacity_tokens, tokens);
  const model::LlamaConfig& c = config();
  const Device device = base->device();
  const std::int64_t r = capacity_rows;
  const std::int64_t e = c.hidden_size;
  const DType act = dtype();
  const auto make = [&](Tensor& tensor, Shape shape, DType dtype) -> Status {
    tensor = Tensor();  // freed before the larger one is taken
    KBIT_ASSIGN_OR_RETURN(tensor, Tensor::empty(std::move(shape), dtype, device));
    return ok_status();
  };
  const auto floats = [](std::size_t n) {
    return Shape{static_cast<std::int64_t>(std::max<std::size_t>(n, 1))};
  };
  KBIT_RETURN_IF_ERROR(make(checkpoints, {c.num_hidden_layers + 1, r, e}, act));
  for (Tensor* t : {&normed_attention, &normed, &h, &proj, &d_hidden, &d_normed, &scratch}) {
    KBIT_RETURN_IF_ERROR(make(*t, {r, e}, act));
  }
  for (Tensor* t : {&q, &attn, &d_attn, &dq}) KBIT_RETURN_IF_ERROR(make(*t, {r, q_width()}, act));
  for (Tensor* t : {&k, &v, &k_rotated, &v_cache, &dk, &dv}) {
    KBIT_RETURN_IF_ERROR(make(*t, {r, kv_width()}, act));
  }
  for (Tensor* t : {&gate, &up, &activation, &d_activation}) {
    KBIT_RETURN_IF_ERROR(make(*t, {r, c.intermediate_size}, act));
  }
  const std::int64_t logit_rows = std::min(kLossChunkRows, r);
  KBIT_RETURN_IF_ERROR(make(logits, {logit_rows, c.vocab_size}, act));
  KBIT_RETURN_IF_ERROR(make(row_loss, {r}, DType::kF32));
  KBIT_RETURN_IF_ERROR(make(token_ids, {r}, DType::kI32));
  KBIT_RETURN_IF_ERROR(make(targets, {r}, DType::kI32));
  KBIT_RETURN_IF_ERROR(make(position, {1}, DType::kI32));
  KBIT_RETURN_IF_ERROR(make(inv_freq, {c.head_dim / 2}, DType::kF32));
  KBIT_RETURN_IF_ERROR(
      make(norm_workspace, floats(kc::rms_norm_backward_workspace_floats(r, e)), DType::kF32));
  KBIT_RETURN_IF_ERROR(
      make(attention_workspace,
           floats(kc::attention_workspace_floats(capacity_tokens, c.num_attention_heads, c.head_dim,
                                                 capacity_tokens)),
           DType::kF32));
  KBIT_RETURN_IF_ERROR(
      make(attention_backward_workspace,
           floats(kc::attention_backward_workspace_floats(r, c.num_attention_heads, c.head_dim)),
           DType::kF32));

  // LoRA: per Linear of a layer the widest input and largest rank of its modules.
  std::array<std::int64_t, model::kLinearsPerLayer> in_of{}, rank_of{};
  std::int64_t widest_in = 1, widest_out = 1, rank = 1;
  for (std::size_t l = 0; l < placement.size(); ++l) {
    for (int j = 0; j < model::kLinearsPerLayer; ++j) {
      const DeviceLoraModule* m = module(l, j);
      if (m == nullptr) continue;
      in_of[static_cast<std::size_t>(j)] = std::max(in_of[static_cast<std::size_t>(j)], m->in);
      rank_of[static_cast<std::size_t>(j)] =
          std::max(rank_of[static_cast<std::size_t>(j)], m->rank);
      widest_in = std::max(widest_in, m->in);
      widest_out = std::max(widest_out, m->out);
      rank = std::max(rank, m->rank);
    }
  }
  const DType lora_dtype = bf16_lora() ? DType::kBF16 : DType::kF32;
  for (Tensor& input : lora_input) input = Tensor();
  for (int j = 0; j < model::kLinearsPerLayer; ++j) {
    const auto u = static_cast<std::size_t>(j);
    if (in_of[u] == 0) continue;
    Tensor& input = lora_input[lora_input_slot(j)];
    if ((!bf16_lora() || dropout()) && input.numel() < r * in_of[u]) {
      KBIT_RETURN_IF_ERROR(make(input, {r, in_of[u]}, lora_dtype));
    }
    KBIT_RETURN_IF_ERROR(make(lora_h[u], {r, rank_of[u]}, lora_dtype));
    if (dropout()) KBIT_RETURN_IF_ERROR(make(keep[u], {r, in_of[u]}, DType::kF32));
  }
  lora_term = Tensor();
  lora_dy = Tensor();
  lora_dx = Tensor();
  if (!bf16_lora()) {
    KBIT_RETURN_IF_ERROR(make(lora_term, {r, widest_out}, DType::kF32));
    KBIT_RETURN_IF_ERROR(make(lora_dy, {r, widest_out}, DType::kF32));
  }
  KBIT_RETURN_IF_ERROR(make(lora_dh, {r, rank}, lora_dtype));
  if (!bf16_lora() || dropout()) KBIT_RETURN_IF_ERROR(make(lora_dx, {r, widest_in}, DType::kF32));

  // Every Linear's shape, forward and input gradient; lm_head on a chunk of loss rows.
  std::vector<kc::LinearContext::CallShape> calls;
  for (const DeviceLinear* layer : base->weights().layers.front().linears()) {
    const std::int64_t in = layer->weight.in_features();
    const std::int64_t out = layer->weight.out_features();
    calls.push_back({r, in, out, false});
    calls.push_back({r, in, out, true});
  }
  calls.push_back({logit_rows, e, c.vocab_size, false});
  calls.push_back({logit_rows, e, c.vocab_size, true});
  linear.reset();
  KBIT_ASSIGN_OR_RETURN(linear, kc::LinearContext::create(stream, calls));
  return cuda_status(cudaMemsetAsync(position.view().data(), 0, sizeof(std::int32_t), stream),
                     "cudaMemsetAsync (position)");
}

// layer_weights, sized for the layer whose dequantized matrices take the most bytes; none where
// no Linear dequantizes_whole. Independent of the passes' sizes: made once, at creation.
Status CudaLoraTrainingModel::Impl::allocate_layer_weights() {
  std::size_t most = 0;
  for (const DeviceLayer& layer : base->weights().layers) {
    std::size_t bytes = 0;
    for (const DeviceLinear* weight : layer.linears()) {
      if (dequantizes_whole(*weight)) bytes += dequantized_bytes(*weight);
    }
    most = std::max(most, bytes);
  }
  if (most == 0) return ok_status();
  KBIT_ASSIGN_OR_RETURN(
      layer_weights, Tensor::empty({static_cast<std::int64_t>(most)}, DType::kU8, base->device()));
  return ok_status();
}

// Layer l's weights that dequantizes_whole into layer_weights, unless they are there: the
// base is frozen, so a layer stays valid across passes and steps.
Status CudaLoraTrainingModel::Impl::dequantize_layer(std::size_t l) {
  if (layer_weights.view().data() == nullptr || static_cast<std::int64_t>(l) == dequantized_layer) {
    return ok_status();
  }
  dequantized_layer = -1;  // until every matrix is queued
  auto* next = static_cast<std::byte*>(layer_weights.view().data());
  const std::array<const DeviceLinear*, model::kLinearsPerLayer> linears =
      base->weights().layers[l].linears();
  for (std::size_t j = 0; j < linears.size(); ++j) {
    const DeviceLinear& layer = *linears[j];
    dequantized[j] = nullptr;
    if (!dequantizes_whole(layer)) continue;
    KBIT_RETURN_IF_ERROR(model::cuda::dequantize_device_linear(layer, numerics(), next, stream));
    dequantized[j] = next;
    next += dequantized_bytes(layer);
  }
  dequantized_layer = static_cast<std::int64_t>(l);
  return ok_status();
}

// The pass's ids and shifted targets, and RoPE's frequencies for its length.
Status CudaLoraTrainingModel::Impl::upload_pass(std::span<const std::int32_t> ids,
                                                std::span<const std::int32_t> pass_targets) {
  KBIT_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(token_ids.view().data(), ids.data(), ids.size_bytes(),
                                  cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync (token ids)"));
  KBIT_RETURN_IF_ERROR(
      cuda_status(cudaMemcpyAsync(targets.view().data(), pass_targets.data(),
                                  pass_targets.size_bytes(), cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync (targets)"));
  const model::LlamaConfig& c = config();
  std::vector<float> frequencies =
      model::rope_inv_freq(c.rope, c.head_dim, c.max_position_embeddings, tokens);
  if (frequencies == uploaded_inv_freq) return ok_status();
  uploaded_inv_freq = std::move(frequencies);
  // The host vector stays as it is until a later upload, which the stream orders after this one.
  return cuda_status(
      cudaMemcpyAsync(inv_freq.view().data(), uploaded_inv_freq.data(),
                      uploaded_inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
      "cudaMemcpyAsync (inv_freq)");
}

// Layer l's dropout factors for the pass, whose first sequence is the batch's first_sequence:
// the masks LayerAdapters::draw_dropout draws on the CPU for the same sequence, layer and Linear.
Status CudaLoraTrainingModel::Impl::draw_dropout(std::size_t l, std::int64_t first_sequence) {
  if (!dropout()) return ok_status();
  for (int j = 0; j < model::kLinearsPerLayer; ++j) {
    const DeviceLoraModule* m = module(l, j);
    if (m == nullptr) continue;
    const std::int64_t count = tokens * m->in;
    for (std::int64_t b = 0; b < sequences; ++b) {
      const std::uint64_t sequence_seed =
          random_bits(dropout_seed, static_cast<std::uint64_t>(first_sequence + b));
      const std::uint64_t layer_seed = random_bits(sequence_seed, l + 1);
      const std::uint64_t stream_seed = random_bits(layer_seed, static_cast<std::uint64_t>(j));
      float* factors = keep[static_cast<std::size_t>(j)].data_as<float>() + b * count;
      KBIT_RETURN_IF_ERROR(cuda_status(
          kc::lora_dropout_keep(factors, count, stream_seed, dropout_probability(), stream),
          "lora_dropout_keep"));
    }
  }
  return ok_status();
}

// y [rows, out] = Linear j of layer l applied to x [rows, in], its LoRA term added. Without
// base_product only the LoRA term's forward runs (the backward's recomputation of down_proj,
// whose output nothing reads, needs only the term's kept values); y is then scratch.
Status CudaLoraTrainingModel::Impl::linear_forward(std::size_t l, int j, const void* x, void* y,
                                                   bool base_product) {
  const DeviceLinear& layer = base_linear(l, j);
  const void* weight = layer.weight.format() == model::LinearFormat::kFourBit
                           ? dequantized_weight(l, j)
                           : nullptr;  // int8's forward stays LLM.int8's
  if (base_product && weight != nullptr) {
    KBIT_RETURN_IF_ERROR(kc::linear_float(*linear, x, weight, nullptr, rows(),
                                          layer.weight.in_features(), layer.weight.out_features(),
                                          y, dtype()));
  } else if (base_product) {
    KBIT_RETURN_IF_ERROR(model::cuda::device_linear_forward(
        *linear, layer, numerics(), x, rows(), y, kernels::cpu::FourBitDecode::kExact));
  }
  const DeviceLoraModule* m = module(l, j);
  if (m == nullptr) return ok_status();
  return kc::lora_forward(*linear, adapter(l, j, *m), {rows(), m->in, m->out}, x, keep_of(j),
                          dtype(),
                          {lora_input_of(j), lora_h[static_cast<std::size_t>(j)].view().data(),
                           lora_term.data_as<float>()},
                          y);
}

// dx [rows, in] (+)= dy [rows, out] · W of Linear j of layer l (added when `accumulate`, then
// only for the Linears reading a normed hidden state), its LoRA term's part added and its A and
// B gradients accumulated. Requires layer_forward of layer l just before.
Status CudaLoraTrainingModel::Impl::linear_backward(std::size_t l, int j, const void* dy, void* dx,
                                                    bool accumulate) {
  const DeviceLinear& layer = base_linear(l, j);
  void* base_dx = accumulate ? scratch.view().data() : dx;
  KBIT_RETURN_IF_ERROR(model::cuda::device_linear_backward_input(
      *linear, layer, numerics(), dy, rows(), base_dx, dequantized_weight(l, j)));
  if (accumulate) {
    KBIT_RETURN_IF_ERROR(cuda_status(
        kc::add_residual(dx, base_dx, rows() * layer.weight.in_features(), dtype(), stream),
        "add_residual"));
  }
  const DeviceLoraModule* m = module(l, j);
  if (m == nullptr) return ok_status();
  const kc::LoraBackwardBuffers buffers{lora_input_of(j),
                                        lora_h[static_cast<std::size_t>(j)].view().data(),
                                        dy,
                                        keep_of(j),
                                        m->grad_a.data_as<float>(),
                                        m->grad_b.data_as<float>(),
                                        dx,
                                        lora_dy.data_as<float>(),
                                        lora_dh.view().data(),
                                        lora_dx.data_as<float>()};
  return kc::lora_backward(*linear, adapter(l, j, *m), {rows(), m->in, m->out}, buffers, dtype());
}

// Layer l on x [rows, hidden] (which stays: the backward reads it again), keeping the
// activations; the layer's output into `out` [rows, hidden] unless it is nullptr.
//   n1 = RMSNorm(x);  q, k, v = rope(Wq n1), rope(Wk n1), Wv n1;  a = attention(q, k, v)
//   h = x + Wo a;  n2 = RMSNorm(h);  g, u = Wgate n2, Wup n2;  s = silu(g) · u;  out = h + Wdown s
Status CudaLoraTrainingModel::Impl::layer_forward(std::size_t l, const void* x, void* out) {
  const model::LlamaConfig& c = config();
  const DeviceLayer& layer = base->weights().layers[l];
  KBIT_RETURN_IF_ERROR(dequantize_layer(l));
  const std::int64_t r = rows();
  const std::size_t hidden_bytes =
      static_cast<std::size_t>(r * c.hidden_size) * dtype_size(dtype());
  KBIT_RETURN_IF_ERROR(cuda_status(
      kc::add_rms_norm(const_cast<void*>(x), nullptr, layer.input_norm.data_as<const float>(), r,
                       c.hidden_size, eps(), normed_attention.view().data(), dtype(), stream),
      "add_rms_norm"));
  for (const int j : {model::kQProj, model::kKProj, model::kVProj}) {
    Tensor* outputs[] = {&q, &k, &v};
    KBIT_RETURN_IF_ERROR(
        linear_forward(l, j, normed_attention.view().data(), outputs[j]->view().data(), true));
  }
  // RoPE on q in place; the rotated k and v written as each sequence's own cache.
  const kc::RopeAppendJob rope{q.view().data(),
                               k.view().data(),
                               v.view().data(),
                               r,
                               c.num_attention_heads,
                               c.num_key_value_heads,
                               c.head_dim,
                               position.data_as<const std::int32_t>(),
                               inv_freq.data_as<const float>(),
                               k_rotated.view().data(),
                               v_cache.view().data(),
                               dtype(),
                               tokens,
                               sequences};
  KBIT_RETURN_IF_ERROR(cuda_status(kc::rope_append_kv(rope, stream), "rope_append_kv"));
  for (std::int64_t b = 0; b < sequences; ++b) {
    const kc::AttentionJob job{at_row(q, b * tokens, q_width()),
                               at_row(k_rotated, b * tokens, kv_width()),
                               at_row(v_cache, b * tokens, kv_width()),
                               tokens,
                               c.num_attention_heads,
                               c.num_key_value_heads,
                               c.head_dim,
                               position.data_as<const std::int32_t>(),
                               tokens,
                               0,
                               1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                               at_row(attn, b * tokens, q_width()),
                               dtype(),
                               attention_workspace.data_as<float>()};
    KBIT_RETURN_IF_ERROR(cuda_status(kc::attention(job, stream), "attention"));
  }
  KBIT_RETURN_IF_ERROR(
      linear_forward(l, model::kOProj, attn.view().data(), proj.view().data(), true));
  KBIT_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(h.view().data(), x, hidden_bytes, cudaMemcpyDeviceToDevice, stream),
      "cudaMemcpyAsync (residual)"));
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::add_rms_norm(h.view().data(), proj.view().data(),
                                   layer.post_attention_norm.data_as<const float>(), r,
                                   c.hidden_size, eps(), normed.view().data(), dtype(), stream),
                  "add_rms_norm"));
  KBIT_RETURN_IF_ERROR(
      linear_forward(l, model::kGateProj, normed.view().data(), gate.view().data(), true));
  KBIT_RETURN_IF_ERROR(
      linear_forward(l, model::kUpProj, normed.view().data(), up.view().data(), true));
  const std::size_t mlp_bytes =
      static_cast<std::size_t>(r * c.intermediate_size) * dtype_size(dtype());
  KBIT_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(activation.view().data(), gate.view().data(),
                                                   mlp_bytes, cudaMemcpyDeviceToDevice, stream),
                                   "cudaMemcpyAsync (activation)"));
  KBIT_RETURN_IF_ERROR(cuda_status(kc::silu_mul(activation.view().data(), up.view().data(),
                                                r * c.intermediate_size, dtype(), stream),
                                   "silu_mul"));
  const bool output = out != nullptr;
  KBIT_RETURN_IF_ERROR(
      linear_forward(l, model::kDownProj, activation.view().data(), proj.view().data(), output));
  if (!output) return ok_status();
  KBIT_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(out, h.view().data(), hidden_bytes, cudaMemcpyDeviceToDevice, stream),
      "cudaMemcpyAsync (residual)"));
  return cuda_status(kc::add_residual(out, proj.view().data(), r * c.hidden_size, dtype(), stream),
                     "add_residual");
}

// d_hidden, the loss's gradient with respect to layer l's output, becomes the one with respect
// to its input x; the LoRA gradients are accumulated. Requires layer_forward(l, x, ...) just
// before.
Status CudaLoraTrainingModel::Impl::layer_backward(std::size_t l, const void* x) {
  const model::LlamaConfig& c = config();
  const DeviceLayer& layer = base->weights().layers[l];
  const std::int64_t r = rows();
  const auto norm_backward = [&](const void* input, const Tensor& weight) -> Status {
    KBIT_RETURN_IF_ERROR(rms_norm_backward(input, weight, scratch.view().data()));
    return cuda_status(kc::add_residual(d_hidden.view().data(), scratch.view().data(),
                                        r * c.hidden_size, dtype(), stream),
                       "add_residual");
  };
  // out = h + Wdown s, s = silu(g) · u, g and u from n2 = RMSNorm(h).
  KBIT_RETURN_IF_ERROR(linear_backward(l, model::kDownProj, d_hidden.view().data(),
                                       d_activation.view().data(), false));
  // The gradients of g and u replace g and u, which nothing reads after.
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::silu_mul_backward(gate.view().data(), up.view().data(),
                                        d_activation.view().data(), r * c.intermediate_size,
                                        gate.view().data(), up.view().data(), dtype(), stream),
                  "silu_mul_backward"));
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kGateProj, gate.view().data(), d_normed.view().data(), false));
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kUpProj, up.view().data(), d_normed.view().data(), true));
  KBIT_RETURN_IF_ERROR(norm_backward(h.view().data(), layer.post_attention_norm));

  // h = x + Wo a, a = attention(q, k, v), q, k, v from n1 = RMSNorm(x).
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kOProj, d_hidden.view().data(), d_attn.view().data(), false));
  const kc::AttentionBackwardJob attention{q.view().data(),
                                           k_rotated.view().data(),
                                           v_cache.view().data(),
                                           attn.view().data(),
                                           d_attn.view().data(),
                                           r,
                                           c.num_attention_heads,
                                           c.num_key_value_heads,
                                           c.head_dim,
                                           1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                           dq.view().data(),
                                           dk.view().data(),
                                           dv.view().data(),
                                           dtype(),
                                           attention_backward_workspace.data_as<float>(),
                                           sequences};
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::attention_backward(attention, stream), "attention_backward"));
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::rope_backward(dq.view().data(), r, c.num_attention_heads, c.head_dim,
                                    inv_freq.data_as<const float>(), sequences, dtype(), stream),
                  "rope_backward"));
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::rope_backward(dk.view().data(), r, c.num_key_value_heads, c.head_dim,
                                    inv_freq.data_as<const float>(), sequences, dtype(), stream),
                  "rope_backward"));
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kQProj, dq.view().data(), d_normed.view().data(), false));
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kKProj, dk.view().data(), d_normed.view().data(), true));
  KBIT_RETURN_IF_ERROR(
      linear_backward(l, model::kVProj, dv.view().data(), d_normed.view().data(), true));
  return norm_backward(x, layer.input_norm);
}

// The final norm, lm_head and the cross-entropy of the pass's rows, kLossChunkRows at a time:
// each row's loss into row_loss, and d_hidden the gradient (times gradient_scale) with respect to
// final_hidden [rows, hidden], the last layer's output.
Status CudaLoraTrainingModel::Impl::head(const void* final_hidden, float gradient_scale) {
  const model::LlamaConfig& c = config();
  const model::cuda::DeviceWeights& w = base->weights();
  const std::int64_t r = rows();
  KBIT_RETURN_IF_ERROR(
      cuda_status(kc::add_rms_norm(const_cast<void*>(final_hidden), nullptr,
                                   w.final_norm.data_as<const float>(), r, c.hidden_size, eps(),
                                   normed.view().data(), dtype(), stream),
                  "add_rms_norm"));
  for (std::int64_t first = 0; first < r; first += kLossChunkRows) {
    const std::int64_t count = std::min(kLossChunkRows, r - first);
    KBIT_RETURN_IF_ERROR(model::cuda::device_linear_forward(
        *linear, w.lm_head, numerics(), at_row(normed, first, c.hidden_size), count,
        logits.view().data(), kernels::cpu::FourBitDecode::kExact));
    // The logits become their gradient.
    KBIT_RETURN_IF_ERROR(cuda_status(
        kc::cross_entropy_backward(
            logits.view().data(), targets.data_as<const std::int32_t>() + first, count,
            c.vocab_size, gradient_scale, row_loss.data_as<float>() + first, dtype(), stream),
        "cross_entropy_backward"));
    KBIT_RETURN_IF_ERROR(model::cuda::device_linear_backward_input(
        *linear, w.lm_head, numerics(), logits.view().data(), count,
        at_row(d_normed, first, c.hidden_size)));
  }
  return rms_norm_backward(final_hidden, w.final_norm, d_hidden.view().data());
}

// d_input [rows, hidden] = the gradient of RMSNorm(input) · weight given d_normed, overwritten.
Status CudaLoraTrainingModel::Impl::rms_norm_backward(const void* input, const Tensor& weight,
                                                      void* d_input) {
  const kc::RmsNormBackwardJob job{input,
                                   weight.data_as<const float>(),
                                   d_normed.view().data(),
                                   rows(),
                                   config().hidden_size,
                                   eps(),
                                   d_input,
                                   nullptr,
                                   dtype(),
                                   norm_workspace.data_as<float>()};
  return cuda_status(kc::rms_norm_backward(job, stream), "rms_norm_backward");
}

// One pass over `sequences` sequences (ids and targets [sequences, tokens]), the batch's
// first_sequence first: the embedding, every layer keeping its input, the loss, then every layer
// again and back. Returns the pass's summed loss once the stream has run it.
Result<double> CudaLoraTrainingModel::Impl::run_pass(std::span<const std::int32_t> ids,
                                                     std::span<const std::int32_t> pass_targets,
                                                     std::int64_t first_sequence,
                                                     float gradient_scale) {
  const model::LlamaConfig& c = config();
  const std::int64_t r = rows();
  KBIT_RETURN_IF_ERROR(allocate());
  KBIT_RETURN_IF_ERROR(upload_pass(ids, pass_targets));
  const auto checkpoint = [&](std::size_t l) { return at_row(checkpoints, l * r, c.hidden_size); };
  const model::cuda::DeviceWeights& w = base->weights();
  KBIT_RETURN_IF_ERROR(cuda_status(
      kc::embedding_lookup(token_ids.data_as<const std::int32_t>(), r, w.embed.view().data(),
                           w.embed.dtype(), c.hidden_size, checkpoint(0), dtype(), stream),
      "embedding_lookup"));
  const std::size_t layers = w.layers.size();
  for (std::size_t l = 0; l < layers; ++l) {
    KBIT_RETURN_IF_ERROR(draw_dropout(l, first_sequence));
    KBIT_RETURN_IF_ERROR(layer_forward(l, checkpoint(l), checkpoint(l + 1)));
  }
  KBIT_RETURN_IF_ERROR(head(checkpoint(layers), gradient_scale));
  for (std::size_t l = layers; l-- > 0;) {
    KBIT_RETURN_IF_ERROR(draw_dropout(l, first_sequence));
    KBIT_RETURN_IF_ERROR(layer_forward(l, checkpoint(l), nullptr));
    KBIT_RETURN_IF_ERROR(layer_backward(l, checkpoint(l)));
  }
  host_row_loss.resize(static_cast<std::size_t>(r));
  KBIT_RETURN_IF_ERROR(cuda_status(
      cudaMemcpyAsync(host_row_loss.data(), row_loss.view().data(),
                      host_row_loss.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
      "cudaMemcpyAsync (loss)"));
  KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "training pass on the GPU"));
  double loss = 0.0;
  for (const float row : host_row_loss) loss += row;
  return loss;
}

std::size_t CudaLoraTrainingModel::Impl::device_bytes() const {
  std::size_t total = linear ? linear->workspace_bytes() : 0;
  for (const DeviceLoraModule& m : modules) {
    total += m.a.nbytes() + m.b.nbytes() + m.grad_a.nbytes() + m.grad_b.nbytes() +
             m.a_bf16.nbytes() + m.b_bf16.nbytes();
  }
  for (const Tensor* t : {&checkpoints,
                          &layer_weights,
                          &normed_attention,
                          &normed,
                          &h,
                          &proj,
                          &d_hidden,
                          &d_normed,
                          &scratch,
                          &q,
                          &attn,
                          &d_attn,
                          &dq,
                          &k,
                          &v,
                          &k_rotated,
                          &v_cache,
                          &dk,
                          &dv,
                          &gate,
                          &up,
                          &activation,
                          &d_activation,
                          &logits,
                          &row_loss,
                          &token_ids,
                          &targets,
                          &position,
                          &inv_freq,
                          &norm_workspace,
                          &attention_workspace,
                          &attention_backward_workspace,
                          &lora_term,
                          &lora_dy,
                          &lora_dh,
                          &lora_dx}) {
    total += t->nbytes();
  }
  for (const auto* group : {&lora_input, &lora_h, &keep}) {
    for (const Tensor& t : *group) total += t.nbytes();
  }
  return total;
}

CudaLoraTrainingModel::CudaLoraTrainingModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLoraTrainingModel::CudaLoraTrainingModel(CudaLoraTrainingModel&&) noexcept = default;
CudaLoraTrainingModel& CudaLoraTrainingModel::operator=(CudaLoraTrainingModel&&) noexcept = default;
CudaLoraTrainingModel::~CudaLoraTrainingModel() = default;

Result<CudaLoraTrainingModel> CudaLoraTrainingModel::create(const model::LlamaModel& base,
                                                            const LoraState& state,
                                                            std::int64_t sequences_per_pass,
                                                            DType lora_dtype) {
  const model::cuda::CudaLlama* gpu = model::cuda_llama(base);
  if (gpu == nullptr) {
    return invalid_argument(
        "CUDA training needs the base model loaded on a CUDA device (--device cuda); for a model "
        "on the CPU use LoraTrainingModel");
  }
  if (sequences_per_pass < 1) {
    return invalid_argument("sequences per pass must be at least 1, got " +
                            std::to_string(sequences_per_pass));
  }
  if (lora_dtype != DType::kF32 &&
      (lora_dtype != DType::kBF16 || gpu->numerics().activation_dtype != DType::kBF16)) {
    return invalid_argument("LoRA in " + std::string(dtype_name(lora_dtype)) + " on a base with " +
                            std::string(dtype_name(gpu->numerics().activation_dtype)) +
                            " activations: LoRA runs in f32, or in bf16 on bf16 activations");
  }
  KBIT_ASSIGN_OR_RETURN(LoraPlacement placement, place_lora_modules(base.config(), state));
  auto impl = std::make_unique<Impl>();
  impl->base = gpu;
  impl->host_state = state;
  impl->scaling = state.scaling();
  impl->placement = std::move(placement);
  impl->sequences_per_pass = sequences_per_pass;
  if (lora_dtype == DType::kBF16) impl->precision = kc::LoraPrecision::kBf16;
  const Device device = gpu->device();
  KBIT_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device.index), "cudaSetDevice"));
  KBIT_RETURN_IF_ERROR(cuda_status(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                                   "cudaStreamCreate"));
  for (const LoraModule& module : state.modules()) {
    DeviceLoraModule& m = impl->modules.emplace_back();
    m.name = module.name;
    m.rank = module.rank;
    m.in = module.in_features;
    m.out = module.out_features;
    const auto upload = [&](Tensor& tensor, const std::vector<float>& values,
                            Shape shape) -> Status {
      KBIT_ASSIGN_OR_RETURN(tensor, Tensor::empty(shape, DType::kF32, device));
      return copy_tensor(TensorView(const_cast<float*>(values.data()), DType::kF32, shape),
                         tensor.view());
    };
    KBIT_RETURN_IF_ERROR(upload(m.a, module.a, {m.rank, m.in}));
    KBIT_RETURN_IF_ERROR(upload(m.b, module.b, {m.out, m.rank}));
    KBIT_RETURN_IF_ERROR(upload(m.grad_a, module.grad_a, {m.rank, m.in}));
    KBIT_RETURN_IF_ERROR(upload(m.grad_b, module.grad_b, {m.out, m.rank}));
    if (impl->bf16_lora()) {
      KBIT_ASSIGN_OR_RETURN(m.a_bf16, Tensor::empty({m.rank, m.in}, DType::kBF16, device));
      KBIT_ASSIGN_OR_RETURN(m.b_bf16, Tensor::empty({m.out, m.rank}, DType::kBF16, device));
    }
  }
  for (LoraModule& module : impl->host_state.modules()) {
    for (std::vector<float>* values : {&module.a, &module.b, &module.grad_a, &module.grad_b}) {
      *values = std::vector<float>();
    }
  }
  KBIT_RETURN_IF_ERROR(impl->allocate_layer_weights());
  return CudaLoraTrainingModel(std::move(impl));
}

std::vector<TrainableParameter> CudaLoraTrainingModel::parameters() {
  std::vector<TrainableParameter> parameters;
  for (DeviceLoraModule& m : impl_->modules) {
    parameters.push_back({m.name + ".lora_A", flat(m.a), flat(m.grad_a)});
    parameters.push_back({m.name + ".lora_B", flat(m.b), flat(m.grad_b)});
  }
  return parameters;
}

Result<double> CudaLoraTrainingModel::loss_and_gradients(std::span<const std::int32_t> input_ids,
                                                         std::span<const std::int32_t> labels,
                                                         std::int64_t batch) {
  Impl& m = *impl_;
  KBIT_RETURN_IF_ERROR(check_training_batch(m.config(), input_ids, labels, batch));
  KBIT_RETURN_IF_ERROR(cuda_status(cudaSetDevice(m.base->device().index), "cudaSetDevice"));
  const ShiftedTargets shifted = shift_labels(labels, batch);
  const float gradient_scale = 1.0f / static_cast<float>(shifted.labelled);
  const auto tokens = static_cast<std::int64_t>(input_ids.size()) / batch;
  KBIT_RETURN_IF_ERROR(m.round_lora_weights());
  double loss = 0.0;
  for (std::int64_t first = 0; first < batch; first += m.sequences_per_pass) {
    m.sequences = std::min(m.sequences_per_pass, batch - first);
    m.tokens = tokens;
    const auto offset = static_cast<std::size_t>(first * tokens);
    const auto count = static_cast<std::size_t>(m.sequences * tokens);
    KBIT_ASSIGN_OR_RETURN(
        const double pass_loss,
        m.run_pass(input_ids.subspan(offset, count),
                   std::span(shifted.targets).subspan(offset, count), first, gradient_scale));
    loss += pass_loss;
  }
  return loss / static_cast<double>(shifted.labelled);
}

// bf16 terms: a_bf16 and b_bf16 from the current f32 values, which the optimizer has moved.
Status CudaLoraTrainingModel::Impl::round_lora_weights() {
  if (!bf16_lora()) return ok_status();
  for (DeviceLoraModule& m : modules) {
    for (const auto& [from, to] : {std::pair{&m.a, &m.a_bf16}, {&m.b, &m.b_bf16}}) {
      KBIT_RETURN_IF_ERROR(
          cuda_status(kc::convert_floats(from->view().data(), DType::kF32, to->view().data(),
                                         DType::kBF16, from->numel(), stream),
                      "convert_floats (LoRA weights to bf16)"));
    }
  }
  return ok_status();
}

void CudaLoraTrainingModel::set_dropout_seed(std::uint64_t seed) {
  impl_->dropout_seed = seed;
}

Result<LoraState> CudaLoraTrainingModel::state() const {
  LoraState state = impl_->host_state;
  const auto download = [](const Tensor& tensor, std::vector<float>& values) {
    values.resize(static_cast<std::size_t>(tensor.numel()));
    return copy_tensor(tensor.view(), TensorView(values.data(), DType::kF32, tensor.shape()));
  };
  for (std::size_t i = 0; i < impl_->modules.size(); ++i) {
    const DeviceLoraModule& device = impl_->modules[i];
    LoraModule& module = state.modules()[i];
    KBIT_RETURN_IF_ERROR(download(device.a, module.a));
    KBIT_RETURN_IF_ERROR(download(device.b, module.b));
    KBIT_RETURN_IF_ERROR(download(device.grad_a, module.grad_a));
    KBIT_RETURN_IF_ERROR(download(device.grad_b, module.grad_b));
  }
  return state;
}

Status CudaLoraTrainingModel::save(const std::filesystem::path& dir) const {
  KBIT_ASSIGN_OR_RETURN(const LoraState current, state());
  return current.save(dir);
}

std::size_t CudaLoraTrainingModel::device_bytes() const {
  return impl_->device_bytes();
}

}  // namespace kbit::train
