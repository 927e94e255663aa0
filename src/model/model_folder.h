// Writing a model folder whole: the commands that write one (kbit quantize, kbit merge) fill a
// staging folder beside the target and rename it into place only when complete, so a failure or
// an interruption never leaves a partial model behind.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kbit/core/status.h"
#include "kbit/io/checkpoint.h"
#include "kbit/io/safetensors_writer.h"
#include "kbit/model/llama_config.h"

namespace kbit::model {

// Requires: output_dir does not exist, its parent does (else kInvalidArgument naming them).
// Calls fill(staging) with an empty staging folder (output_dir + ".tmp-<pid>"), then renames it
// to output_dir; on fill's error, or the rename's, removes it and returns the error.
Status write_model_folder(const std::filesystem::path& output_dir,
                          const std::function<Status(const std::filesystem::path&)>& fill);

// A float checkpoint opened for rewriting: its config.json and mapped weights.
struct FloatModel {
  LlamaConfig config;
  io::Checkpoint checkpoint;
};

// Opens model_dir, refusing one already quantized by bitsandbytes (config.json has a
// quantization_config) with kInvalidArgument naming the folder and then `fix`.
Result<FloatModel> open_float_model(const std::filesystem::path& model_dir, const std::string& fix);

// Writes `tensors` as staging/model.safetensors, laid out as the reference writer does (spec
// 10.2) with transformers' metadata {"format": "pt"}.
Status write_model_weights(const std::filesystem::path& staging,
                           std::vector<io::NamedTensor> tensors);

// Copies model_dir's regular files into `staging` but its weights (*.safetensors and the shard
// index) and, when `config_too` is false, config.json: the tokenizer, generation config, chat
// template and the rest, as they are. A file of the same name in `staging` is replaced whole.
Status copy_model_files(const std::filesystem::path& model_dir,
                        const std::filesystem::path& staging, bool config_too);

}  // namespace kbit::model
