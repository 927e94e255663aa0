#include "tokenizer/utf8.h"

namespace kbit::tokenizer::internal {

std::size_t utf8_sequence_length(std::string_view bytes, std::size_t pos,
                                 std::size_t* invalid_length) {
  const auto at = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const unsigned char lead = at(pos);
  std::size_t need = 0;
  unsigned char second_lo = 0x80;
  unsigned char second_hi = 0xBF;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) second_lo = 0xA0;
    if (lead == 0xED) second_hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) second_lo = 0x90;
    if (lead == 0xF4) second_hi = 0x8F;
  } else {
    if (invalid_length != nullptr) *invalid_length = 1;
    return 0;
  }
  for (std::size_t k = 1; k < need; ++k) {
    const bool ok =
        pos + k < bytes.size() && (k == 1 ? at(pos + k) >= second_lo && at(pos + k) <= second_hi
                                          : at(pos + k) >= 0x80 && at(pos + k) <= 0xBF);
    if (!ok) {
      if (invalid_length != nullptr) *invalid_length = k;
      return 0;
    }
  }
  return need;
}

std::optional<std::size_t> find_invalid_utf8(std::string_view bytes) {
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const std::size_t length = utf8_sequence_length(bytes, pos);
    if (length == 0) return pos;
    pos += length;
  }
  return std::nullopt;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    std::size_t invalid = 0;
    const std::size_t length = utf8_sequence_length(bytes, pos, &invalid);
    if (length == 0) {
      out += kReplacementChar;
      pos += invalid;
    } else {
      out.append(bytes.substr(pos, length));
      pos += length;
    }
  }
  return out;
}

char32_t utf8_decode_at(std::string_view text, std::size_t pos) {
  const auto at = [&](std::size_t i) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[i]));
  };
  const char32_t lead = at(pos);
  if (lead < 0x80) return lead;
  if (lead < 0xE0) return ((lead & 0x1F) << 6) | (at(pos + 1) & 0x3F);
  if (lead < 0xF0) {
    return ((lead & 0x0F) << 12) | ((at(pos + 1) & 0x3F) << 6) | (at(pos + 2) & 0x3F);
  }
  return ((lead & 0x07) << 18) | ((at(pos + 1) & 0x3F) << 12) | ((at(pos + 2) & 0x3F) << 6) |
         (at(pos + 3) & 0x3F);
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others are
// numbered upwards from U+0100 in byte order.
struct ByteLevelTables {
  std::array<std::string, 256> to_unicode;
  std::array<int, 324> to_byte{};

  ByteLevelTables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? static_cast<char32_t>(b) : next++;
      utf8_append(to_unicode[static_cast<std::size_t>(b)], c);
      to_byte[c] = b;
    }
  }
};

const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

const std::array<std::string, 256>& byte_level_alphabet() {
  return byte_level_tables().to_unicode;
}

int byte_level_byte(char32_t c) {
  const auto& table = byte_level_tables().to_byte;
  return c < table.size() ? table[c] : -1;
}

}  // namespace kbit::tokenizer::internal
