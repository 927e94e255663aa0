// Host-side launchers of the CUDA Linear layers, with the numerics of the CPU kernels they are
// tested against (kernels/cpu/llama_ops.h linear, kernels/cpu/quantized_linear.h):
//   linear_float  y = x · Wᵀ (+ bias), W in the activation dtype (f32 or bf16), through cuBLAS
//                 with f32 accumulation (never TF32); linear_float_backward_input its dx = dy · W
//   linear_4bit   bitsandbytes' Linear4bit: the weight dequantized inside the matmul
//   linear_int8   LLM.int8 (spec 6.3): activations quantized row-wise, outlier columns in
//                 floating point, int8 × int8 → int32 for the rest
//
// x, bias and y hold values of the activation dtype `dtype` (kF32 or kBF16), stored in it.
// Every pointer is device memory. Launchers queue work on the stream of `blas` and return the
// first error; none synchronises or allocates, so they can be captured in a CUDA graph
// (cuBLAS is given its workspace by LinearContext). The tensor-core 4-bit GEMV is launched to
// overlap the kernel before it (overlapped_launch.cuh); that changes no result.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "kbit/core/dtype.h"
#include "kbit/core/status.h"
#include "kbit/quant/blockwise_4bit.h"
#include "kbit/quant/decode_tiles.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cuda/int8_quantized_row.h"

namespace kbit::kernels::cuda {

// The handles, stream and scratch memory the Linear launchers share. One per stream; not
// thread safe. Owns its handles and its device workspace.
class LinearContext {
 public:
  // The shape of a Linear call: x [rows, in] times W [out, in]ᵀ.
  struct CallShape {
    std::int64_t rows = 1;
    std::int64_t in = 1;
    std::int64_t out = 1;
    bool input_gradient = false;  // a linear_4bit_backward_input call of this shape
  };
  // A context for calls of the shapes `calls` or smaller in every dimension (the workspace is
  // sized for the largest need among them, laid out as linear_workspace.h says, and taken from
  // kbit's caching allocator of the current device, so that its statistics count it). Fails with
  // kOutOfMemory, saying how much was needed and is free, when the workspace does not fit. The
  // cuBLAS handle runs on `stream`, never uses TF32 and reduces split-K partial sums in f32.
  static Result<std::unique_ptr<LinearContext>> create(cudaStream_t stream,
                                                       std::span<const CallShape> calls);
  // For calls up to max_rows × max_in × max_out.
  static Result<std::unique_ptr<LinearContext>> create(cudaStream_t stream, std::int64_t max_rows,
                                                       std::int64_t max_in, std::int64_t max_out);
  ~LinearContext();
  LinearContext(const LinearContext&) = delete;
  LinearContext& operator=(const LinearContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cublasLtHandle_t cublas_lt() const { return cublas_lt_; }
  // Scratch for the launchers: at least workspace_bytes() bytes, 256-byte aligned.
  void* workspace() const { return workspace_; }
  std::size_t workspace_bytes() const { return workspace_bytes_; }
  // What a context for these sizes holds in device memory (to plan memory before loading).
  static std::size_t workspace_bytes_for(std::int64_t max_rows, std::int64_t max_in,
                                         std::int64_t max_out);

  // The cuBLASLt algorithm chosen for a GEMM, by the launcher's own key (shape, alignments):
  // cuBLASLt's heuristic costs far more host time than a prompt chunk's GEMM takes on the GPU,
  // so each shape asks it once. nullopt: it has no algorithm for that shape.
  using GemmKey = std::array<std::int64_t, 5>;
  std::map<GemmKey, std::optional<cublasLtMatmulAlgo_t>>& lt_algorithms() { return lt_algorithms_; }

 private:
  LinearContext() = default;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublas_lt_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  int device_ = 0;  // whose caching allocator holds the workspace
  std::map<GemmKey, std::optional<cublasLtMatmulAlgo_t>> lt_algorithms_;
};

// ---- float --------------------------------------------------------------------------------------
// y[rows, out] = x[rows, in] · W[out, in]ᵀ (+ bias[out]), all of `dtype` (f32 or bf16), f32
// accumulation; with bf16 the sum (bias included) is rounded once, as linear_reference. One row
// with in a multiple of 8 (bf16) or 4 (f32) and 16-byte aligned x and W takes kbit's GEMV
// (linear_float_gemv.h), other calls cuBLAS; the two sum in different orders.
Status linear_float(LinearContext& context, const void* x, const void* weight, const void* bias,
                    std::int64_t rows, std::int64_t in, std::int64_t out, void* y, DType dtype);

// The gradient of linear_float's output with respect to its input: dx[rows, in] = dy[rows, out] ·
// W[out, in], all of `dtype` (f32 or bf16), f32 accumulation (never TF32); with bf16 the sum is
// rounded once. Uses no workspace but cuBLAS's, so a context of any sizes on the right stream
// serves. Refusals (kInvalidArgument): those of linear_float; rows = 0 does nothing.
Status linear_float_backward_input(LinearContext& context, const void* dy, const void* weight,
                                   std::int64_t rows, std::int64_t in, std::int64_t out, void* dx,
                                   DType dtype);

// ---- 4-bit --------------------------------------------------------------------------------------
// A 4-bit weight in device memory, as kernels/cpu/quantized_linear.h's FourBitWeight describes.
struct FourBitWeightDevice {
  const std::uint8_t* packed;  // [ceil(out · in / 2)]
  quant::FourBitType type;
  std::int64_t block_size;
  const float* absmax;               // [blocks], or nullptr when nested
  const std::uint8_t* absmax_codes;  // [blocks] or nullptr
  const float* nested_absmax;        // [ceil(blocks / 256)] or nullptr
  float nested_offset;
  DType weight_dtype;  // the dtype W had when quantized
  // Every kernel reads either layout; the decode tiles only where decode_tiles_apply.
  quant::FourBitLayout layout = quant::FourBitLayout::kBitsandbytes;
  // Optional, in the decode tiles: round_4bit_absmax's output [blocks] of dtype
  // rounded_absmax_dtype (f16 or bf16), which the tensor-core GEMV reads instead of the absmax
  // where the call takes the product decode in that compute dtype (the same bits: 2 bytes a block
  // read instead of 4, or of the nested form's two loads and arithmetic); nullptr for none.
  const void* rounded_absmax = nullptr;
  DType rounded_absmax_dtype = DType::kBF16;
};

// rounded [blocks] = round_C(absmax) of every quantization block of `weight` [out, in], C =
// compute_dtype (f16 or bf16), in the weight's absmax order (the layout's): the scale bitsandbytes'
// product decode multiplies by (FourBitDecode::kBitsandbytes), for FourBitWeightDevice's
// rounded_absmax. Queued on `stream`; `rounded` is device memory of 2 bytes a block.
Status round_4bit_absmax(const FourBitWeightDevice& weight, std::int64_t out, std::int64_t in,
                         DType compute_dtype, void* rounded, cudaStream_t stream);

// As Linear4bitJob (kernels/cpu/quantized_linear.h) with compute dtype `compute_dtype` (f32,
// f16 or bf16) and weight decode `decode`, then the result rounded to `dtype` (Linear4bit casts
// back to the input's dtype). Every kernel honours the decode.
// Layouts: those of is_supported_4bit_layout, and in a multiple of 32. No pointer needs any
// alignment beyond its element's (16-byte aligned x and packed take vector loads).
//
// The kernels, each reading every packed byte once (kAuto picks the first that applies, whole
// lines for one row only, beyond which half lines measured faster):
//   kTensorCoreGemvLines  rows <= kLinear4bitGemvMaxRows, compute dtype f16 or bf16, in a
//                         multiple of 256, quantization blocks of at least 64 values, x and
//                         packed 16-byte aligned, fewer than 2^32 quantization blocks: weights
//                         decoded in registers into MMAs, each group of four lanes reading whole
//                         128-byte lines of codes.
//   kTensorCoreGemv       the same with in a multiple of 128 and any block size, half lines.
//   kGemv                 rows <= kLinear4bitGemvMaxRows: decoded on the CUDA cores, any layout.
//   kTensorCoreGemm       any rows, on a GPU of compute capability 9.0, compute dtype f16 or
//                         bf16, the exact decode, in a multiple of 64, quantization blocks of
//                         at least 64 values, packed 16-byte aligned: weights decoded in registers
//                         into Hopper's warpgroup MMAs with x from shared memory, 128 features
//                         × 128 rows a block (linear_4bit_gemm.h); x of another dtype than the
//                         compute dtype, or misaligned, is converted into the workspace first.
//   kManyRows             any rows: chunks of weight dequantized into cuBLAS GEMMs.
// kAuto takes the GEMM for more than kLinear4bitGemvMaxRows rows where it applies and measured
// faster (tensor_core_gemm_preferred: up to 128 rows, 12 288 features or more). The tests and
// the kernel workbench name one to check and time it; a named kernel that does not apply to the
// call is an invalid argument.
inline constexpr std::int64_t kLinear4bitGemvMaxRows = 8;
enum class Linear4bitKernel {
  kAuto,
  kTensorCoreGemvLines,
  kTensorCoreGemv,
  kGemv,
  kTensorCoreGemm,
  kManyRows
};
Status linear_4bit(LinearContext& context, const void* x, const FourBitWeightDevice& weight,
                   const void* bias, std::int64_t rows, std::int64_t in, std::int64_t out,
                   DType compute_dtype, void* y, DType dtype,
                   cpu::FourBitDecode decode = cpu::FourBitDecode::kExact,
                   Linear4bitKernel kernel = Linear4bitKernel::kAuto);

// ---- Several layers of one input ----------------------------------------------------------------
// A decode step's q, k and v read the same x, and so do its gate and up, whose outputs only
// silu_mul reads: linear_4bit_layers and linear_int8_layers take such a group in one launch.
inline constexpr std::size_t kMaxFusedLayers = 3;
enum class LinearEpilogue {
  kStore,    // each layer's y gets its output
  kSiluMul,  // two layers, gate and up: gate's y gets silu_mul(gate, up); up's y is scratch
};

// ---- Several float layers of one input ----------------------------------------------------------
// One float layer of a group that reads the same x.
struct FloatLayer {
  const void* weight;  // [out, in] of the activation dtype
  const void* bias;    // [out] of the activation dtype, or nullptr
  std::int64_t out;
  void* y;  // [rows, out] of the activation dtype
};
// `layers` (1 to kMaxFusedLayers) applied to the same x [rows, in], each with the bits that
// linear_float(context, x, layer.weight, layer.bias, rows, in, layer.out, layer.y, dtype) gives:
// in one launch where they take the GEMV, else one call each. With kSiluMul the two layers have
// equal out, and gate's y receives what silu_mul (llama_launchers.h) computes from the two
// outputs; up's y may be overwritten. Every layer is validated as linear_float validates its call.
Status linear_float_layers(LinearContext& context, const void* x,
                           std::span<const FloatLayer> layers, std::int64_t rows, std::int64_t in,
                           DType dtype, LinearEpilogue epilogue = LinearEpilogue::kStore);

// ---- Several 4-bit layers of one input ----------------------------------------------------------
// One Linear4bit layer of a group that reads the same x.
struct FourBitLayer {
  FourBitWeightDevice weight;
  const void* bias;  // [out] of the activation dtype, or nullptr
  std::int64_t out;
  void* y;  // [rows, out] of the activation dtype
};
// `layers` (1 to kMaxFusedLayers) applied to the same x [rows, in], each with the bits that
// linear_4bit(context, x, layer.weight, layer.bias, rows, in, layer.out, compute_dtype, layer.y,
// dtype, decode) gives, in one launch of the tensor-core GEMV where it applies to every layer
// and their weights share the code type, the dtype, the absmax form (nested or not) and the
// layout (a decode step's q, k and v; its gate and up), else one linear_4bit call each. With
// kSiluMul the two layers have equal out, and gate's y receives what silu_mul (llama_launchers.h)
// computes from the two outputs; up's y may be overwritten. Every layer is validated as
// linear_4bit validates its call.
Status linear_4bit_layers(LinearContext& context, const void* x,
                          std::span<const FourBitLayer> layers, std::int64_t rows, std::int64_t in,
                          DType compute_dtype, DType dtype,
                          cpu::FourBitDecode decode = cpu::FourBitDecode::kExact,
                          LinearEpilogue epilogue = LinearEpilogue::kStore);

// ---- 4-bit input gradient ----------------------------------------------------------------------
// The gradient of linear_4bit's output with respect to its input, as bitsandbytes' MatMul4Bit
// backward computes it: dx [rows, in] = dy [rows, out] · W [out, in], with W dequantized by
// `decode` to compute_dtype (f32, f16 or bf16) and dy converted to it, the products summed in
// f32 and rounded once to dtype (f32 or bf16, of dy and dx). W is dequantized a chunk of output
// features at a time into the context's workspace (at most 64 MiB of it at a time), each chunk's
// product added to f32 sums by cuBLAS. The context must have been created for the call's shape with
// input_gradient set. Layouts and refusals: those of linear_4bit.
Status linear_4bit_backward_input(LinearContext& context, const void* dy,
                                  const FourBitWeightDevice& weight, std::int64_t rows,
                                  std::int64_t in, std::int64_t out, DType compute_dtype, void* dx,
                                  DType dtype,
                                  cpu::FourBitDecode decode = cpu::FourBitDecode::kExact);

// ---- 4-bit weight, dequantized whole ------------------------------------------------------------
// weight_out [out, in] (compute_dtype, 16-byte aligned) = W as linear_4bit's many-row path and
// linear_4bit_backward_input multiply it, decoded exactly (cpu::FourBitDecode::kExact). With it,
// linear_float and linear_float_backward_input give those calls' results up to the order of f32
// sums (for a compute dtype equal to the activation dtype and no bias), for callers that multiply
// one weight several times in a row and can hold it whole: training's recomputed forward and its
// backward. Queues one kernel on `stream`. Refusals (kInvalidArgument): linear_4bit's for the
// weight and sizes, and a null or unaligned weight_out.
Status dequantize_4bit_weight(const FourBitWeightDevice& weight, std::int64_t out, std::int64_t in,
                              DType compute_dtype, void* weight_out, cudaStream_t stream);

// ---- int8 ---------------------------------------------------------------------------------------
struct Int8WeightDevice {
  const std::int8_t* codes;  // CB [out, in]
  const float* row_absmax;   // SCB [out]
};
// As LinearInt8Job (kernels/cpu/quantized_linear.h) with activation dtype `dtype` and the bias
// of `dtype`: the same bits as linear_int8_reference except the order of the outlier columns'
// f32 sum.
Status linear_int8(LinearContext& context, const void* x, const Int8WeightDevice& weight,
                   const void* bias, std::int64_t rows, std::int64_t in, std::int64_t out,
                   float threshold, void* y, DType dtype);

// One LLM.int8 layer of a group that reads the same x.
struct Int8Layer {
  Int8WeightDevice weight;
  const void* bias;  // [out] of dtype, or nullptr
  std::int64_t out;
  void* y;  // [rows, out] of dtype
};
// `layers` (1 to kMaxFusedLayers) applied to the same x [rows, in], each with the bits that
// linear_int8(context, x, layer.weight, layer.bias, rows, in, layer.out, threshold, layer.y,
// dtype) gives: for one row, in one launch of the one-row GEMV (each block quantizes x once for
// every weight row it reads, or reads quantized_x), else one linear_int8 call each. With kSiluMul
// the two layers have equal out, and gate's y receives what silu_mul (llama_launchers.h) computes
// from the two outputs; up's y may be overwritten. Every layer is validated as linear_int8
// validates its call.
// quantized_x, where given, is x's quantization with this threshold as add_rms_norm wrote it
// (needs rows == 1, in a multiple of 16 and 16-byte aligned codes: kInvalidArgument otherwise);
// x is still read in its outlier columns.
Status linear_int8_layers(LinearContext& context, const void* x, std::span<const Int8Layer> layers,
                          std::int64_t rows, std::int64_t in, float threshold, DType dtype,
                          LinearEpilogue epilogue = LinearEpilogue::kStore,
                          const Int8QuantizedRow* quantized_x = nullptr);

// weight_out [out, in] (dtype f32 or bf16) = the matrix bitsandbytes' MatMul8bitLt backward
// multiplies the output gradient by, CB.to(dtype).mul_(SCB.unsqueeze(1).mul(1.0 / 127.0)): per
// element CB · fl32(SCB · 1/127), the product in f32 rounded once to dtype. With it,
// linear_float_backward_input gives the input gradient through a frozen int8 layer. Queues one
// kernel on `stream`. kInvalidArgument for another dtype, sizes below 1 or a null pointer.
Status dequantize_int8_weight(const Int8WeightDevice& weight, std::int64_t out, std::int64_t in,
                              DType dtype, void* weight_out, cudaStream_t stream);

}  // namespace kbit::kernels::cuda
