// Reading reference tensors from ../shared/golden in tests.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/io/safetensors.h"
#include "testing/shared_data.h"

namespace kbit::testing {

// Opens golden/<file_name> of the shared directory. Call KBIT_REQUIRE_SHARED_DIR() first.
inline Result<io::SafetensorsFile> open_golden(const std::string& file_name) {
  return io::SafetensorsFile::open(shared_file("golden/" + file_name));
}

// The bytes of tensor `name` as a vector of T (requires sizeof(T) to match the element size);
// adds a test failure and returns an empty vector when it is missing.
template <typename T>
std::vector<T> golden_values(const io::SafetensorsFile& file, const std::string& name) {
  Result<TensorView> tensor = file.tensor(name);
  if (!tensor.ok()) {
    ADD_FAILURE() << tensor.status().to_string();
    return {};
  }
  std::vector<T> values(tensor->nbytes() / sizeof(T));
  std::memcpy(values.data(), tensor->data(), tensor->nbytes());
  return values;
}

}  // namespace kbit::testing
