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

}  // namespace kbit::kernels::cuda
