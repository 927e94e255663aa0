// NF4/FP4 blockwise quantization on the GPU (contract: kbit/quant/blockwise_4bit.h; arithmetic:
// shared/spec/bnb-compat.md section 2, with bitsandbytes' fast-math instructions, see
// bnb_fast_math.cuh).
//
// Quantize: each thread takes 8 consecutive values (one 16-byte load for f16/bf16, two for f32)
// and writes their 4 packed bytes. The bs/8 threads of one quantization block find its absmax
// together (group_max), then each normalises with the block's approximate reciprocal and encodes
// with kernels/code_rules.h.
//
// Dequantize: memory-bound (2.5 bytes moved per value for bf16 output). The unit is a word of 4
// packed bytes = 8 values; a grid sized to the device strides over the words so that consecutive
// threads take consecutive words: each warp-wide load covers 128 contiguous bytes and each store
// (one 16-byte vector per thread for f16/bf16) 512. Every thread issues the loads of four words,
// and their absmax, before decoding any, to keep enough reads in flight. A word never straddles a
// quantization block (block sizes are multiples of 32). The code values sit in shared memory,
// where the 16 entries occupy 16 banks and a warp's lookups never conflict. The last n % 8
// values, or everything when the pointers are misaligned, go through a one-value-per-thread
// kernel.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kbit/quant/codebooks.h"
#include "kernels/code_rules.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/quant_launchers.h"

namespace kbit::kernels::cuda {
namespace {

// The 16 code values (NF4 or FP4) of codebooks.h.
struct FourBitCodeValues {
  float values[16];
};

constexpr int kQuantizeThreads = 256;
constexpr int kValuesPerWord = 8;  // dequantize: 4 packed bytes
constexpr int kDequantizeThreads = 256;
constexpr int kWordsInFlight = 4;

FourBitCodeValues make_code_values(quant::FourBitType type) {
  const auto& values = type == quant::FourBitType::kNf4 ? quant::kNf4Values : quant::kFp4Values;
  FourBitCodeValues table{};
  for (int k = 0; k < 16; ++k) table.values[k] = values[k];
  return table;
}

// input [n] -> packed [ceil(n/2)], absmax [ceil(n / block_size)]. Each block of block_size values
// belongs to a group of block_size / 8 = 2^log2_group_threads threads; blockDim.x is a multiple of
// the group size, at most 512.
template <typename T, quant::FourBitType kType>
__global__ void __launch_bounds__(512)
    quantize_4bit_kernel(const T* __restrict__ input, std::int64_t n, int log2_group_threads,
                         bool input_aligned, bool packed_aligned,
                         const __grid_constant__ FourBitEncodeTables tables,
                         std::uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  __shared__ std::uint8_t rank_to_bits[8];  // indexed by a run-time rank: shared, not a parameter
  __shared__ float warp_partials[512 / 32];
  if (threadIdx.x < 8) rank_to_bits[threadIdx.x] = tables.fp4_rank_to_bits[threadIdx.x];
  __syncthreads();

  const std::int64_t thread = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t first = thread * 8;
  float values[8];
  load_8_values(input, first, n, input_aligned && first + 8 <= n, values);

  float block_absmax = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) block_absmax = max_ftz(block_absmax, magnitude_for_absmax(values[k]));
  block_absmax = group_max(block_absmax, 1 << log2_group_threads, warp_partials);
  if (first >= n) return;

  const bool finite = block_absmax <= FLT_MAX;
  if ((threadIdx.x & ((1u << log2_group_threads) - 1)) == 0) {
    absmax[thread >> log2_group_threads] = finite ? block_absmax : __int_as_float(0x7fc00000);
  }
  // bitsandbytes: `local_abs_max = 1.0f / local_abs_max`, then `vals[j] * local_abs_max`.
  const float reciprocal = rcp_approx_ftz(block_absmax);
  std::uint32_t word = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float x = mul_ftz(values[k], reciprocal);
    const std::uint32_t code = kType == quant::FourBitType::kNf4
                                   ? encode_nf4(x, tables.nf4_thresholds)
                                   : encode_fp4(x, tables.fp4_magnitude_thresholds, rank_to_bits);
    // Value 2j goes to the high nibble of byte j, which is bits 8j..8j+7 of the word.
    word |= code << (8 * (k / 2) + (k % 2 == 0 ? 4 : 0));
  }
  const std::int64_t first_byte = thread * 4;
  std::int64_t bytes = (n + 1) / 2 - first_byte;
  if (bytes >= 4 && packed_aligned) {
    *reinterpret_cast<std::uint32_t*>(packed + first_byte) = word;
  } else {
    if (bytes > 4) bytes = 4;
    for (int b = 0; b < bytes; ++b) {
      packed[first_byte + b] = static_cast<std::uint8_t>(word >> (8 * b));
    }
  }
}

// Decodes the 8 codes of one 32-bit word of packed bytes into floats times `scale`.
__device__ __forceinline__ void decode_word(std::uint32_t word, float scale, const float* lut,
                                            float (&values)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const std::uint32_t code = (word >> (8 * (k / 2) + (k % 2 == 0 ? 4 : 0))) & 0xfu;
    // bitsandbytes: `lut[code] * local_abs_max`, under -ftz.
    values[k] = mul_ftz(lut[code], scale);
  }
}

// packed [words] (4 bytes each), absmax [..] -> output [words * 8], 16-byte aligned.
template <typename T>
__global__ void __launch_bounds__(kDequantizeThreads)
    dequantize_4bit_kernel(const std::uint32_t* __restrict__ packed,
                           const float* __restrict__ absmax,
                           const __grid_constant__ FourBitCodeValues table, int log2_block_size,
                           std::int64_t words, T* __restrict__ output) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = table.values[threadIdx.x];
  __syncthreads();

  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       first < words; first += kWordsInFlight * stride) {
    std::uint32_t codes[kWordsInFlight];
    float scale[kWordsInFlight];
#pragma unroll
    for (int u = 0; u < kWordsInFlight; ++u) {
      const std::int64_t word = first + u * stride;
      if (word < words) {
        codes[u] = __ldcs(packed + word);
        scale[u] = __ldg(absmax + ((word * kValuesPerWord) >> log2_block_size));
      }
    }
#pragma unroll
    for (int u = 0; u < kWordsInFlight; ++u) {
      const std::int64_t word = first + u * stride;
      if (word >= words) break;
      float values[kValuesPerWord];
      decode_word(codes[u], scale[u], lut, values);
      store_8_values(output + word * kValuesPerWord, values);
    }
  }
}

// Values [first, n) one per thread: the tail after the full words, or everything when the
// pointers are not 16-byte aligned.
template <typename T>
__global__ void dequantize_4bit_values_kernel(const std::uint8_t* __restrict__ packed,
                                              const float* __restrict__ absmax,
                                              const __grid_constant__ FourBitCodeValues table,
                                              int log2_block_size, std::int64_t first,
                                              std::int64_t n, T* __restrict__ output) {
  const std::int64_t i = first + static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const std::uint8_t byte = packed[i / 2];
  const int code = i % 2 == 0 ? byte >> 4 : byte & 0xf;
  output[i] = from_float<T>(mul_ftz(table.values[code], absmax[i >> log2_block_size]));
}

template <typename T, quant::FourBitType kType>
cudaError_t launch_quantize(const T* input, std::int64_t n, std::int64_t block_size,
                            std::uint8_t* packed, float* absmax, cudaStream_t stream) {
  const int group_threads = static_cast<int>(block_size / 8);
  const int threads = group_threads > kQuantizeThreads ? group_threads : kQuantizeThreads;
  const std::int64_t blocks = (n + 8LL * threads - 1) / (8LL * threads);
  quantize_4bit_kernel<T, kType><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      input, n, log2_of(group_threads), is_aligned_16(input),
      reinterpret_cast<std::uintptr_t>(packed) % 4 == 0, four_bit_encode_tables(), packed, absmax);
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_4bit(const void* input, DType input_dtype, std::int64_t n,
                          quant::FourBitType type, std::int64_t block_size, std::uint8_t* packed,
                          float* absmax, cudaStream_t stream) {
  if (n <= 0 || !quant::is_valid_4bit_block_size(block_size)) return cudaErrorInvalidValue;
  return visit_float_dtype(input_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    const T* typed_input = static_cast<const T*>(input);
    return type == quant::FourBitType::kNf4
               ? launch_quantize<T, quant::FourBitType::kNf4>(typed_input, n, block_size, packed,
                                                              absmax, stream)
               : launch_quantize<T, quant::FourBitType::kFp4>(typed_input, n, block_size, packed,
                                                              absmax, stream);
  });
}

cudaError_t dequantize_4bit(const std::uint8_t* packed, const float* absmax,
                            quant::FourBitType type, std::int64_t block_size, std::int64_t n,
                            void* output, DType output_dtype, cudaStream_t stream) {
  if (n <= 0 || !quant::is_valid_4bit_block_size(block_size)) return cudaErrorInvalidValue;
  const FourBitCodeValues table = make_code_values(type);
  const int log2_block_size = log2_of(block_size);
  return visit_float_dtype(output_dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    T* typed_output = static_cast<T*>(output);
    const bool aligned = reinterpret_cast<std::uintptr_t>(packed) % 4 == 0 && is_aligned_16(output);
    const std::int64_t words = aligned ? n / kValuesPerWord : 0;
    if (words > 0) {
      int blocks = 0;
      const cudaError_t error =
          grid_stride_blocks(dequantize_4bit_kernel<T>, kDequantizeThreads, words, &blocks);
      if (error != cudaSuccess) return error;
      dequantize_4bit_kernel<T><<<blocks, kDequantizeThreads, 0, stream>>>(
          reinterpret_cast<const std::uint32_t*>(packed), absmax, table, log2_block_size, words,
          typed_output);
    }
    const std::int64_t first = words * kValuesPerWord;
    if (first < n) {
      constexpr int kThreads = 256;
      const std::int64_t blocks = (n - first + kThreads - 1) / kThreads;
      dequantize_4bit_values_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          packed, absmax, table, log2_block_size, first, n, typed_output);
    }
    return cudaGetLastError();
  });
}

}  // namespace kbit::kernels::cuda
