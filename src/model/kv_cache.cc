#include <string>

#include "kbit/model/llama.h"

namespace kbit::model {

Status KvCache::truncate(std::int64_t new_size) {
  if (new_size < 0 || new_size > size_) {
    return invalid_argument("KvCache::truncate: new size " + std::to_string(new_size) +
                            " is outside [0, " + std::to_string(size_) + "] (positions held)");
  }
  size_ = new_size;
  return ok_status();
}

}  // namespace kbit::model
