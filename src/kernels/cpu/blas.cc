#include "kernels/cpu/blas.h"

#include <cblas.h>

#include <mutex>

namespace kbit::kernels::cpu {
namespace {

void use_one_openblas_thread() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace

void sgemm_panel(const float* x, std::int64_t x_stride, std::int64_t rows, const float* panel,
                 std::int64_t features, std::int64_t width, bool accumulate, float* y,
                 std::int64_t y_stride) {
  use_one_openblas_thread();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows),
              static_cast<blasint>(features), static_cast<blasint>(width), 1.0f, x,
              static_cast<blasint>(x_stride), panel, static_cast<blasint>(width),
              accumulate ? 1.0f : 0.0f, y, static_cast<blasint>(y_stride));
}

void sgemm_transposed_accumulate(const float* a, std::int64_t a_stride, std::int64_t rows,
                                 const float* b, std::int64_t features, std::int64_t depth,
                                 float* y, std::int64_t y_stride) {
  use_one_openblas_thread();
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(rows),
              static_cast<blasint>(features), static_cast<blasint>(depth), 1.0f, a,
              static_cast<blasint>(a_stride), b, static_cast<blasint>(features), 1.0f, y,
              static_cast<blasint>(y_stride));
}

}  // namespace kbit::kernels::cpu
