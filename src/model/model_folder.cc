#include "model/model_folder.h"

#include <unistd.h>

#include <string>
#include <system_error>

#include "kbit/io/bnb_quantization_config.h"

namespace kbit::model {

namespace fs = std::filesystem;

Status write_model_folder(const fs::path& output_dir,
                          const std::function<Status(const fs::path&)>& fill) {
  std::error_code error;
  if (fs::exists(output_dir, error)) {
    return invalid_argument(output_dir.string() +
                            " already exists; name a new folder for the model (or remove it)");
  }
  const fs::path parent = output_dir.has_parent_path() ? output_dir.parent_path() : ".";
  if (!fs::is_directory(parent, error)) {
    return invalid_argument("cannot write " + output_dir.string() + ": the folder " +
                            parent.string() + " does not exist");
  }
  fs::path staging = output_dir;
  staging += ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging, error);
  if (!fs::create_directory(staging, error)) {
    return internal_error("cannot create " + staging.string() + ": " + error.message());
  }
  Status status = fill(staging);
  if (status.ok()) {
    fs::rename(staging, output_dir, error);
    if (error) {
      status = internal_error("cannot move the finished folder to " + output_dir.string() + ": " +
                              error.message());
    }
  }
  if (!status.ok()) fs::remove_all(staging, error);
  return status;
}

Result<FloatModel> open_float_model(const fs::path& model_dir, const std::string& fix) {
  const fs::path config_path = model_dir / "config.json";
  KBIT_ASSIGN_OR_RETURN(LlamaConfig config, load_llama_config(config_path));
  KBIT_ASSIGN_OR_RETURN(const std::optional<io::BnbQuantizationConfig> stored,
                        io::read_bnb_quantization_config(config_path));
  if (stored) {
    return invalid_argument(model_dir.string() +
                            " is already quantized by bitsandbytes (config.json has a "
                            "quantization_config); " +
                            fix);
  }
  KBIT_ASSIGN_OR_RETURN(io::Checkpoint checkpoint, io::Checkpoint::open(model_dir));
  return FloatModel{std::move(config), std::move(checkpoint)};
}

Status write_model_weights(const fs::path& staging, std::vector<io::NamedTensor> tensors) {
  io::sort_in_reference_order(tensors);
  return io::write_safetensors(staging / "model.safetensors", tensors, {{"format", "pt"}});
}

Status copy_model_files(const fs::path& model_dir, const fs::path& staging, bool config_too) {
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(model_dir, error)) {
    const std::string name = entry.path().filename().string();
    const bool weights =
        name == "model.safetensors.index.json" || entry.path().extension() == ".safetensors";
    if (!entry.is_regular_file() || weights || (name == "config.json" && !config_too)) continue;
    // Through a temporary name, so that a file replaced in a folder that exists is never
    // half-written.
    const fs::path target = staging / entry.path().filename();
    fs::path temporary = target;
    temporary += ".tmp-" + std::to_string(::getpid());
    fs::copy_file(entry.path(), temporary, fs::copy_options::overwrite_existing, error);
    if (!error) fs::rename(temporary, target, error);
    if (error) {
      const std::string reason = error.message();
      fs::remove(temporary, error);
      return internal_error("cannot copy " + entry.path().string() + " to " + target.string() +
                            ": " + reason);
    }
  }
  if (error) return internal_error("cannot list " + model_dir.string() + ": " + error.message());
  return ok_status();
}

}  // namespace kbit::model
