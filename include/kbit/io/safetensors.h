// Reading safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON mapping tensor names to {dtype, shape, data_offsets}, then
// the raw little-endian tensor bytes.
//
// The file is memory-mapped read-only and tensors are views into the mapping (no copy). Opening
// validates everything before any tensor is handed out: the header length and JSON, every dtype
// and shape, that dtype size x element count equals the byte range, that every range lies
// inside the data section, and that ranges do not overlap. Errors name the file, the tensor
// and what is wrong.
//
// A SafetensorsFile is move-only; views it returns stay valid while it lives. Thread safety:
// const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::io {

struct SafetensorsEntry {
  DType dtype;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  std::uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. kNotFound if it does not exist; kDataLoss if it is truncated or
  // malformed; kUnimplemented for a dtype kbit does not handle (F64, F8_*, BOOL, ...), naming it.
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::filesystem::path& path() const;
  // Tensor names in file order of their data.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  // The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const;

  // A read-only host view of the tensor's bytes in the mapping (do not write through it), or
  // kNotFound naming the file and the tensor.
  Result<TensorView> tensor(const std::string& name) const;
  Result<SafetensorsEntry> entry(const std::string& name) const;
  // Tells the OS that the tensor's bytes are not needed for now: the whole pages inside its
  // range leave this process's resident memory (they stay in the page cache; a later read maps
  // them back). Views stay valid. For loaders that read each tensor once, so that resident
  // memory does not grow to the size of the file. A no-op for a copied (unaligned) tensor or an
  // unknown name.
  void release(const std::string& name) const;

 private:
  struct State;
  explicit SafetensorsFile(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kbit::io
