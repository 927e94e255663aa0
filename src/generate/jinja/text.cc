#include "generate/jinja/text.h"

#include <algorithm>

namespace kbit::generate::jinja {

namespace {

size_t utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xe) return 3;
  if ((lead >> 3) == 0x1e) return 4;
  return 1;  // a stray continuation byte counts as one character
}

uint32_t decode(const std::string& c) {
  const auto* b = reinterpret_cast<const unsigned char*>(c.data());
  switch (c.size()) {
    case 1:
      return b[0];
    case 2:
      return ((b[0] & 0x1fu) << 6) | (b[1] & 0x3fu);
    case 3:
      return ((b[0] & 0x0fu) << 12) | ((b[1] & 0x3fu) << 6) | (b[2] & 0x3fu);
    case 4:
      return ((b[0] & 0x07u) << 18) | ((b[1] & 0x3fu) << 12) | ((b[2] & 0x3fu) << 6) |
             (b[3] & 0x3fu);
    default:
      return 0xfffd;
  }
}

std::string encode(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return out;
}

// Latin Extended-A pairs letters as (upper, lower) at even/odd code points, except two runs that
// start at odd ones.
bool latin_a_pair_starts_odd(uint32_t c) {
  return (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
}

// Simple case mappings of ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic; other code
// points map to themselves.
uint32_t upper_cp(uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 0x20;
  if (c >= 0xe0 && c <= 0xfe && c != 0xf7) return c - 0x20;
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  if (c >= 0x100 && c <= 0x17e && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149) {
    const bool is_lower = latin_a_pair_starts_odd(c) ? (c % 2 == 0) : (c % 2 == 1);
    return is_lower ? c - 1 : c;
  }
  if (c == 0x131) return 'I';
  if (c == 0x17f) return 'S';
  if (c >= 0x3b1 && c <= 0x3c9) return c == 0x3c2 ? 0x3a3 : c - 0x20;
  if (c == 0x3ac) return 0x386;
  if (c >= 0x3ad && c <= 0x3af) return c - 0x25;
  if (c == 0x3cc) return 0x38c;
  if (c == 0x3cd || c == 0x3ce) return c - 0x3f;
  if (c >= 0x430 && c <= 0x44f) return c - 0x20;
  if (c >= 0x450 && c <= 0x45f) return c - 0x50;
  return c;
}

uint32_t lower_cp(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 0x20;
  if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 0x20;
  if (c == 0x178) return 0xff;
  if (c == 0x130) return 'i';  // Python gives "i̇"; close enough for chat templates
  if (c >= 0x100 && c <= 0x17e && c != 0x131 && c != 0x138 && c != 0x149) {
    const bool is_upper = latin_a_pair_starts_odd(c) ? (c % 2 == 1) : (c % 2 == 0);
    return is_upper ? c + 1 : c;
  }
  if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 0x20;
  if (c == 0x386) return 0x3ac;
  if (c >= 0x388 && c <= 0x38a) return c + 0x25;
  if (c == 0x38c) return 0x3cc;
  if (c == 0x38e || c == 0x38f) return c + 0x3f;
  if (c >= 0x410 && c <= 0x42f) return c + 0x20;
  if (c >= 0x400 && c <= 0x40f) return c + 0x50;
  return c;
}

std::string upper(const std::string& c) {
  if (c.size() == 1)
    return std::string(1, static_cast<char>(upper_cp(static_cast<unsigned char>(c[0]))));
  const uint32_t cp = decode(c);
  if (cp == 0xdf) return "SS";  // Python upper-cases sharp s to two letters
  const uint32_t mapped = upper_cp(cp);
  return mapped == cp || c.size() > 3 ? c : encode(mapped);
}

std::string lower(const std::string& c) {
  if (c.size() == 1)
    return std::string(1, static_cast<char>(lower_cp(static_cast<unsigned char>(c[0]))));
  const uint32_t cp = decode(c);
  const uint32_t mapped = lower_cp(cp);
  return mapped == cp || c.size() > 3 ? c : encode(mapped);
}

// Python's "cased" characters, as far as the mappings above know them.
bool is_cased_letter(const std::string& c) {
  const uint32_t cp = c.size() <= 3 ? decode(c) : 0;
  return cp == 0xdf || cp == 0x138 || upper_cp(cp) != cp || lower_cp(cp) != cp;
}

}  // namespace

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> chars;
  for (size_t i = 0; i < s.size();) {
    size_t n = std::min(utf8_sequence_length(static_cast<unsigned char>(s[i])), s.size() - i);
    chars.push_back(s.substr(i, n));
    i += n;
  }
  return chars;
}

int64_t utf8_length(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80 ? 1 : 0;
  return n;
}

bool python_isspace(const std::string& c) {
  const uint32_t cp = decode(c);
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

std::string python_strip(const std::string& s, const std::string& chars, bool left, bool right) {
  const std::vector<std::string> cs = utf8_chars(s);
  const std::vector<std::string> strip_set = utf8_chars(chars);
  auto strippable = [&](const std::string& c) {
    if (chars.empty()) return python_isspace(c);
    return std::find(strip_set.begin(), strip_set.end(), c) != strip_set.end();
  };
  size_t begin = 0;
  size_t end = cs.size();
  if (left) {
    while (begin < end && strippable(cs[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strippable(cs[end - 1])) --end;
  }
  std::string out;
  for (size_t i = begin; i < end; ++i) out += cs[i];
  return out;
}

std::vector<std::string> python_split(const std::string& s, const std::string* sep,
                                      int64_t maxsplit) {
  std::vector<std::string> parts;
  if (sep == nullptr) {
    const std::vector<std::string> cs = utf8_chars(s);
    size_t i = 0;
    while (i < cs.size()) {
      while (i < cs.size() && python_isspace(cs[i])) ++i;
      if (i == cs.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        std::string rest;
        for (size_t j = i; j < cs.size(); ++j) rest += cs[j];
        // Python keeps trailing whitespace of the unsplit remainder.
        parts.push_back(rest);
        return parts;
      }
      std::string word;
      while (i < cs.size() && !python_isspace(cs[i])) word += cs[i++];
      parts.push_back(word);
    }
    return parts;
  }
  size_t start = 0;
  while (true) {
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
    size_t found = s.find(*sep, start);
    if (found == std::string::npos) break;
    parts.push_back(s.substr(start, found - start));
    start = found + sep->size();
  }
  parts.push_back(s.substr(start));
  return parts;
}

std::string python_replace(const std::string& s, const std::string& old_text,
                           const std::string& new_text, int64_t count) {
  std::string out;
  if (old_text.empty()) {
    // Python inserts `new` before every character and at the end.
    int64_t done = 0;
    for (const auto& c : utf8_chars(s)) {
      if (count < 0 || done < count) {
        out += new_text;
        ++done;
      }
      out += c;
    }
    if (count < 0 || done < count) out += new_text;
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t found = s.find(old_text, start);
    if (found == std::string::npos) break;
    out += s.substr(start, found - start);
    out += new_text;
    start = found + old_text.size();
    ++done;
  }
  out += s.substr(start);
  return out;
}

std::string python_upper(std::string s) {
  std::string out;
  for (const auto& c : utf8_chars(s)) out += upper(c);
  return out;
}

std::string python_lower(std::string s) {
  std::string out;
  for (const auto& c : utf8_chars(s)) out += lower(c);
  return out;
}

std::string python_title(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (const auto& c : utf8_chars(s)) {
    out += previous_cased ? lower(c) : upper(c);
    previous_cased = is_cased_letter(c);
  }
  return out;
}

std::string python_capitalize(const std::string& s) {
  std::string out;
  bool first = true;
  for (const auto& c : utf8_chars(s)) {
    out += first ? upper(c) : lower(c);
    first = false;
  }
  return out;
}

std::string jinja_title(const std::string& s) {
  auto is_separator = [](char c) {
    return c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' ||
           c == '(' || c == '{' || c == '[' || c == '<';
  };
  std::string out;
  bool word_start = true;
  for (const auto& c : utf8_chars(s)) {
    if (c.size() == 1 && is_separator(c[0])) {
      out += c;
      word_start = true;
    } else {
      out += word_start ? upper(c) : lower(c);
      word_start = false;
    }
  }
  return out;
}

}  // namespace kbit::generate::jinja
