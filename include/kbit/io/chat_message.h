// One turn of a conversation, as chat templates render it and as fine-tuning data holds it.
#pragma once

#include <string>

namespace kbit::io {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", … as the chat template knows them
  std::string content;

  bool operator==(const ChatMessage&) const = default;
};

}  // namespace kbit::io
