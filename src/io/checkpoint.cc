#include "kbit/io/checkpoint.h"

#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

namespace kbit::io {
namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

struct Location {
  std::size_t file = 0;  // index into Impl::files
};

Result<nlohmann::json> read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path.string() + ": cannot open the file");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return data_loss(path.string() + ": not valid JSON; re-save the model with save_pretrained");
  }
  return json;
}

}  // namespace

struct Checkpoint::Impl {
  std::filesystem::path dir;
  std::vector<SafetensorsFile> files;
  std::map<std::string, Location> tensors;  // sorted by name
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

Result<Checkpoint> Checkpoint::open(const std::filesystem::path& model_dir) {
  auto impl = std::make_unique<Impl>();
  impl->dir = model_dir;
  const std::filesystem::path index_path = model_dir / kIndexFile;
  const std::filesystem::path single_path = model_dir / kSingleFile;
  std::error_code error;
  if (std::filesystem::exists(index_path, error)) {
    KBIT_ASSIGN_OR_RETURN(const nlohmann::json index, read_json(index_path));
    const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object()) {
      return data_loss(index_path.string() +
                       ": field 'weight_map' is missing or not an object mapping tensor names "
                       "to shard files; re-save the model with save_pretrained");
    }
    // Open each shard once, in order of first mention.
    std::map<std::string, std::size_t> shard_of_file;
    std::map<std::string, std::string> shard_name_of_tensor;
    for (const auto& [tensor, shard_value] : map_it->items()) {
      if (!shard_value.is_string()) {
        return data_loss(index_path.string() + ": weight_map['" + tensor +
                         "'] must be a shard file name, found " + shard_value.dump());
      }
      const std::string shard = shard_value.get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return data_loss(index_path.string() + ": weight_map['" + tensor + "'] names '" + shard +
                         "', which is not a file name inside the model folder");
      }
      if (shard_of_file.count(shard) == 0) {
        Result<SafetensorsFile> file = SafetensorsFile::open(model_dir / shard);
        if (!file.ok()) {
          if (file.status().code() == StatusCode::kNotFound) {
            return not_found(index_path.string() + ": shard '" + shard + "' (named for tensor '" +
                             tensor + "') does not exist in " + model_dir.string() +
                             "; download every shard the index lists");
          }
          return file.status().with_context(index_path.string() + ": shard '" + shard + "'");
        }
        shard_of_file[shard] = impl->files.size();
        impl->files.push_back(std::move(file).value());
      }
      shard_name_of_tensor[tensor] = shard;
    }
    // Every shard's tensors: no name may appear in two shards.
    std::map<std::string, std::size_t> found_in;
    for (std::size_t f = 0; f < impl->files.size(); ++f) {
      for (const std::string& name : impl->files[f].names()) {
        const auto [it, inserted] = found_in.emplace(name, f);
        if (!inserted) {
          return data_loss(model_dir.string() + ": tensor '" + name + "' is stored in both '" +
                           impl->files[it->second].path().filename().string() + "' and '" +
                           impl->files[f].path().filename().string() +
                           "'; a checkpoint must hold each tensor once (re-save the model)");
        }
      }
    }
    for (const auto& [tensor, shard] : shard_name_of_tensor) {
      const std::size_t f = shard_of_file.at(shard);
      if (!impl->files[f].contains(tensor)) {
        return data_loss(index_path.string() + ": tensor '" + tensor + "' is listed in shard '" +
                         shard + "' but that file does not contain it; the index and the shards " +
                         "do not belong together (download them again)");
      }
      impl->tensors[tensor] = Location{f};
    }
  } else if (std::filesystem::exists(single_path, error)) {
    KBIT_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(single_path));
    for (const std::string& name : file.names()) impl->tensors[name] = Location{0};
    impl->files.push_back(std::move(file));
  } else {
    return not_found(model_dir.string() + ": holds neither " + kSingleFile + " nor " + kIndexFile +
                     "; pass a folder written by save_pretrained (safetensors weights)");
  }
  return Checkpoint(std::move(impl));
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  names.reserve(impl_->tensors.size());
  for (const auto& [name, location] : impl_->tensors) names.push_back(name);
  return names;
}

bool Checkpoint::contains(const std::string& name) const {
  return impl_->tensors.count(name) != 0;
}

Result<TensorView> Checkpoint::tensor(const std::string& name) const {
  const auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end()) {
    return not_found("tensor '" + name + "' is not in the checkpoint " + impl_->dir.string());
  }
  return impl_->files[it->second.file].tensor(name);
}

Result<SafetensorsEntry> Checkpoint::entry(const std::string& name) const {
  const auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end()) {
    return not_found("tensor '" + name + "' is not in the checkpoint " + impl_->dir.string());
  }
  return impl_->files[it->second.file].entry(name);
}

void Checkpoint::release(const std::string& name) const {
  const auto it = impl_->tensors.find(name);
  if (it != impl_->tensors.end()) impl_->files[it->second.file].release(name);
}

std::uint64_t Checkpoint::total_bytes() const {
  std::uint64_t total = 0;
  for (const auto& [name, location] : impl_->tensors) {
    const Result<SafetensorsEntry> e = impl_->files[location.file].entry(name);
    if (e.ok()) total += e->end - e->begin;
  }
  return total;
}

}  // namespace kbit::io
