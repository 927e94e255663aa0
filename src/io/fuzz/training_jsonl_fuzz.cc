// Fuzz target of the training-data reader: whatever the bytes, parse_training_jsonl must fail
// cleanly or return a dataset that keeps its contract (at least one example, every example of the
// dataset's layout, lines increasing, non-empty roles). Built like safetensors_fuzz.cc: libFuzzer
// with the `fuzz` preset, else the bounded driver.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kbit/io/training_jsonl.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const kbit::Result<kbit::io::TrainingDataset> dataset =
      kbit::io::parse_training_jsonl(text, "fuzz input");
  if (!dataset.ok()) return 0;
  if (dataset->examples.empty()) std::abort();
  std::int64_t previous_line = 0;
  for (const kbit::io::TrainingExample& example : dataset->examples) {
    if (example.line <= previous_line) std::abort();
    previous_line = example.line;
    const bool chat = dataset->layout == kbit::io::TrainingLayout::kMessages;
    if (chat == example.messages.empty()) std::abort();
    for (const kbit::io::ChatMessage& message : example.messages) {
      if (message.role.empty()) std::abort();
    }
  }
  return 0;
}
