// The weights of a model folder as Hugging Face saves them: one model.safetensors, or shards
// listed by model.safetensors.index.json. Every file is mapped and validated at open (see
// safetensors.h); the index must name only tensors that exist in the shard it names, and every
// shard it names must exist.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/io/safetensors.h"

namespace kbit::io {

class Checkpoint {
 public:
  // Fails naming the folder, the file and the tensor at fault, and what to do.
  static Result<Checkpoint> open(const std::filesystem::path& model_dir);

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // A read-only view into the mapped file, or kNotFound naming the tensor and the folder.
  Result<TensorView> tensor(const std::string& name) const;
  Result<SafetensorsEntry> entry(const std::string& name) const;
  // SafetensorsFile::release for the file holding `name`.
  void release(const std::string& name) const;
  // Bytes of tensor data across all shards.
  std::uint64_t total_bytes() const;

 private:
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::io
