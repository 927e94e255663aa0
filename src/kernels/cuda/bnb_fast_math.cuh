// The float32 instructions of bitsandbytes' CUDA kernels, written out explicitly.
//
// bitsandbytes compiles with --use_fast_math, i.e. -ftz=true -prec-div=false -fmad=true
// (shared/spec/bnb-compat.md section 0). Its normalisation therefore runs on approximate
// instructions whose results differ from IEEE arithmetic in the last bit for ~13-28% of inputs,
// and every float32 operation flushes subnormal inputs and results to a zero of the same sign.
// kbit is compiled without fast math, so the kernels that must reproduce bitsandbytes' bits issue
// the same instructions through these helpers instead of relying on compiler flags:
//
//   bitsandbytes source         its PTX under fast math     here
//   1.0f / absmax               rcp.approx.ftz.f32          rcp_approx_ftz(absmax)
//   __fdividef(127.0f, absmax)  div.approx.ftz.f32          div_approx_ftz(127.0f, absmax)
//   value * scale               mul.rn.ftz.f32              mul_ftz(value, scale)
//   fmaxf(m, fabsf(value))      max.ftz.f32 of abs.ftz      max_ftz(m, fabsf(value))
//   a + b, a - b                add.ftz.f32, sub.ftz.f32    add_ftz(a, b), sub_ftz(a, b)
//   a * b + c (contracted)      fma.rn.ftz.f32              fma_ftz(a, b, c)
//   sqrtf(x)                    sqrt.approx.ftz.f32         sqrt_approx_ftz(x)
//   __powf(x, y)                lg2, mul, ex2 (approx.ftz)  pow_approx_ftz(x, y)
//
// Which products nvcc contracts into an FMA is read from the PTX of bitsandbytes' expressions
// compiled with --use_fast_math; the kernels write those FMAs out with fma_ftz.
//
// Being inline assembly, these are also never contracted with a neighbouring add into an FMA,
// which keeps the separate roundings that bitsandbytes' separate kernels have.
//
// Arithmetic that bitsandbytes leaves to PyTorch (the `- offset` and `+= offset` of nested absmax,
// LLM.int8 dequantization) is compiled without fast math there, so kbit uses plain IEEE
// intrinsics (__fadd_rn, __fsub_rn, __fmul_rn) for it.
#pragma once

namespace kbit::kernels::cuda {

// Approximate 1/x (max error 1 ulp), subnormal x read as 0, so 1/0 = +inf.
__device__ __forceinline__ float rcp_approx_ftz(float x) {
  float result;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
  return result;
}

// Approximate a/b (max error 2 ulp), subnormals flushed.
__device__ __forceinline__ float div_approx_ftz(float a, float b) {
  float result;
  asm("div.approx.ftz.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
}

// a*b rounded to nearest even; subnormal inputs and a subnormal result become a signed zero.
__device__ __forceinline__ float mul_ftz(float a, float b) {
  float result;
  asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
}

// max(a, b) with subnormals read as zero; a NaN operand yields the other operand.
__device__ __forceinline__ float max_ftz(float a, float b) {
  float result;
  asm("max.ftz.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
}

// a+b and a-b rounded to nearest even, subnormals flushed.
__device__ __forceinline__ float add_ftz(float a, float b) {
  float result;
  asm("add.rn.ftz.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
}
__device__ __forceinline__ float sub_ftz(float a, float b) {
  float result;
  asm("sub.rn.ftz.f32 %0, %1, %2;" : "=f"(result) : "f"(a), "f"(b));
  return result;
}

// a*b+c with one rounding, subnormals flushed.
__device__ __forceinline__ float fma_ftz(float a, float b, float c) {
  float result;
  asm("fma.rn.ftz.f32 %0, %1, %2, %3;" : "=f"(result) : "f"(a), "f"(b), "f"(c));
  return result;
}

// Approximate square root, subnormal x read as 0.
__device__ __forceinline__ float sqrt_approx_ftz(float x) {
  float result;
  asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(x));
  return result;
}

// __powf(base, exponent) under fast math: 2^(exponent · log2(base)) with the approximate log2 and
// exp2 instructions.
__device__ __forceinline__ float pow_approx_ftz(float base, float exponent) {
  float log2_base;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(log2_base) : "f"(base));
  float result;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(result) : "f"(mul_ftz(log2_base, exponent)));
  return result;
}

}  // namespace kbit::kernels::cuda
