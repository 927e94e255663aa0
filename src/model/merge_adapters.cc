#include "kbit/model/merge_adapters.h"

#include <map>
#include <string>
#include <vector>

#include "kbit/core/convert.h"
#include "kbit/core/parallel.h"
#include "kbit/model/llama_config.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/quantized_linear_parts.h"
#include "model/lora.h"
#include "model/model_folder.h"

namespace kbit::model {
namespace {

namespace fs = std::filesystem;
namespace k = kbit::kernels::cpu;

// The tensor widened to f32 (a copy).
Result<Tensor> to_f32(const TensorView& tensor) {
  KBIT_ASSIGN_OR_RETURN(Tensor wide, Tensor::empty(tensor.shape(), DType::kF32));
  KBIT_RETURN_IF_ERROR(convert_tensor(tensor, wide.view()));
  return wide;
}

// weight [out, in] (f32) += scaling · B · A for each term, rounded to `dtype` after each, as
// PEFT merges adapters one after another into a weight of that dtype.
Status merge_terms(const std::vector<LoraTerm>& terms, DType dtype, Tensor& weight) {
  const std::int64_t out = weight.shape()[0];
  const std::int64_t in = weight.shape()[1];
  float* w = weight.data_as<float>();
  for (const LoraTerm& term : terms) {
    const std::int64_t rank = term.a.shape()[0];
    KBIT_ASSIGN_OR_RETURN(const Tensor a, to_f32(term.a));
    KBIT_ASSIGN_OR_RETURN(const Tensor b, to_f32(term.b));
    // Aᵀ [in, rank]: sgemm's panel, so that delta = B · (Aᵀ)ᵀ.
    std::vector<float> a_transposed(static_cast<std::size_t>(in * rank));
    for (std::int64_t r = 0; r < rank; ++r) {
      for (std::int64_t i = 0; i < in; ++i) {
        a_transposed[static_cast<std::size_t>(i * rank + r)] = a.data_as<const float>()[r * in + i];
      }
    }
    std::vector<float> delta(static_cast<std::size_t>(out * in));
    parallel_for(out, 64, [&](std::int64_t first, std::int64_t end) {
      k::sgemm_panel(b.data_as<const float>() + first * rank, rank, end - first,
                     a_transposed.data(), in, rank, false, delta.data() + first * in, in);
    });
    for (std::size_t i = 0; i < delta.size(); ++i) {
      w[i] = k::rounded_to(dtype, w[i] + delta[i] * term.scaling);
    }
  }
  return ok_status();
}

// Fills `staging` with the merged model.
Status write_merged_folder(const fs::path& model_dir, const std::vector<fs::path>& adapter_dirs,
                           const fs::path& staging) {
  KBIT_ASSIGN_OR_RETURN(
      const FloatModel model,
      open_float_model(model_dir, "merge the adapters into the float model it was made from"));
  const LlamaConfig& config = model.config;
  const io::Checkpoint& checkpoint = model.checkpoint;
  KBIT_ASSIGN_OR_RETURN(const std::vector<io::PeftAdapter> adapters, open_adapters(adapter_dirs));
  const std::vector<LinearModule> modules = linear_modules(config);
  KBIT_RETURN_IF_ERROR(check_adapters_fit(adapters, modules));

  std::map<std::string, Tensor> merged;  // by tensor name
  for (const LinearModule& module : modules) {
    KBIT_ASSIGN_OR_RETURN(const std::vector<LoraTerm> terms, lora_terms(adapters, module));
    if (terms.empty()) continue;
    if (module.name == "lm_head" && config.tie_word_embeddings) {
      return unimplemented(
          "an adapter has LoRA on lm_head, which this model ties to its "
          "embedding (tie_word_embeddings); merging it would untie them");
    }
    const std::string name = module.name + ".weight";
    KBIT_ASSIGN_OR_RETURN(const TensorView weight, checkpoint.tensor(name));
    if (!(weight.shape() == Shape{module.out_features, module.in_features}) ||
        !is_floating(weight.dtype())) {
      return invalid_argument(model_dir.string() + ": tensor '" + name + "' is " +
                              weight.describe() + ", not a float [" +
                              std::to_string(module.out_features) + ", " +
                              std::to_string(module.in_features) + "] weight");
    }
    KBIT_ASSIGN_OR_RETURN(Tensor wide, to_f32(weight));
    KBIT_RETURN_IF_ERROR(merge_terms(terms, weight.dtype(), wide));
    KBIT_ASSIGN_OR_RETURN(Tensor stored_dtype, Tensor::empty(weight.shape(), weight.dtype()));
    KBIT_RETURN_IF_ERROR(convert_tensor(wide.view(), stored_dtype.view()));
    checkpoint.release(name);
    merged.emplace(name, std::move(stored_dtype));
  }
  std::vector<io::NamedTensor> tensors;
  for (const std::string& name : checkpoint.names()) {
    const auto found = merged.find(name);
    if (found != merged.end()) {
      tensors.push_back({name, found->second.view()});
      continue;
    }
    KBIT_ASSIGN_OR_RETURN(const TensorView tensor, checkpoint.tensor(name));
    tensors.push_back({name, tensor});
  }
  KBIT_RETURN_IF_ERROR(write_model_weights(staging, std::move(tensors)));
  return copy_model_files(model_dir, staging, /*config_too=*/true);
}

}  // namespace

Status merge_adapters(const fs::path& model_dir, const std::vector<fs::path>& adapters,
                      const fs::path& output_dir) {
  if (adapters.empty()) return invalid_argument("merge: give at least one adapter (--adapter DIR)");
  return write_model_folder(output_dir, [&](const fs::path& staging) {
    return write_merged_folder(model_dir, adapters, staging);
  });
}

}  // namespace kbit::model
