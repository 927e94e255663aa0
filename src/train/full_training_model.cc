#include "kbit/train/full_training_model.h"

#include <string>
#include <system_error>

#include "kbit/core/convert.h"
#include "model/cpu_llama.h"
#include "model/model_folder.h"
#include "train/causal_lm_backward.h"

namespace kbit::train {
namespace {

namespace fs = std::filesystem;

// One trained tensor: its f32 values (in `storage`, or for a norm the model's own vector), the
// gradient, and the dtype save() writes it in.
struct FullParameter {
  std::string name;
  Shape shape;
  DType saved_dtype = DType::kF32;
  std::vector<float> storage;  // empty for a norm
  std::span<float> values;
  std::vector<float> gradient;
};

// A Linear full fine-tuning can train: a float weight without a bias.
Status check_trainable_linear(const model::Linear& linear, const std::string& name) {
  if (linear.weight.format() != model::LinearFormat::kFloat) {
    return unimplemented("full fine-tuning trains float weights, but " + name +
                         " is quantized: load the model without quantizing it (QLoRA, without "
                         "--full, trains adapters on a quantized base)");
  }
  if (!linear.bias.empty()) {
    return unimplemented(name + " has a bias, which full fine-tuning does not train yet");
  }
  return ok_status();
}

}  // namespace

struct FullTrainingModel::Weights {
  model::CpuLlama model;  // computes with views of the parameters' values
  fs::path model_dir;
  std::vector<FullParameter> parameters;  // never resized once made: `model` views them
  TrainedParts parts;                     // where the backward adds the gradients

  // A parameter holding an f32 copy of `source`.
  Result<FullParameter*> add_copy(const std::string& name, const TensorView& source) {
    FullParameter& p = parameters.emplace_back();
    p.name = name;
    p.shape = source.shape();
    p.saved_dtype = source.dtype();
    p.storage.resize(static_cast<std::size_t>(source.numel()));
    p.values = p.storage;
    p.gradient.assign(p.storage.size(), 0.0f);
    KBIT_RETURN_IF_ERROR(
        convert_tensor(source, TensorView(p.storage.data(), DType::kF32, p.shape)));
    return &p;
  }
  // A parameter whose values are the model's own vector `values`.
  FullParameter* add_vector(const std::string& name, std::vector<float>& values, DType saved) {
    FullParameter& p = parameters.emplace_back();
    p.name = name;
    p.shape = Shape{static_cast<std::int64_t>(values.size())};
    p.saved_dtype = saved;
    p.values = values;
    p.gradient.assign(values.size(), 0.0f);
    return &p;
  }
  // A Linear computing with the f32 values of parameter `p` [out, in].
  static model::LinearWeight linear_weight(FullParameter& p) {
    return model::LinearWeight::float_view(TensorView(p.values.data(), DType::kF32, p.shape));
  }
};

FullTrainingModel::FullTrainingModel(std::unique_ptr<Weights> weights)
    : weights_(std::move(weights)) {}
FullTrainingModel::FullTrainingModel(FullTrainingModel&&) noexcept = default;
FullTrainingModel& FullTrainingModel::operator=(FullTrainingModel&&) noexcept = default;
FullTrainingModel::~FullTrainingModel() = default;

Result<FullTrainingModel> FullTrainingModel::create(const model::LlamaModel& base,
                                                    const fs::path& model_dir) {
  const model::CpuLlama* cpu = model::cpu_llama(base);
  KBIT_RETURN_IF_ERROR(check_trainable_model(cpu));
  const model::LlamaConfig& c = cpu->config;
  const std::vector<model::LinearModule> modules = model::linear_modules(c);
  const bool tied = cpu->lm_head_is_embedding();
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const model::Linear& linear =
        i + 1 == modules.size()
            ? cpu->lm_head
            : *cpu->layers[i / model::kLinearsPerLayer].linears()[i % model::kLinearsPerLayer];
    KBIT_RETURN_IF_ERROR(check_trainable_linear(linear, modules[i].name));
  }

  auto w = std::make_unique<Weights>();
  w->model_dir = model_dir;
  model::CpuLlama& m = w->model;
  m.config = c;
  m.execution = cpu->execution;
  m.numerics = cpu->numerics;
  m.inv_freq = cpu->inv_freq;
  m.final_norm = cpu->final_norm;
  m.layers.resize(cpu->layers.size());
  // Embedding, per layer (input norm, q, k, v, o, post-attention norm, gate, up, down), final
  // norm, untied lm_head: transformers' order of named_parameters().
  w->parameters.reserve(2 + 9 * m.layers.size() + (tied ? 0 : 1));
  const DType norm_dtype = cpu->embed.dtype();
  ModelWeightGradients& gradients = w->parts.weights;
  KBIT_ASSIGN_OR_RETURN(FullParameter * embed,
                        w->add_copy("model.embed_tokens.weight", cpu->embed));
  m.embed = TensorView(embed->values.data(), DType::kF32, embed->shape);
  gradients.embed = embed->gradient.data();
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    model::Layer& layer = m.layers[l];
    const model::Layer& source = cpu->layers[l];
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    LayerWeightGradients& layer_gradients = gradients.layers.emplace_back();
    layer.input_norm = source.input_norm;
    layer.post_attention_norm = source.post_attention_norm;
    layer_gradients.input_norm =
        w->add_vector(prefix + "input_layernorm.weight", layer.input_norm, norm_dtype)
            ->gradient.data();
    model::Linear* linears[model::kLinearsPerLayer] = {&layer.q,    &layer.k,  &layer.v,   &layer.o,
                                                       &layer.gate, &layer.up, &layer.down};
    for (int j = 0; j < model::kLinearsPerLayer; ++j) {
      if (j == model::kGateProj) {
        layer_gradients.post_attention_norm =
            w->add_vector(prefix + "post_attention_layernorm.weight", layer.post_attention_norm,
                          norm_dtype)
                ->gradient.data();
      }
      const model::LinearModule& module = modules[l * model::kLinearsPerLayer + j];
      KBIT_ASSIGN_OR_RETURN(
          FullParameter * p,
          w->add_copy(module.name + ".weight", source.linears()[j]->weight.float_weight()));
      linears[j]->weight = Weights::linear_weight(*p);
      layer_gradients.linears[j] = p->gradient.data();
    }
  }
  gradients.final_norm =
      w->add_vector("model.norm.weight", m.final_norm, norm_dtype)->gradient.data();
  if (tied) {
    m.lm_head.weight = model::LinearWeight::float_view(m.embed);
    gradients.lm_head = gradients.embed;
  } else {
    KBIT_ASSIGN_OR_RETURN(FullParameter * lm_head,
                          w->add_copy("lm_head.weight", cpu->lm_head.weight.float_weight()));
    m.lm_head.weight = Weights::linear_weight(*lm_head);
    gradients.lm_head = lm_head->gradient.data();
  }
  return FullTrainingModel(std::move(w));
}

std::vector<TrainableParameter> FullTrainingModel::parameters() {
  std::vector<TrainableParameter> parameters;
  for (FullParameter& p : weights_->parameters) {
    parameters.push_back({p.name, host_vector_view(p.values), host_vector_view(p.gradient)});
  }
  return parameters;
}

Result<double> FullTrainingModel::loss_and_gradients(std::span<const std::int32_t> input_ids,
                                                     std::span<const std::int32_t> labels,
                                                     std::int64_t batch) {
  const model::CpuLlama& m = weights_->model;
  KBIT_RETURN_IF_ERROR(check_training_batch(m.config, input_ids, labels, batch));
  return causal_lm_loss_and_gradients(m, weights_->parts, input_ids, labels, batch, 0);
}

Status FullTrainingModel::save(const fs::path& dir) const {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) return invalid_argument("cannot create " + dir.string() + ": " + error.message());
  std::vector<Tensor> storage;
  storage.reserve(weights_->parameters.size());
  std::vector<io::NamedTensor> tensors;
  for (const FullParameter& p : weights_->parameters) {
    KBIT_ASSIGN_OR_RETURN(Tensor saved, Tensor::empty(p.shape, p.saved_dtype));
    KBIT_RETURN_IF_ERROR(
        convert_tensor(TensorView(p.values.data(), DType::kF32, p.shape), saved.view()));
    tensors.push_back({p.name, saved.view()});
    storage.push_back(std::move(saved));
  }
  KBIT_RETURN_IF_ERROR(model::write_model_weights(dir, std::move(tensors)));
  return model::copy_model_files(weights_->model_dir, dir, /*config_too=*/true);
}

}  // namespace kbit::train
