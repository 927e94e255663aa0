// Test access to the reference data in ../shared (golden outputs, models, specs).
//
// Tests find it through one setting, the KBIT_SHARED_DIR environment variable; .ci/run sets it.
// Where it is unset or missing, tests that need it are skipped with a message that says so.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "kbit/core/device.h"

namespace kbit::testing {

// The directory KBIT_SHARED_DIR names, if it is set and exists.
std::optional<std::filesystem::path> shared_dir();

// A file under the shared directory, e.g. shared_file("golden/quant4bit.safetensors").
std::filesystem::path shared_file(const std::string& relative_path);

}  // namespace kbit::testing

// Skips the current test unless ../shared is available.
#define KBIT_REQUIRE_SHARED_DIR()                                                             \
  do {                                                                                        \
    if (!::kbit::testing::shared_dir()) {                                                     \
      GTEST_SKIP() << "KBIT_SHARED_DIR is not set or does not exist: this test needs "        \
                      "the reference data in ../shared (run with KBIT_SHARED_DIR=../shared)"; \
    }                                                                                         \
  } while (false)

// Skips the current test unless a CUDA device is usable.
#define KBIT_REQUIRE_CUDA()                                                                \
  do {                                                                                     \
    if (!::kbit::cuda_available()) {                                                       \
      GTEST_SKIP() << "no CUDA device (or a build without CUDA): this test runs on a GPU"; \
    }                                                                                      \
  } while (false)
