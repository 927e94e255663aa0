#include "kbit/io/safetensors_writer.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <set>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"

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

// The file's bytes: the header's length (u64 little-endian), the header, the tensors' data.
Status write_contents(FileSink& sink, const std::string& header,
                      const std::vector<NamedTensor>& tensors) {
  std::uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  KBIT_RETURN_IF_ERROR(sink.write(length, 8));
  KBIT_RETURN_IF_ERROR(sink.write(header.data(), header.size()));
  for (const NamedTensor& named : tensors) {
    KBIT_RETURN_IF_ERROR(sink.write(named.tensor.data(), named.tensor.nbytes()));
  }
  return ok_status();
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
  return write_file_atomically(
      path, [&](FileSink& sink) { return write_contents(sink, header, tensors); });
}

}  // namespace kbit::io
