#include "kbit/core/tensor.h"

#include <cstring>

#include "core/cuda_runtime.h"
#include "kbit/core/allocator.h"

namespace kbit {

Shape::Shape(std::initializer_list<std::int64_t> dims) {
  for (std::int64_t dim : dims) {
    if (rank_ < kMaxDims) dims_[static_cast<std::size_t>(rank_++)] = dim;
  }
}

Result<Shape> Shape::from(const std::int64_t* dims, int rank) {
  if (rank < 0 || rank > kMaxDims) {
    return invalid_argument("a tensor of rank " + std::to_string(rank) + " has more than " +
                            std::to_string(kMaxDims) + " dimensions");
  }
  Shape shape;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] < 0) {
      return invalid_argument("dimension " + std::to_string(i) + " is negative (" +
                              std::to_string(dims[i]) + ")");
    }
    shape.dims_[static_cast<std::size_t>(i)] = dims[i];
  }
  shape.rank_ = rank;
  return shape;
}

std::int64_t Shape::numel() const {
  std::int64_t count = 1;
  for (int i = 0; i < rank_; ++i) count *= dims_[static_cast<std::size_t>(i)];
  return count;
}

bool Shape::operator==(const Shape& other) const {
  if (rank_ != other.rank_) return false;
  for (int i = 0; i < rank_; ++i) {
    if ((*this)[i] != other[i]) return false;
  }
  return true;
}

std::string Shape::to_string() const {
  std::string text = "[";
  for (int i = 0; i < rank_; ++i) {
    if (i > 0) text += ", ";
    text += std::to_string((*this)[i]);
  }
  return text + "]";
}

TensorView::TensorView(void* data, DType dtype, Shape shape, Device device)
    : data_(data), dtype_(dtype), shape_(shape), device_(device) {
  std::int64_t stride = 1;
  for (int i = shape_.rank() - 1; i >= 0; --i) {
    strides_[static_cast<std::size_t>(i)] = stride;
    stride *= shape_[i];
  }
}

bool TensorView::is_contiguous() const {
  std::int64_t expected = 1;
  for (int i = shape_.rank() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && stride(i) != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

Result<TensorView> TensorView::reshaped(Shape shape) const {
  if (!is_contiguous()) return invalid_argument(describe() + " is not contiguous");
  if (shape.numel() != numel()) {
    return invalid_argument("cannot view " + describe() + " as shape " + shape.to_string() +
                            ": the element counts differ");
  }
  return TensorView(data_, dtype_, shape, device_);
}

Result<TensorView> TensorView::flattened() const {
  return reshaped(Shape{numel()});
}

std::string TensorView::describe() const {
  return std::string(dtype_name(dtype_)) + shape_.to_string() + " on " + device_.to_string();
}

void Tensor::Release::operator()(void* ptr) const {
  if (allocator != nullptr) allocator->deallocate(ptr);
}

Result<Tensor> Tensor::empty(Shape shape, DType dtype, Device device) {
  Allocator* allocator = &host_allocator();
  if (device.is_cuda()) {
    KBIT_ASSIGN_OR_RETURN(allocator, cuda_allocator(device.index));
  }
  return empty_from(*allocator, shape, dtype, device);
}

Result<Tensor> Tensor::empty_from(Allocator& allocator, Shape shape, DType dtype, Device device) {
  const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  KBIT_ASSIGN_OR_RETURN(void* data, allocator.allocate(bytes));
  Tensor tensor;
  tensor.storage_ = std::unique_ptr<void, Release>(data, Release{&allocator});
  tensor.view_ = TensorView(data, dtype, shape, device);
  return tensor;
}

Status zero_tensor(TensorView tensor) {
  if (!tensor.is_contiguous()) {
    return invalid_argument("zero_tensor needs a contiguous tensor, got " + tensor.describe());
  }
  if (tensor.device().is_cuda()) return detail::cuda_zero(tensor.data(), tensor.nbytes());
  std::memset(tensor.data(), 0, tensor.nbytes());
  return ok_status();
}

Status copy_tensor(const TensorView& src, TensorView dst) {
  if (src.dtype() != dst.dtype() || !(src.shape() == dst.shape())) {
    return invalid_argument("cannot copy " + src.describe() + " into " + dst.describe() +
                            ": dtype and shape must match");
  }
  if (!src.is_contiguous() || !dst.is_contiguous()) {
    return invalid_argument("copy_tensor needs contiguous tensors, got " + src.describe() +
                            " and " + dst.describe());
  }
  if (src.nbytes() == 0) return ok_status();
  if (src.device().is_cpu() && dst.device().is_cpu()) {
    std::memcpy(dst.data(), src.data(), src.nbytes());
    return ok_status();
  }
  return detail::cuda_copy(dst.data(), src.data(), src.nbytes());
}

}  // namespace kbit
