#include "quant/checks.h"

#include <cmath>
#include <string>

namespace kbit::quant {
namespace {

std::string dtype_list(std::initializer_list<DType> dtypes) {
  std::string text;
  for (DType dtype : dtypes) {
    if (!text.empty()) text += " or ";
    text += dtype_name(dtype);
  }
  return text;
}

}  // namespace

Status check_tensor(const TensorView& tensor, std::string_view name,
                    std::initializer_list<DType> dtypes, std::int64_t numel) {
  bool dtype_ok = false;
  for (DType dtype : dtypes) dtype_ok = dtype_ok || tensor.dtype() == dtype;
  if (!dtype_ok) {
    return invalid_argument(std::string(name) + " is " + tensor.describe() + "; it must be " +
                            dtype_list(dtypes));
  }
  if (tensor.numel() != numel) {
    return invalid_argument(std::string(name) + " is " + tensor.describe() + " with " +
                            std::to_string(tensor.numel()) + " elements; it must have " +
                            std::to_string(numel));
  }
  if (!tensor.is_contiguous()) {
    return invalid_argument(std::string(name) + " (" + tensor.describe() +
                            ") is not contiguous; pass a contiguous copy");
  }
  if (numel > 0 && tensor.data() == nullptr) {
    return invalid_argument(std::string(name) + " (" + tensor.describe() + ") has no data");
  }
  return ok_status();
}

Status check_float_tensor(const TensorView& tensor, std::string_view name) {
  if (tensor.numel() == 0) {
    return invalid_argument(std::string(name) + " (" + tensor.describe() +
                            ") is empty; quantization needs at least one value");
  }
  return check_tensor(tensor, name, {DType::kF32, DType::kF16, DType::kBF16}, tensor.numel());
}

Status check_same_device(std::initializer_list<const TensorView*> tensors) {
  const TensorView& first = **tensors.begin();
  for (const TensorView* tensor : tensors) {
    if (tensor->device() != first.device()) {
      return invalid_argument("tensors are on different devices (" + first.describe() + " and " +
                              tensor->describe() + "); move them to one device first");
    }
  }
  return ok_status();
}

Status check_device_supported(const TensorView& tensor) {
#if defined(KBIT_WITH_CUDA)
  (void)tensor;
  return ok_status();
#else
  if (tensor.device().is_cuda()) {
    return unimplemented("this kbit was built without CUDA, so " + tensor.describe() +
                         " cannot be processed; rebuild with the `cuda` preset");
  }
  return ok_status();
#endif
}

Status check_blocks_finite(const float* absmax, std::int64_t count, std::int64_t block_size,
                           std::int64_t n, std::string_view what) {
  for (std::int64_t block = 0; block < count; ++block) {
    if (!std::isfinite(absmax[block])) {
      const std::int64_t begin = block * block_size;
      const std::int64_t end = std::min(begin + block_size, n);
      return invalid_argument(std::string(what) + " holds NaN or Inf in elements [" +
                              std::to_string(begin) + ", " + std::to_string(end) +
                              "); quantization needs finite values");
    }
  }
  return ok_status();
}

}  // namespace kbit::quant
