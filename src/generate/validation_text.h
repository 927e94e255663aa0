// The text the perplexity tests score: the last tenth of the shared models' training text
// (tinyshakespeare.txt from character int(0.9 * length)), as scripts/dev/make_*perplexity*.py cut
// it.
#pragma once

#include <fstream>
#include <iterator>
#include <string>

#include "testing/shared_data.h"

namespace kbit::generate {

inline std::string validation_text() {
  std::ifstream file(testing::shared_file("data/tinyshakespeare.txt"), std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return text.substr(static_cast<std::size_t>(0.9 * static_cast<double>(text.size())));
}

}  // namespace kbit::generate
