// Fuzz target of the safetensors reader: whatever the bytes, SafetensorsFile::open must either
// fail cleanly or return a file whose every tensor lies inside it. Built as a libFuzzer target
// with the `fuzz` preset (clang), and otherwise linked with testing/fuzz_driver.cc, which replays
// the corpus and mutates it for a bounded time (the CPU suite runs it, under ASan in `asan`).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kbit/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The reader maps files: give it a real one, in memory.
  const int fd = memfd_create("kbit-safetensors-fuzz", MFD_CLOEXEC);
  if (fd < 0) return 0;
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = write(fd, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  kbit::Result<kbit::io::SafetensorsFile> file =
      kbit::io::SafetensorsFile::open("/proc/self/fd/" + std::to_string(fd));
  if (file.ok()) {
    // Read every byte of every tensor, so that ASan sees any view reaching past the mapping.
    volatile std::uint8_t sink = 0;
    for (const std::string& name : file->names()) {
      const kbit::TensorView tensor = file->tensor(name).value();
      const auto* bytes = static_cast<const std::uint8_t*>(tensor.data());
      for (std::size_t i = 0; i < tensor.nbytes(); ++i)
        sink = static_cast<std::uint8_t>(sink ^ bytes[i]);
    }
  }
  close(fd);
  return 0;
}
