// CudaLoraTrainingModel in a build without CUDA: there is none (cuda_lora_training_model.h).
#include "kbit/train/cuda_lora_training_model.h"

namespace kbit::train {

struct CudaLoraTrainingModel::Impl {};

CudaLoraTrainingModel::CudaLoraTrainingModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLoraTrainingModel::CudaLoraTrainingModel(CudaLoraTrainingModel&&) noexcept = default;
CudaLoraTrainingModel& CudaLoraTrainingModel::operator=(CudaLoraTrainingModel&&) noexcept = default;
CudaLoraTrainingModel::~CudaLoraTrainingModel() = default;

Result<CudaLoraTrainingModel> CudaLoraTrainingModel::create(const model::LlamaModel&,
                                                            const LoraState&, std::int64_t, DType) {
  return unimplemented("this build of kbit has no CUDA support; train on the CPU (--device cpu)");
}

std::vector<TrainableParameter> CudaLoraTrainingModel::parameters() {
  return {};
}

Result<double> CudaLoraTrainingModel::loss_and_gradients(std::span<const std::int32_t>,
                                                         std::span<const std::int32_t>,
                                                         std::int64_t) {
  return unimplemented("this build of kbit has no CUDA support");
}

void CudaLoraTrainingModel::set_dropout_seed(std::uint64_t) {}

Result<LoraState> CudaLoraTrainingModel::state() const {
  return unimplemented("this build of kbit has no CUDA support");
}

Status CudaLoraTrainingModel::save(const std::filesystem::path&) const {
  return unimplemented("this build of kbit has no CUDA support");
}

std::size_t CudaLoraTrainingModel::device_bytes() const {
  return 0;
}

}  // namespace kbit::train
