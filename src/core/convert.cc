#include "kbit/core/convert.h"

#include <cmath>
#include <limits>
#include <type_traits>

namespace kbit {
namespace {

// C++ types of the dtypes, float-like ones as float for arithmetic.
template <typename T>
double to_double(T value) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16_to_f32(value);
  } else if constexpr (std::is_same_v<T, f16>) {
    return f16_to_f32(value);
  } else {
    return static_cast<double>(value);
  }
}

template <typename Body>
void visit_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kF32:
      body(float{});
      return;
    case DType::kF16:
      body(f16{});
      return;
    case DType::kBF16:
      body(bf16{});
      return;
    case DType::kI8:
      body(std::int8_t{});
      return;
    case DType::kU8:
      body(std::uint8_t{});
      return;
    case DType::kI32:
      body(std::int32_t{});
      return;
    case DType::kI64:
      body(std::int64_t{});
      return;
  }
}

template <typename T>
constexpr bool is_float_like =
    std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// One element. Float sources go through float32, which holds every f16/bf16 value exactly.
template <typename From, typename To>
bool convert_element(From from, To* to) {
  if constexpr (is_float_like<From>) {
    const float value = static_cast<float>(to_double(from));
    if constexpr (std::is_same_v<To, float>) {
      *to = value;
    } else if constexpr (std::is_same_v<To, bf16>) {
      *to = f32_to_bf16(value);
    } else if constexpr (std::is_same_v<To, f16>) {
      *to = f32_to_f16(value);
    } else {
      const double truncated = std::trunc(static_cast<double>(value));
      if (!(truncated >= static_cast<double>(std::numeric_limits<To>::min()) &&
            truncated <= static_cast<double>(std::numeric_limits<To>::max()))) {
        return false;
      }
      *to = static_cast<To>(truncated);
    }
  } else {
    if constexpr (std::is_same_v<To, float>) {
      *to = static_cast<float>(from);
    } else if constexpr (std::is_same_v<To, bf16>) {
      // Through float32, as PyTorch converts integers to its 16-bit floats.
      *to = f32_to_bf16(static_cast<float>(from));
    } else if constexpr (std::is_same_v<To, f16>) {
      *to = f32_to_f16(static_cast<float>(from));
    } else {
      *to = static_cast<To>(from);  // C++20: modular, as two's complement wrap-around
    }
  }
  return true;
}

}  // namespace

Status convert_tensor(const TensorView& src, TensorView dst) {
  if (!src.device().is_cpu() || !dst.device().is_cpu() || !src.is_contiguous() ||
      !dst.is_contiguous()) {
    return invalid_argument("convert_tensor needs contiguous host tensors, got " + src.describe() +
                            " and " + dst.describe());
  }
  if (src.numel() != dst.numel()) {
    return invalid_argument("cannot convert " + src.describe() + " into " + dst.describe() +
                            ": the element counts differ");
  }
  std::int64_t bad_index = -1;
  visit_dtype(src.dtype(), [&](auto from_tag) {
    visit_dtype(dst.dtype(), [&](auto to_tag) {
      using From = decltype(from_tag);
      using To = decltype(to_tag);
      const From* from = src.data_as<const From>();
      To* to = dst.data_as<To>();
      for (std::int64_t i = 0; i < src.numel(); ++i) {
        if (!convert_element(from[i], &to[i])) {
          bad_index = i;
          return;
        }
      }
    });
  });
  if (bad_index >= 0) {
    return invalid_argument("element " + std::to_string(bad_index) + " of " + src.describe() +
                            " is NaN, Inf or outside the range of " +
                            std::string(dtype_name(dst.dtype())) + "; it has no integer value");
  }
  return ok_status();
}

}  // namespace kbit
