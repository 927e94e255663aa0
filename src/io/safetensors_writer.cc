#include "kbit/io/safetensors_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

namespace kbit::io {
namespace {

// nlohmann's ordered_json keeps insertion order, so the header lists tensors as given.
using OrderedJson = nlohmann::ordered_json;

// The safetensors dtype names ("BF16"); kbit's dtypes are a subset of the format's.
std::string safetensors_dtype_name(DType dtype) {
  std::string name(dtype_name(dtype));
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

Status check_tensors(const std::vector<NamedTensor>& tensors) {
  std::set<std::string> names;
  for (const NamedTensor& named : tensors) {
    if (named.name.empty() || named.name == "__metadata__") {
      return invalid_argument("tensor name '" + named.name + "' is not allowed in safetensors");
    }
    if (!names.insert(named.name).second) {
      return invalid_argument("tensor name '" + named.name + "' appears twice");
    }
    if (!named.tensor.device().is_cpu() || !named.tensor.is_contiguous()) {
      return invalid_argument("tensor '" + named.name + "' (" + named.tensor.describe() +
                              ") must be contiguous in host memory to be written");
    }
  }
  return ok_status();
}

std::string build_header(const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const NamedTensor& named : tensors) {
    OrderedJson shape = OrderedJson::array();
    for (int i = 0; i < named.tensor.rank(); ++i) shape.push_back(named.tensor.shape()[i]);
    const std::uint64_t end = offset + named.tensor.nbytes();
    header[named.name] = {{"dtype", safetensors_dtype_name(named.tensor.dtype())},
                          {"shape", shape},
                          {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// Writes all of `bytes` or fails with the OS error.
Status write_all(std::FILE* file, const void* bytes, std::size_t size,
                 const std::filesystem::path& path) {
  if (size > 0 && std::fwrite(bytes, 1, size, file) != size) {
    return internal_error(path.string() + ": write failed: " + std::strerror(errno) +
                          " (is the disk full?)");
  }
  return ok_status();
}

Status write_file(const std::filesystem::path& path, const std::string& header,
                  const std::vector<NamedTensor>& tensors) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    return invalid_argument(path.string() + ": cannot create: " + std::strerror(errno));
  }
  std::uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  Status status = write_all(file, length, 8, path);
  if (status.ok()) status = write_all(file, header.data(), header.size(), path);
  for (const NamedTensor& named : tensors) {
    if (!status.ok()) break;
    status = write_all(file, named.tensor.data(), named.tensor.nbytes(), path);
  }
  if (status.ok() && (std::fflush(file) != 0 || ::fsync(fileno(file)) != 0)) {
    status = internal_error(path.string() + ": flush failed: " + std::strerror(errno));
  }
  if (std::fclose(file) != 0 && status.ok()) {
    status = internal_error(path.string() + ": close failed: " + std::strerror(errno));
  }
  return status;
}

// Position of each dtype in the reference's order (its Dtype enum, read backwards).
int reference_dtype_rank(DType dtype) {
  switch (dtype) {
    case DType::kI64:
      return 0;
    case DType::kF32:
      return 1;
    case DType::kI32:
      return 2;
    case DType::kBF16:
      return 3;
    case DType::kF16:
      return 4;
    case DType::kI8:
      return 5;
    case DType::kU8:
      return 6;
  }
  return 7;
}

}  // namespace

void sort_in_reference_order(std::vector<NamedTensor>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const NamedTensor& a, const NamedTensor& b) {
    const int rank_a = reference_dtype_rank(a.tensor.dtype());
    const int rank_b = reference_dtype_rank(b.tensor.dtype());
    return rank_a != rank_b ? rank_a < rank_b : a.name < b.name;
  });
}

Status write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  KBIT_RETURN_IF_ERROR(check_tensors(tensors));
  const std::string header = build_header(tensors, metadata);
  std::filesystem::path temporary = path;
  temporary += ".tmp-" + std::to_string(::getpid());
  const Status written = write_file(temporary, header, tensors);
  std::error_code error;
  if (!written.ok()) {
    std::filesystem::remove(temporary, error);
    return written;
  }
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    return internal_error(path.string() +
                          ": cannot move the finished file into place: " + error.message());
  }
  return ok_status();
}

}  // namespace kbit::io
