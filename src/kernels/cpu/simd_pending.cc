// PLACEHOLDER until the AVX2/AVX-512 kernels land (this session): forwards to the reference.
#include "kernels/cpu/blockwise_4bit.h"
#include "kernels/cpu/blockwise_8bit.h"
#include "kernels/cpu/int8_rowwise.h"

namespace kbit::kernels::cpu {

void quantize_4bit_avx2(const Quantize4bitJob& j, std::int64_t b, std::int64_t e) { quantize_4bit_reference(j, b, e); }
void quantize_4bit_avx512(const Quantize4bitJob& j, std::int64_t b, std::int64_t e) { quantize_4bit_reference(j, b, e); }
void dequantize_4bit_avx2(const Dequantize4bitJob& j, std::int64_t b, std::int64_t e) { dequantize_4bit_reference(j, b, e); }
void dequantize_4bit_avx512(const Dequantize4bitJob& j, std::int64_t b, std::int64_t e) { dequantize_4bit_reference(j, b, e); }
void quantize_8bit_avx2(const Quantize8bitJob& j, std::int64_t b, std::int64_t e) { quantize_8bit_reference(j, b, e); }
void quantize_8bit_avx512(const Quantize8bitJob& j, std::int64_t b, std::int64_t e) { quantize_8bit_reference(j, b, e); }
void dequantize_8bit_avx2(const Dequantize8bitJob& j, std::int64_t b, std::int64_t e) { dequantize_8bit_reference(j, b, e); }
void dequantize_8bit_avx512(const Dequantize8bitJob& j, std::int64_t b, std::int64_t e) { dequantize_8bit_reference(j, b, e); }
void quantize_int8_rowwise_avx2(const Int8RowwiseJob& j, std::int64_t b, std::int64_t e) { quantize_int8_rowwise_reference(j, b, e); }
void quantize_int8_rowwise_avx512(const Int8RowwiseJob& j, std::int64_t b, std::int64_t e) { quantize_int8_rowwise_reference(j, b, e); }

}  // namespace kbit::kernels::cpu
