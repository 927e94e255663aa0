// CPU kernels of bitsandbytes' quantized Linear layers, with bitsandbytes' numerics:
//   linear_4bit   Linear4bit (spec 2.7, 3.3): y = x · dequantize(W)ᵀ (+ bias), the weight
//                 dequantized a block at a time inside the matmul, never as a whole copy
//   linear_int8   Linear8bitLt with has_fp16_weights=False (spec 6.3): activations quantized
//                 row-wise, outlier columns multiplied in floating point, int8 × int8 → int32
//
// Each has a plain reference kernel (the definition) and fast kernels; the *_op entry points
// choose by ExecutionOptions, as llama_ops.h does: the reference on one thread, or the fast
// kernels on the thread pool (a GEMV for a few rows, panels through a GEMM for more).
//
// Activations are f32 arrays holding values of some dtype (see llama_ops.h); every rounding to
// bf16/f16 below is round-to-nearest-even (kbit::f32_to_bf16 / f32_to_f16).
#pragma once

#include <cstdint>

#include "kbit/core/dtype.h"
#include "kbit/core/execution.h"
#include "kbit/quant/blockwise_4bit.h"

namespace kbit::kernels::cpu {

// ---- linear_4bit -------------------------------------------------------------------------------
// A 4-bit weight W [out_features, in_features] as bitsandbytes stores it: the n = out · in
// values flattened row-major, cut into blocks of block_size, two codes per byte (first value in
// the high nibble). Element (o, i) lies in block (o · in + i) / block_size.
struct FourBitWeight {
  const std::uint8_t* packed;  // [ceil(n / 2)]
  quant::FourBitType type;
  std::int64_t block_size;
  // Exactly one of the two absmax forms:
  const float* absmax;  // [blocks] f32, or nullptr when nested
  // Nested (double quantization, spec 3.3): absmax[b] =
  //   fl32(fl32(kDynamicSignedMap[absmax_codes[b]] · nested_absmax[b / 256]) + nested_offset)
  // (two roundings, as bitsandbytes' dequantize_4bit).
  const std::uint8_t* absmax_codes;  // [blocks] or nullptr
  const float* nested_absmax;        // [ceil(blocks / 256)] or nullptr
  float nested_offset;
  // The dtype W had when quantized (the QuantState's dtype): dequantize_4bit rounds
  // code value · absmax to it before the matmul converts it to the compute dtype.
  DType weight_dtype;  // f32, f16 or bf16
};

// The layouts the kernels accept: block_size one of bitsandbytes' (32, 64, ..., 4096), in_features
// even (every row starts on a byte), and block_size divides in_features or in_features divides
// block_size (a block never straddles a row boundary except by covering whole rows).
bool is_supported_4bit_layout(std::int64_t in_features, std::int64_t block_size);

// How a call decodes its weight values (compute dtype C, the weight's dtype W):
//   kExact         round_C(round_W(value(code) · absmax)), the product in f32: dequantize_4bit's
//                  values, which bitsandbytes' Linear4bit multiplies for more than one token.
//   kBitsandbytes  as bitsandbytes decides by the call: where takes_4bit_product_decode holds (a
//                  few rows, C f16 or bf16), its batch-1 kernel's (kgemm_4bit_inference_naive)
//                  round_C(round_C(value(code)) · round_C(absmax)), the product taken in C, which
//                  lets a GPU kernel multiply two values in one instruction; kExact otherwise.
//                  bitsandbytes takes that kernel for one row, kbit for up to
//                  kFourBitProductDecodeMaxRows.
enum class FourBitDecode { kExact, kBitsandbytes };
inline constexpr std::int64_t kFourBitProductDecodeMaxRows = 8;
bool takes_4bit_product_decode(FourBitDecode decode, std::int64_t rows, DType compute_dtype);

struct Linear4bitJob {
  const float* x;  // [rows, in_features]
  FourBitWeight weight;
  const float* bias;  // [out_features] or nullptr
  std::int64_t rows;
  std::int64_t in_features;
  std::int64_t out_features;
  // The compute dtype (f32, f16 or bf16). As Linear4bit.forward then torch's linear:
  //   xc = round_compute(x);  w = round_compute(round_weight_dtype(value(code) · absmax))
  //   y  = round_compute(Σ_i xc·w (f32 accumulation) + round_compute(bias))
  // so y holds values of the compute dtype. (bitsandbytes' batch-1 CUDA kernel rounds each
  // product to the compute dtype as well; kbit does not, and its tests state the tolerance.)
  DType compute_dtype;
  float* y;  // [rows, out_features]
  FourBitDecode decode = FourBitDecode::kExact;
};

// Items are output features: computes y[:, first_out:end_out).
void linear_4bit_reference(const Linear4bitJob& job, std::int64_t first_out, std::int64_t end_out);

// The fast kernels need in_features to be a multiple of 32 (whole 16-byte rows of codes), and
// read x prepared once per call by prepare_4bit_activations for their chunk size: rounded to the
// compute dtype, and each run of `chunk` values stored as its even-indexed values, then its
// odd-indexed ones (the order in which a kernel unpacks packed bytes: high nibble, low nibble).
// Each computes y[:, first_out:end_out): for rows <= kLinearGemvMaxRows dot products of
// per-block 16-entry lookup tables (a GEMV), for more rows weight panels dequantized to f32 and
// multiplied with OpenBLAS sgemm. Both sum in another order than the reference.
inline constexpr std::int64_t kLinear4bitAvx512Chunk = 32;
inline constexpr std::int64_t kLinear4bitAvx2Chunk = 16;
void prepare_4bit_activations(const Linear4bitJob& job, std::int64_t chunk,
                              float* prepared /* [rows, in_features] */);
void linear_4bit_avx512(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                        std::int64_t end_out);
void linear_4bit_avx2(const Linear4bitJob& job, const float* prepared, std::int64_t first_out,
                      std::int64_t end_out);

// The reference on one thread, or the fast kernel of the active instruction set on the thread
// pool (the reference there where in_features is not a multiple of 32, the CPU lacks AVX2 or the
// call takes the product decode).
void linear_4bit_op(const Linear4bitJob& job, const ExecutionOptions& options);

// ---- linear_int8 -------------------------------------------------------------------------------
// An int8 weight W [out_features, in_features] as Linear8bitLt holds it (spec 6.1).
struct Int8Weight {
  const std::int8_t* codes;  // CB [out_features, in_features], row-major
  const float* row_absmax;   // SCB [out_features]
  // Σ_i codes[o][i] per row, for kernels that shift activation codes to unsigned (VNNI); made
  // once at load by int8_code_row_sums.
  const std::int32_t* code_row_sums;  // [out_features]
};

// row_sums[o] = Σ_i codes[o · in_features + i] for o in [0, out_features).
void int8_code_row_sums(const std::int8_t* codes, std::int64_t out_features,
                        std::int64_t in_features, std::int32_t* row_sums);

struct LinearInt8Job {
  const float* x;  // [rows, in_features], values of activation_dtype
  Int8Weight weight;
  const float* bias;  // [out_features] or nullptr, values of bias_dtype
  DType bias_dtype;   // f32, f16 or bf16
  std::int64_t rows;
  std::int64_t in_features;
  std::int64_t out_features;
  float threshold;  // τ >= 0; 0: no outlier decomposition
  // X's dtype (f32, f16 or bf16). Spec 6.3 step by step:
  //   1-4. X16 = f16(x); outlier columns {j : some |X16[i][j]| >= τ} (τ > 0);
  //        row statistics and codes of the non-outlier elements (kbit/quant/int8_rowwise.h),
  //        outlier columns coded 0
  //   5.   C = codes(X) · CBᵀ, exact in int32
  //   6.   Y16 = f16(fmaf(fl32(fl32(C · SCA[i]) · SCB[o]), 1/127², bias16)), bias16 = the bias
  //        when bias_dtype is f16, else 0 and then Y16 = f16(Y16 + bias); Y = round_X(Y16)
  //   7.   with outlier columns: Y = round_X(Y + Σ_{j∈cols} x[i][j] · round_X(W'[o][j])) with
  //        W' = fl32(fl32(CB · SCB) · 1/127) the int8-dequantized weight (f32 accumulation)
  DType activation_dtype;
  float* y;  // [rows, out_features]
};

// Computes the whole job (activation quantization first, then the output features).
void linear_int8_reference(const LinearInt8Job& job);
// Activation quantization by the fast row-wise kernels (int8_rowwise.h), then the int32 products
// with AVX-512 VNNI where the CPU has it (else the reference's) on the thread pool; the same
// bits as linear_int8_reference. code_row_sums may be null here (they are then made per call).
void linear_int8_op(const LinearInt8Job& job, const ExecutionOptions& options);

// Steps 1-4 of linear_int8, as the kernels below read them.
struct Int8Activations {
  const std::int8_t* codes;             // CA [rows, in_features]
  const float* row_absmax;              // SCA [rows]
  const std::int64_t* outlier_columns;  // [outlier_count], ascending
  std::int64_t outlier_count;
};
// Steps 5-7 for the output features [first_out, end_out) of every row. The VNNI kernel needs
// job.weight.code_row_sums.
void linear_int8_outputs_reference(const LinearInt8Job& job, const Int8Activations& activations,
                                   std::int64_t first_out, std::int64_t end_out);
void linear_int8_outputs_avx512_vnni(const LinearInt8Job& job, const Int8Activations& activations,
                                     std::int64_t first_out, std::int64_t end_out);

}  // namespace kbit::kernels::cpu
