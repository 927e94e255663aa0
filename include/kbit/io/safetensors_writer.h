// Writing safetensors files, atomically: the bytes go to a temporary file beside the target,
// which is renamed over it only once complete, so a failure never leaves a partial file.
//
// Layout as the reference implementation writes it: the header is compact JSON with
// "__metadata__" first (when given) and the tensors in the order given, padded with spaces to a
// multiple of 8 bytes so that the data section is 8-byte aligned; tensor data follows in the
// same order, each tensor's bytes contiguous.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::io {

struct NamedTensor {
  std::string name;
  TensorView tensor;  // contiguous, in host memory
};

// Requires: unique, non-empty names other than "__metadata__"; contiguous host tensors.
// Fails naming the tensor at fault, or the file and the OS error.
// Orders tensors as the reference writer (safetensors' Python binding, which transformers and PEFT
// use) lays them out: by dtype, descending in its enum (I64, F32, I32, BF16, F16, I8, U8), then
// by name, bytewise ascending (spec 10.2). Written in this order, a file is byte-identical to
// the reference's.
void sort_in_reference_order(std::vector<NamedTensor>& tensors);

Status write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace kbit::io
