// UTF-8 helpers for the tokenizer: validation, Rust-style lossy decoding, code point iteration,
// and GPT-2's byte-level alphabet (every byte as a printable code point).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kbit::tokenizer::internal {

// Length of the valid UTF-8 sequence at bytes[pos], or 0 if none starts there. When 0,
// `*invalid_length` (if given) receives the length of the maximal invalid subpart (>= 1), the
// unit that Rust's String::from_utf8_lossy replaces with one U+FFFD.
std::size_t utf8_sequence_length(std::string_view bytes, std::size_t pos,
                                 std::size_t* invalid_length = nullptr);

// Offset of the first byte that is not part of valid UTF-8, or nullopt when all is valid.
std::optional<std::size_t> find_invalid_utf8(std::string_view bytes);

// `bytes` as UTF-8, each maximal invalid subpart replaced with U+FFFD (as Rust does).
std::string utf8_lossy(std::string_view bytes);

// Length of the character at text[pos]; `text` must be valid UTF-8.
inline std::size_t utf8_char_length(std::string_view text, std::size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// The code point at text[pos] of valid UTF-8.
char32_t utf8_decode_at(std::string_view text, std::size_t pos);

void utf8_append(std::string& out, char32_t code_point);

// Rust's char::is_whitespace (Unicode White_Space).
bool is_unicode_whitespace(char32_t c);

// GPT-2's bytes_to_unicode: byte b is written as the UTF-8 string byte_to_unicode()[b].
const std::array<std::string, 256>& byte_level_alphabet();
// The byte that code point `c` stands for in the byte-level alphabet, or -1.
int byte_level_byte(char32_t c);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace kbit::tokenizer::internal
