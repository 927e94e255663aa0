// Moves weights to a GPU while a model loads: each host tensor (normally a view of the mapped
// checkpoint) is copied a chunk at a time into one of two pinned staging buffers and from there
// to the device, so that the host copy of one chunk overlaps the transfer of the previous one and
// no more than one tensor is ever in flight. Conversions to the dtype the model computes in
// happen on the device. Also makes random weights on the device (kbit bench --random-weights).
//
// Work is queued on the loader's own stream; a tensor returned is ready for work queued on that
// stream (stream()) and for everything after finish(). Not thread safe.
//
// This header is free of CUDA types; in builds without CUDA create() fails with kUnimplemented.
#pragma once

#include <cstdint>
#include <memory>

#include "kbit/core/status.h"
#include "kbit/core/tensor.h"

namespace kbit::model::cuda {

class DeviceLoader {
 public:
  static Result<std::unique_ptr<DeviceLoader>> create(Device device);
  ~DeviceLoader();
  DeviceLoader(const DeviceLoader&) = delete;
  DeviceLoader& operator=(const DeviceLoader&) = delete;

  Device device() const { return device_; }
  Stream stream() const { return stream_; }

  // A device copy of the contiguous host tensor `host` in `dtype`: its own dtype for any
  // tensor, or another float dtype for a float one (converted on the device, rounding to
  // nearest even). The host pages may be released once this returns.
  Result<Tensor> upload(const TensorView& host, DType dtype);
  Result<Tensor> upload(const TensorView& host) { return upload(host, host.dtype()); }

  // A device tensor (f32, f16 or bf16) of normal(mean, stddev) samples: element i is
  // kbit::normal_sample(seed, i) (kbit/core/random.h), computed on the device in double
  // precision, then rounded to dtype.
  Result<Tensor> random(Shape shape, DType dtype, std::uint64_t seed, float mean, float stddev);

  // Waits for everything queued.
  Status finish();

 private:
  struct Staging;
  DeviceLoader(Device device, Stream stream, std::unique_ptr<Staging> staging);
  Device device_;
  Stream stream_;
  std::unique_ptr<Staging> staging_;
};

}  // namespace kbit::model::cuda
