#include "kbit/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

namespace kbit::io {
namespace {

// The reference implementation refuses headers above 100 MB; so do we.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

// A read-only mapping of a whole file, unmapped on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) munmap(const_cast<std::uint8_t*>(data_), size_);
  }

  Status map(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return not_found(path.string() + ": no such file");
      return invalid_argument(path.string() + ": cannot open: " + std::strerror(errno));
    }
    struct stat info {};
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
      ::close(fd);
      return invalid_argument(path.string() + ": not a regular file");
    }
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ > 0) {
      void* data = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data == MAP_FAILED) {
        ::close(fd);
        return internal_error(path.string() + ": mmap failed: " + std::strerror(errno));
      }
      data_ = static_cast<const std::uint8_t*>(data);
    }
    ::close(fd);
    return ok_status();
  }

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

struct ParsedEntry {
  std::string name;
  SafetensorsEntry entry;
};

Result<DType> parse_entry_dtype(const std::string& text) {
  if (text == "F32" || text == "F16" || text == "BF16" || text == "I8" || text == "U8" ||
      text == "I32" || text == "I64") {
    return *parse_dtype(text);
  }
  return unimplemented("dtype " + text +
                       " is not supported (kbit reads F32, F16, BF16, I8, U8, I32, I64)");
}

Result<std::uint64_t> parse_unsigned(const nlohmann::json& value, const std::string& what) {
  if (!value.is_number_unsigned()) {
    return data_loss(what + " must be a non-negative integer, found " + value.dump());
  }
  return value.get<std::uint64_t>();
}

// One tensor's header entry: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}.
Result<SafetensorsEntry> parse_entry(const nlohmann::json& value) {
  if (!value.is_object()) return data_loss("entry is not a JSON object");
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return data_loss("unknown field '" + key + "'");
    }
  }
  if (!value.contains("dtype") || !value["dtype"].is_string()) {
    return data_loss("field 'dtype' is missing or not a string");
  }
  if (!value.contains("shape") || !value["shape"].is_array()) {
    return data_loss("field 'shape' is missing or not an array");
  }
  if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
      value["data_offsets"].size() != 2) {
    return data_loss("field 'data_offsets' must be an array [begin, end]");
  }
  SafetensorsEntry entry;
  KBIT_ASSIGN_OR_RETURN(entry.dtype, parse_entry_dtype(value["dtype"].get<std::string>()));
  const nlohmann::json& dims = value["shape"];
  if (dims.size() > static_cast<std::size_t>(kMaxDims)) {
    return data_loss("shape has " + std::to_string(dims.size()) + " dimensions; at most " +
                     std::to_string(kMaxDims) + " are supported");
  }
  std::int64_t extents[kMaxDims] = {};
  // numel * element size must fit in 64 bits.
  std::uint64_t bytes = dtype_size(entry.dtype);
  for (std::size_t i = 0; i < dims.size(); ++i) {
    KBIT_ASSIGN_OR_RETURN(std::uint64_t dim,
                          parse_unsigned(dims[i], "shape[" + std::to_string(i) + "]"));
    if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return data_loss("shape[" + std::to_string(i) + "] is too large");
    }
    extents[i] = static_cast<std::int64_t>(dim);
    if (__builtin_mul_overflow(bytes, dim, &bytes)) return data_loss("shape is too large");
  }
  KBIT_ASSIGN_OR_RETURN(entry.shape, Shape::from(extents, static_cast<int>(dims.size())));
  KBIT_ASSIGN_OR_RETURN(entry.begin, parse_unsigned(value["data_offsets"][0], "data_offsets[0]"));
  KBIT_ASSIGN_OR_RETURN(entry.end, parse_unsigned(value["data_offsets"][1], "data_offsets[1]"));
  if (entry.end < entry.begin) {
    return data_loss("data_offsets [" + std::to_string(entry.begin) + ", " +
                     std::to_string(entry.end) + "] end before they begin");
  }
  if (entry.end - entry.begin != bytes) {
    return data_loss("data_offsets cover " + std::to_string(entry.end - entry.begin) +
                     " bytes but " + std::string(dtype_name(entry.dtype)) +
                     entry.shape.to_string() + " needs " + std::to_string(bytes));
  }
  return entry;
}

// The tensors must tile the data section exactly: sorted by offset, each begins where the last
// ended, and the last ends at the end of the file (the reference implementation's rule).
Status check_layout(std::vector<ParsedEntry>& entries, std::uint64_t data_bytes) {
  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    return a.entry.begin != b.entry.begin ? a.entry.begin < b.entry.begin
                                          : a.entry.end < b.entry.end;
  });
  std::uint64_t expected_begin = 0;
  for (const ParsedEntry& parsed : entries) {
    if (parsed.entry.begin != expected_begin) {
      const std::string problem = parsed.entry.begin < expected_begin
                                      ? "overlaps the tensor before it"
                                      : "leaves a gap after the tensor before it";
      return data_loss("tensor '" + parsed.name + "' at data_offsets [" +
                       std::to_string(parsed.entry.begin) + ", " +
                       std::to_string(parsed.entry.end) + "] " + problem);
    }
    if (parsed.entry.end > data_bytes) {
      return data_loss("tensor '" + parsed.name + "' ends at byte " +
                       std::to_string(parsed.entry.end) + " of the data section, which has " +
                       std::to_string(data_bytes) + " bytes: the file is truncated");
    }
    expected_begin = parsed.entry.end;
  }
  if (expected_begin != data_bytes) {
    return data_loss("the data section has " + std::to_string(data_bytes) +
                     " bytes but the tensors cover " + std::to_string(expected_begin));
  }
  return ok_status();
}

}  // namespace

struct SafetensorsFile::State {
  std::filesystem::path path;
  MappedFile file;
  const std::uint8_t* data_section = nullptr;
  std::vector<ParsedEntry> entries;  // sorted by offset
  std::map<std::string, std::size_t> index;
  std::map<std::string, std::string> metadata;
  // Tensors whose bytes are not aligned to their element size in the file are copied here, so
  // that every view is safely readable as its type.
  std::map<std::string, std::vector<std::uint64_t>> aligned_copies;
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<State> state) : state_(std::move(state)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  auto state = std::make_unique<State>();
  state->path = path;
  const auto fail = [&](const Status& status) { return status.with_context(path.string()); };
  KBIT_RETURN_IF_ERROR(state->file.map(path));
  const std::uint8_t* bytes = state->file.data();
  const std::uint64_t file_size = state->file.size();
  if (file_size < 8) {
    return fail(data_loss("the file has " + std::to_string(file_size) +
                          " bytes, fewer than the 8-byte header length: not a safetensors file "
                          "or truncated"));
  }
  std::uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = header_bytes << 8 | bytes[i];
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_size - 8) {
    return fail(data_loss("the header claims " + std::to_string(header_bytes) +
                          " bytes but the file has " + std::to_string(file_size - 8) +
                          " after the length: truncated or not a safetensors file"));
  }
  const char* header_text = reinterpret_cast<const char*>(bytes + 8);
  const nlohmann::json header =
      nlohmann::json::parse(header_text, header_text + header_bytes, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return fail(data_loss("the header is not a JSON object"));
  }
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return fail(data_loss("__metadata__ is not a JSON object"));
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          return fail(data_loss("__metadata__ field '" + key + "' is not a string"));
        }
        state->metadata[key] = text.get<std::string>();
      }
      continue;
    }
    Result<SafetensorsEntry> entry = parse_entry(value);
    if (!entry.ok()) return fail(entry.status().with_context("tensor '" + name + "'"));
    state->entries.push_back(ParsedEntry{name, *entry});
  }
  const std::uint64_t data_bytes = file_size - 8 - header_bytes;
  KBIT_RETURN_IF_ERROR(fail(check_layout(state->entries, data_bytes)));

  state->data_section = bytes + 8 + header_bytes;
  for (std::size_t i = 0; i < state->entries.size(); ++i) {
    const ParsedEntry& parsed = state->entries[i];
    state->index[parsed.name] = i;
    const std::uint8_t* start = state->data_section + parsed.entry.begin;
    const std::uint64_t size = parsed.entry.end - parsed.entry.begin;
    if (size > 0 && reinterpret_cast<std::uintptr_t>(start) % dtype_size(parsed.entry.dtype) != 0) {
      std::vector<std::uint64_t> copy((size + 7) / 8);
      std::memcpy(copy.data(), start, size);
      state->aligned_copies[parsed.name] = std::move(copy);
    }
  }
  return SafetensorsFile(std::move(state));
}

const std::filesystem::path& SafetensorsFile::path() const {
  return state_->path;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> names;
  for (const ParsedEntry& parsed : state_->entries) names.push_back(parsed.name);
  return names;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return state_->index.count(name) != 0;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return state_->metadata;
}

Result<SafetensorsEntry> SafetensorsFile::entry(const std::string& name) const {
  const auto found = state_->index.find(name);
  if (found == state_->index.end()) {
    return not_found(state_->path.string() + ": no tensor named '" + name + "'");
  }
  return state_->entries[found->second].entry;
}

Result<TensorView> SafetensorsFile::tensor(const std::string& name) const {
  KBIT_ASSIGN_OR_RETURN(const SafetensorsEntry found, entry(name));
  const auto copy = state_->aligned_copies.find(name);
  const void* data = copy != state_->aligned_copies.end()
                         ? static_cast<const void*>(copy->second.data())
                         : static_cast<const void*>(state_->data_section + found.begin);
  // The view type is mutable by design; the mapping is read-only and the contract says so.
  return TensorView(const_cast<void*>(data), found.dtype, found.shape);
}

void SafetensorsFile::release(const std::string& name) const {
  const auto found = state_->index.find(name);
  if (found == state_->index.end() || state_->aligned_copies.count(name) != 0) return;
  const SafetensorsEntry& e = state_->entries[found->second].entry;
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(state_->data_section + e.begin);
  const auto end = reinterpret_cast<std::uintptr_t>(state_->data_section + e.end);
  // Only pages wholly inside the tensor: its neighbours may still be in use.
  const std::uintptr_t first = (begin + page - 1) / page * page;
  const std::uintptr_t last = end / page * page;
  // Advice only: a failure leaves the pages resident, which is harmless.
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

}  // namespace kbit::io
