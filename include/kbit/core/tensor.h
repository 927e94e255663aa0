// Tensors: a non-owning TensorView (pointer, dtype, shape, strides, device) and an owning Tensor.
//
// Strides are in elements. Library functions take inputs as `const TensorView&` and only read
// them; outputs are `TensorView` by value and are written, never resized: the caller allocates.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "kbit/core/device.h"
#include "kbit/core/dtype.h"
#include "kbit/core/status.h"

namespace kbit {

class Allocator;

constexpr int kMaxDims = 8;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  static Result<Shape> from(const std::int64_t* dims, int rank);

  int rank() const { return rank_; }
  std::int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t numel() const;
  bool operator==(const Shape& other) const;
  // "[64, 1000]"
  std::string to_string() const;

 private:
  std::array<std::int64_t, kMaxDims> dims_{};
  int rank_ = 0;
};

class TensorView {
 public:
  TensorView() = default;
  // A contiguous row-major view.
  TensorView(void* data, DType dtype, Shape shape, Device device = Device::cpu());

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  std::int64_t stride(int dim) const { return strides_[static_cast<std::size_t>(dim)]; }
  Device device() const { return device_; }
  int rank() const { return shape_.rank(); }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  // The same memory seen with another shape of equal numel; requires a contiguous view.
  Result<TensorView> reshaped(Shape shape) const;
  // A 1-D view of all elements; requires a contiguous view.
  Result<TensorView> flattened() const;

  // "bf16[64, 1000] on cpu"
  std::string describe() const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::array<std::int64_t, kMaxDims> strides_{};
  Device device_;
};

// Owns a contiguous buffer from an Allocator. Move-only.
class Tensor {
 public:
  Tensor() = default;
  // Uninitialised contiguous storage on `device`. Fails with kOutOfMemory, or kUnimplemented
  // for a CUDA device in a build without CUDA.
  static Result<Tensor> empty(Shape shape, DType dtype, Device device = Device::cpu());
  // As empty(), with the storage from `allocator` (which must outlive the tensor and give memory
  // usable on `device`), e.g. cuda_managed_allocator() for paged state.
  static Result<Tensor> empty_from(Allocator& allocator, Shape shape, DType dtype, Device device);

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }  // NOLINT: a Tensor is usable as a view
  template <typename T>
  T* data_as() const {
    return view_.data_as<T>();
  }
  DType dtype() const { return view_.dtype(); }
  const Shape& shape() const { return view_.shape(); }
  Device device() const { return view_.device(); }
  std::int64_t numel() const { return view_.numel(); }
  std::size_t nbytes() const { return view_.nbytes(); }

 private:
  struct Release {
    Allocator* allocator;
    void operator()(void* ptr) const;
  };
  std::unique_ptr<void, Release> storage_{nullptr, Release{nullptr}};
  TensorView view_;
};

// Sets every byte of `tensor` (contiguous) to zero on its device; CUDA work completes before
// returning.
Status zero_tensor(TensorView tensor);

// Copies src into dst: same dtype and shape, both contiguous, any devices (host <-> CUDA and
// CUDA <-> CUDA go through cudaMemcpy and complete before returning).
Status copy_tensor(const TensorView& src, TensorView dst);

}  // namespace kbit
