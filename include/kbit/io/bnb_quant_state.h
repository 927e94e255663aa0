// The QuantState of a 4-bit weight as bitsandbytes serialises it into a state dict (spec 4.2):
// a JSON object stored as the UTF-8 bytes of the tensor `<prefix>weight.quant_state.
// bitsandbytes__{nf4,fp4}`, e.g.
//   {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096],
//    "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0724389553070068}
// kbit writes the same bytes as Python's json.dumps in bitsandbytes: default separators, its key
// order, and the float32 offset widened to double and printed as Python's repr.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kbit/core/tensor.h"
#include "kbit/quant/blockwise_4bit.h"

namespace kbit::io {

struct NestedQuantState {
  std::int64_t blocksize = 256;  // nested_dtype is always float32
  float offset = 0;
};

struct QuantState {
  quant::FourBitType type = quant::FourBitType::kNf4;
  std::int64_t blocksize = 64;
  DType dtype = DType::kBF16;  // of the weight when it was quantized
  Shape shape;                 // of the weight, e.g. [out_features, in_features]
  std::optional<NestedQuantState> nested;
};

// Parses a blob: any key order and whitespace, every field present with its type, and no other
// key (bitsandbytes asserts the key set). Errors name the field and what it must be.
Result<QuantState> parse_quant_state(std::string_view json);

// The blob bitsandbytes writes for `state`. Fails for a non-finite nested offset (Python would
// write NaN/Infinity, which is not JSON).
Result<std::string> serialize_quant_state(const QuantState& state);

// The state-dict key suffix: "bitsandbytes__nf4" or "bitsandbytes__fp4".
std::string quant_state_key_suffix(quant::FourBitType type);

// Python's repr() of a float: the shortest digits that read back as `value`, in fixed notation
// when 1e-4 <= |value| < 1e16 (always with a '.'), else as d.ddde±XX. Requires a finite value.
std::string python_float_repr(double value);

}  // namespace kbit::io
