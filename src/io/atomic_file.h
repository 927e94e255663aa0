// Files written whole or not at all: the contents go to a temporary file beside the target
// (its name + ".tmp-<pid>"), which is flushed to disk and renamed over the target only once
// complete. On any failure the temporary file is removed and the target is left as it was.
// Errors name the file, the OS's reason and what to check.
#pragma once

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "kbit/core/status.h"

namespace kbit::io {

// Where write_file_atomically's `contents` writes.
class FileSink {
 public:
  // Appends `size` bytes, or fails naming the file and the OS error.
  Status write(const void* bytes, std::size_t size);

 private:
  friend Status write_file_atomically(const std::filesystem::path&,
                                      const std::function<Status(FileSink&)>&);
  FileSink(std::FILE* file, const std::filesystem::path& path) : file_(file), path_(path) {}
  std::FILE* file_;
  const std::filesystem::path& path_;
};

// Writes `path` with what `contents` writes into the sink; `contents`' error is returned as it
// is (and nothing is written).
Status write_file_atomically(const std::filesystem::path& path,
                             const std::function<Status(FileSink&)>& contents);

}  // namespace kbit::io
