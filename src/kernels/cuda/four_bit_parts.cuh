// What the 4-bit Linear kernels share (the GEMVs and the dequantization in linear_4bit.cu, the
// tensor-core GEMM in linear_4bit_gemm.cu): the weight as the kernels see it, its decode tables,
// a validated call, and the decode of codes into the values the matmul multiplies:
//   w = round_C(round_W(code_value · absmax))
// for the weight's dtype W and the compute dtype C (absmax decoded from its nested form if need
// be); and the output's rounding y = round_A(round_C(sum + round_C(bias))) for activations A.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kbit/core/dtype.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/codebooks.h"
#include "kbit/quant/decode_tiles.h"
#include "kbit/quant/nested_absmax.h"
#include "kernels/cuda/common.cuh"

namespace kbit::kernels::cuda {

// The tables the kernels decode with; each block copies them to shared memory, where lanes
// index them freely.
struct FourBitTables {
  float code_values[16];  // kNf4Values or kFp4Values
  float absmax_map[256];  // kDynamicSignedMap, for nested absmax
};

// The device side of FourBitWeightDevice.
struct FourBitSource {
  const std::uint8_t* packed;
  const float* absmax;  // nullptr when nested
  const std::uint8_t* absmax_codes;
  const float* nested_absmax;
  float nested_offset;
  int log2_block_size;
  bool packed_aligned;  // 16-byte aligned: vector loads
  bool decode_tiles;    // quant::FourBitLayout::kDecodeTiles, else bitsandbytes' layout
  // Where the call takes the product decode and the weight has them (FourBitWeightDevice): the
  // bits of round_C(absmax) of each block, C the call's compute dtype, in the layout's absmax
  // order (AbsmaxForm::kRounded); else nullptr.
  const std::uint16_t* rounded_absmax;
};

inline FourBitTables make_tables(quant::FourBitType type) {
  const auto& values = type == quant::FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
  FourBitTables tables{};
  std::copy(values.begin(), values.end(), tables.code_values);
  std::copy(quant::kDynamicSignedMap.begin(), quant::kDynamicSignedMap.end(), tables.absmax_map);
  return tables;
}

// One Linear4bit call, validated.
struct FourBitCall {
  const void* x;  // [rows, in] of dtype
  FourBitSource weight;
  FourBitTables tables;
  DType weight_dtype;
  const void* bias;  // [out] of dtype, or nullptr
  std::int64_t rows;
  std::int64_t in;
  std::int64_t out;
  DType compute_dtype;
  void* y;  // [rows, out] of dtype
  DType dtype;
  bool product_decode;  // takes_4bit_product_decode
  cudaStream_t stream;
};

// Calls body(A{}, C{}, W{}) with the CUDA types of the activation, compute and weight dtypes.
template <typename Body>
cudaError_t visit_4bit_types(const FourBitCall& call, Body&& body) {
  return visit_float_dtype(call.compute_dtype, [&](auto compute_tag) {
    return visit_float_dtype(call.weight_dtype, [&](auto weight_tag) {
      using C = typename decltype(compute_tag)::type;
      using W = typename decltype(weight_tag)::type;
      return call.dtype == DType::kF32 ? body(float{}, C{}, W{}) : body(__nv_bfloat16{}, C{}, W{});
    });
  });
}

// visit_4bit_types for the tensor-core kernels, whose compute dtype is f16 or bf16: an f32 one
// (which their callers exclude) gives cudaErrorInvalidValue without instantiating body for it.
template <typename Body>
cudaError_t visit_4bit_tensor_core_types(const FourBitCall& call, Body&& body) {
  return visit_4bit_types(call, [&](auto a, auto c, auto w) {
    if constexpr (std::is_same_v<decltype(c), float>) {
      return cudaErrorInvalidValue;
    } else {
      return body(a, c, w);
    }
  });
}

__device__ __forceinline__ void load_absmax_map(const FourBitTables& tables, float* absmax_map) {
  for (int i = static_cast<int>(threadIdx.x); i < 256; i += static_cast<int>(blockDim.x)) {
    absmax_map[i] = tables.absmax_map[i];
  }
}

// The form of a weight's absmax: found at run time (weight.absmax is null where it is nested), or
// known at compile time, so that a kernel issues one form's instructions only. kRounded reads
// weight.rounded_absmax instead of either, for the product decode only (its scale is the rounded
// value itself).
enum class AbsmaxForm { kRuntime, kPlain, kNested, kRounded };

// The form of a validated weight's absmax, found at run time.
__host__ __device__ __forceinline__ AbsmaxForm absmax_form(const FourBitSource& weight) {
  return weight.absmax != nullptr ? AbsmaxForm::kPlain : AbsmaxForm::kNested;
}

template <AbsmaxForm kForm>
__device__ __forceinline__ bool is_plain_absmax(const FourBitSource& weight) {
  if constexpr (kForm == AbsmaxForm::kRuntime) return absmax_form(weight) == AbsmaxForm::kPlain;
  return kForm == AbsmaxForm::kPlain;
}

// The raw absmax of a quantization block: load_absmax reads it, decoded_absmax decodes it. Kept
// apart so that a kernel can load a step ahead and decode where it uses the value, and the nested
// form's table lookup does not wait on the load where it is issued.
struct AbsmaxLoad {
  float value;         // the absmax, or the nested absmax of its group
  std::uint32_t code;  // the nested form's 8-bit code, or kRounded's bits
};

// The absmax of quantization block `block`, stored at `index` (the block itself in bitsandbytes'
// layout; ValuePlace's absmax_index in either). A nested absmax's group follows the block's own
// index in both layouts.
template <AbsmaxForm kForm = AbsmaxForm::kRuntime>
__device__ __forceinline__ AbsmaxLoad load_absmax(const FourBitSource& weight, std::int64_t index,
                                                  std::int64_t block) {
  if constexpr (kForm == AbsmaxForm::kRounded) return {0.0f, __ldg(weight.rounded_absmax + index)};
  if (is_plain_absmax<kForm>(weight)) return {__ldg(weight.absmax + index), 0};
  return {__ldg(weight.nested_absmax + block / quant::kNestedBlockSize),
          __ldg(weight.absmax_codes + index)};
}

// The nested form is decoded with the reference's two IEEE roundings, which the explicit
// intrinsics keep from being fused into one FMA.
template <AbsmaxForm kForm = AbsmaxForm::kRuntime>
__device__ __forceinline__ float decoded_absmax(const FourBitSource& weight, AbsmaxLoad load,
                                                const float* absmax_map) {
  static_assert(kForm != AbsmaxForm::kRounded, "a rounded absmax is a product decode's scale");
  if (is_plain_absmax<kForm>(weight)) return load.value;
  return __fadd_rn(__fmul_rn(absmax_map[load.code], load.value), weight.nested_offset);
}

// Where a weight value lies in a layout: the byte of its code and the index of its block's absmax.
struct ValuePlace {
  std::int64_t code_byte;
  std::int64_t absmax_index;
};

// The place of row `row`'s values [32 · chunk, 32 · chunk + 32) of W [out, in] in the weight's
// layout: their first code's byte, their block's absmax.
__device__ __forceinline__ ValuePlace chunk_place(const FourBitSource& weight, std::int64_t in,
                                                  std::int64_t row, std::int64_t chunk) {
  if (weight.decode_tiles) {
    return {quant::decode_tile_code_offset(in, row, chunk),
            quant::decode_tile_absmax_index(in, row, chunk / 2)};
  }
  const std::int64_t first_value = row * in + 32 * chunk;
  return {first_value / 2, first_value >> weight.log2_block_size};
}

// Two floats as a pair of C (low half first), each rounded to nearest even.
template <typename C>
__device__ __forceinline__ std::uint32_t pack_pair(float low, float high) {
  std::uint32_t bits;
  if constexpr (std::is_same_v<C, __half>) {
    const __half2 pair = __floats2half2_rn(low, high);
    std::memcpy(&bits, &pair, sizeof(bits));
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    std::memcpy(&bits, &pair, sizeof(bits));
  }
  return bits;
}

// code value · absmax rounded to the weight's dtype W, as a float ready to be rounded to C; the
// rounding to W is skipped where rounding to C alone gives the same value.
template <typename C, typename W>
__device__ __forceinline__ float scaled_code(float code_value, float absmax) {
  const float product = __fmul_rn(code_value, absmax);
  if constexpr (std::is_same_v<W, C> || std::is_same_v<W, float>) return product;
  return to_float(from_float<W>(product));
}

// The decoders of the tensor-core kernels. Each has shared-memory Tables that load() fills (the
// caller synchronises), a Scale made once per step from a block's absmax, and pair(), which
// returns values (2j, 2j + 1) of packed byte j of `word` as the matmul sees them, paired in C
// (value 2j, the high nibble, in the low half).
//
// ExactDecode: the rounding above, two f32 multiplies per pair.
template <typename C, typename W>
struct ExactDecode {
  struct Tables {
    float code_values[16];
  };
  using Scale = float;
  static __device__ __forceinline__ void load(const FourBitTables& tables, Tables& shared) {
    if (threadIdx.x < 16) shared.code_values[threadIdx.x] = tables.code_values[threadIdx.x];
  }
  static __device__ __forceinline__ Scale scale(float absmax) { return absmax; }
  static __device__ __forceinline__ std::uint32_t pair(const Tables& shared, int /*lane*/,
                                                       std::uint32_t word, int byte, Scale absmax) {
    const float first = shared.code_values[(word >> (8 * byte + 4)) & 0xfu];
    const float second = shared.code_values[(word >> (8 * byte)) & 0xfu];
    return pack_pair<C>(scaled_code<C, W>(first, absmax), scaled_code<C, W>(second, absmax));
  }
};

// The output of a fused kernel from its f32 sum: A(C(sum + C(bias[o]))), as the reference.
template <typename A, typename C>
__device__ __forceinline__ A finish_output(float sum, const A* __restrict__ bias, std::int64_t o) {
  const float rounded_bias = bias != nullptr ? to_float(from_float<C>(to_float(bias[o]))) : 0.0f;
  return from_float<A>(to_float(from_float<C>(sum + rounded_bias)));
}

}  // namespace kbit::kernels::cuda
