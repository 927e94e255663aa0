// Fuzz target of the quantization_config reader: whatever the bytes, parse_bnb_quantization_config
// must fail cleanly or return a config that the writer writes and the reader reads back equal, and
// whose skip patterns match without error. The Python-layout dumper is checked to be a fixed
// point. Built like safetensors_fuzz.cc: libFuzzer with the `fuzz` preset, else the bounded driver.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/io/bnb_quantization_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const kbit::Result<kbit::io::BnbQuantizationConfig> config =
      kbit::io::parse_bnb_quantization_config(text, "fuzz input");
  if (config.ok()) {
    const std::string written = kbit::io::bnb_quantization_config_json(*config);
    const kbit::Result<kbit::io::BnbQuantizationConfig> again =
        kbit::io::parse_bnb_quantization_config(written, "rewritten fuzz input");
    if (!again.ok() || !(*again == *config)) std::abort();
    const std::vector<std::string> patterns = kbit::io::effective_skip_modules(*config);
    for (const char* name : {"lm_head", "model.layers.0.mlp.down_proj", ""}) {
      if (!kbit::io::module_matches_skip_patterns(name, patterns).ok()) std::abort();
    }
  }
  const kbit::Result<std::string> dumped = kbit::io::python_json_dumps(text);
  if (dumped.ok()) {
    const kbit::Result<std::string> twice = kbit::io::python_json_dumps(*dumped);
    if (!twice.ok() || *twice != *dumped) std::abort();
  }
  return 0;
}
