#include "io/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace kbit::io {

Status FileSink::write(const void* bytes, std::size_t size) {
  if (size > 0 && std::fwrite(bytes, 1, size, file_) != size) {
    return internal_error(path_.string() + ": write failed: " + std::strerror(errno) +
                          " (is the disk full?)");
  }
  return ok_status();
}

Status write_file_atomically(const std::filesystem::path& path,
                             const std::function<Status(FileSink&)>& contents) {
  std::filesystem::path temporary = path;
  temporary += ".tmp-" + std::to_string(::getpid());
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  if (file == nullptr) {
    return invalid_argument(temporary.string() + ": cannot create: " + std::strerror(errno) +
                            " (is the folder writable?)");
  }
  FileSink sink(file, temporary);
  Status status = contents(sink);
  if (status.ok() && (std::fflush(file) != 0 || ::fsync(fileno(file)) != 0)) {
    status = internal_error(temporary.string() + ": flush failed: " + std::strerror(errno));
  }
  if (std::fclose(file) != 0 && status.ok()) {
    status = internal_error(temporary.string() + ": close failed: " + std::strerror(errno));
  }
  std::error_code error;
  if (!status.ok()) {
    std::filesystem::remove(temporary, error);
    return status;
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
