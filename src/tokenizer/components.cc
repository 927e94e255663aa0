#include "tokenizer/components.h"

#include <algorithm>
#include <utility>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace kbit::tokenizer::internal {
namespace {

using nlohmann::json;

// ---- JSON access with errors that name the field ----

Result<const json*> require(const json& object, const char* key, const JsonPlace& place) {
  const auto it = object.find(key);
  if (it == object.end()) return data_loss(place.child(key).name() + " is missing");
  return &*it;
}

Result<std::string> require_string(const json& object, const char* key, const JsonPlace& place) {
  KBIT_ASSIGN_OR_RETURN(const json* value, require(object, key, place));
  if (!value->is_string()) {
    return data_loss(place.child(key).name() + " must be a string, not " + value->dump());
  }
  return value->get<std::string>();
}

Result<bool> bool_or(const json& object, const char* key, bool fallback, const JsonPlace& place) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return data_loss(place.child(key).name() + " must be true or false, not " + it->dump());
  }
  return it->get<bool>();
}

Result<std::string> type_of(const json& value, const JsonPlace& place) {
  if (!value.is_object()) {
    return data_loss(place.name() + " must be an object with a \"type\", not " + value.dump());
  }
  return require_string(value, "type", place);
}

Status unsupported(const JsonPlace& place, const std::string& type, const std::string& supported) {
  return unimplemented(place.child("type").name() + " \"" + type +
                       "\" is not supported (kbit reads " + supported + ")");
}

// A {"String": s} or {"Regex": r} pattern; a string pattern matches literally.
Result<Regex> parse_pattern(const json& object, const JsonPlace& place) {
  KBIT_ASSIGN_OR_RETURN(const json* pattern, require(object, "pattern", place));
  const JsonPlace where = place.child("pattern");
  if (pattern->is_object() && pattern->contains("String") && (*pattern)["String"].is_string()) {
    return Regex::literal((*pattern)["String"].get<std::string>());
  }
  if (pattern->is_object() && pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
    Result<Regex> regex = Regex::compile((*pattern)["Regex"].get<std::string>());
    if (!regex.ok()) return regex.status().with_context(where.name());
    return regex;
  }
  return data_loss(where.name() + " must be {\"String\": ...} or {\"Regex\": ...}, not " +
                   pattern->dump());
}

// Replaces every match of `pattern` in `text` with `content`.
std::string replace_all(const std::string& text, const Regex& pattern, const std::string& content) {
  const auto matches = pattern.find_all(text);
  if (matches.empty()) return text;
  std::string out;
  out.reserve(text.size());
  std::size_t last = 0;
  for (const auto& [begin, end] : matches) {
    out.append(text, last, begin - last);
    out += content;
    last = end;
  }
  out.append(text, last, std::string::npos);
  return out;
}

// ---- splitting, as tokenizers' NormalizedString::split ----

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Result<SplitBehavior> parse_behavior(const json& object, const JsonPlace& place) {
  KBIT_ASSIGN_OR_RETURN(const std::string name, require_string(object, "behavior", place));
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return unimplemented(place.child("behavior").name() + " \"" + name +
                       "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, "
                       "Contiguous");
}

// Splits `piece` at `matches` (sorted, non-overlapping) and appends the parts to `out`.
void split_piece(Piece piece, const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
  struct Span {
    std::size_t begin;
    std::size_t end;
    bool is_match;
  };
  std::vector<Span> spans;
  std::size_t last = 0;
  for (const auto& [begin, end] : matches) {
    if (begin > last) spans.push_back({last, begin, invert});
    spans.push_back({begin, end, !invert});
    last = end;
  }
  if (last < piece.text.size()) spans.push_back({last, piece.text.size(), invert});

  std::vector<std::pair<std::size_t, std::size_t>> parts;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) parts.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) parts.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !parts.empty()) {
          parts.back().second = s.end;
        } else {
          parts.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !parts.empty()) {
          parts.back().first = it->begin;
        } else {
          parts.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    case SplitBehavior::kContiguous:
      for (std::size_t i = 0; i < spans.size(); ++i) {
        if (i > 0 && spans[i].is_match == previous_match) {
          parts.back().second = spans[i].end;
        } else {
          parts.emplace_back(spans[i].begin, spans[i].end);
        }
        previous_match = spans[i].is_match;
      }
      break;
  }
  for (const auto& [begin, end] : parts) {
    if (begin == end) continue;
    out.push_back(Piece{piece.text.substr(begin, end - begin), piece.at_start && begin == 0});
  }
}

// ---- normalizers ----

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text = prefix_ + text;
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override { text = replace_all(text, pattern_, content_); }

 private:
  Regex pattern_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    std::size_t begin = 0;
    std::size_t end = text.size();
    if (left_) {
      while (begin < end && is_unicode_whitespace(utf8_decode_at(text, begin))) {
        begin += utf8_char_length(text, begin);
      }
    }
    if (right_) {
      while (end > begin) {
        std::size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        if (!is_unicode_whitespace(utf8_decode_at(text, start))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_;
  bool right_;
};

// ---- pre-tokenizers ----

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (Piece& piece : pieces) {
      const auto matches = pattern_.find_all(piece.text);
      split_piece(std::move(piece), matches, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  Regex pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's split pattern, which ByteLevel applies when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> split)
      : add_prefix_space_(add_prefix_space), split_(std::move(split)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (Piece& piece : pieces) {
      if (add_prefix_space_ && piece.text.compare(0, 1, " ") != 0) piece.text = " " + piece.text;
      if (split_) {
        const auto matches = split_->find_all(piece.text);
        split_piece(std::move(piece), matches, SplitBehavior::kIsolated, false, out);
      } else {
        out.push_back(std::move(piece));
      }
    }
    const auto& alphabet = byte_level_alphabet();
    for (Piece& piece : out) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (const char byte : piece.text) mapped += alphabet[static_cast<unsigned char>(byte)];
      piece.text = std::move(mapped);
    }
    pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> split_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

Result<PrependScheme> parse_prepend_scheme(const json& object, const JsonPlace& place) {
  const auto it = object.find("prepend_scheme");
  if (it == object.end() || it->is_null()) {
    // Older files: add_prefix_space true means "always".
    KBIT_ASSIGN_OR_RETURN(const bool add, bool_or(object, "add_prefix_space", true, place));
    return add ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  const std::string name = it->is_string() ? it->get<std::string>() : it->dump();
  if (name == "always") return PrependScheme::kAlways;
  if (name == "first") return PrependScheme::kFirst;
  if (name == "never") return PrependScheme::kNever;
  return data_loss(place.child("prepend_scheme").name() + " \"" + name +
                   "\" is not one of always, first, never");
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split, Regex space,
                        Regex marker)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_(split),
        space_(std::move(space)),
        marker_(std::move(marker)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (Piece& piece : pieces) {
      piece.text = replace_all(piece.text, space_, replacement_);
      const bool starts = piece.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways ||
                      (scheme_ == PrependScheme::kFirst && piece.at_start))) {
        piece.text = replacement_ + piece.text;
      }
      if (split_) {
        const auto matches = marker_.find_all(piece.text);
        split_piece(std::move(piece), matches, SplitBehavior::kMergedWithNext, false, out);
      } else {
        out.push_back(std::move(piece));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  Regex space_;
  Regex marker_;
};

// ---- decoders ----

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const std::size_t mark = bytes.size();
      bool all = true;
      for (std::size_t pos = 0; pos < token.size() && all;) {
        const int byte = byte_level_byte(utf8_decode_at(token, pos));
        all = byte >= 0;
        if (all) bytes += static_cast<char>(byte);
        pos += utf8_char_length(token, pos);
      }
      if (!all) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      const bool drop = i == 0 && scheme_ != PrependScheme::kNever;
      std::string out;
      const std::string& token = tokens[i];
      for (std::size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!drop) out += ' ';
          pos += replacement_.size();
        } else {
          out += token[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = replace_all(token, pattern_, content_);
  }

 private:
  Regex pattern_;
  std::string content_;
};

// The byte of a "<0xXX>" token, or -1.
int fallback_byte(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  int value = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = token[static_cast<std::size_t>(k)];
    const int digit = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                             : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    std::size_t count = 0;
    const auto flush = [&] {
      if (count == 0) return;
      if (!find_invalid_utf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (std::size_t k = 0; k < count; ++k) out.emplace_back(kReplacementChar);
      }
      bytes.clear();
      count = 0;
    };
    for (std::string& token : tokens) {
      const int byte = fallback_byte(token);
      if (byte >= 0) {
        bytes += static_cast<char>(byte);
        ++count;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, std::size_t start, std::size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::size_t begin = 0;
      for (std::size_t k = 0; k < start_ && token.compare(begin, content_.size(), content_) == 0 &&
                              begin < token.size();
           ++k) {
        begin += content_.size();
      }
      std::size_t end = token.size();
      for (std::size_t k = 0; k < stop_ && end >= begin + content_.size() &&
                              token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++k) {
        end -= content_.size();
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  std::size_t start_;
  std::size_t stop_;
};

Result<std::size_t> count_field(const json& object, const char* key, const JsonPlace& place) {
  KBIT_ASSIGN_OR_RETURN(const json* value, require(object, key, place));
  if (!value->is_number_unsigned()) {
    return data_loss(place.child(key).name() + " must be a non-negative integer, not " +
                     value->dump());
  }
  return value->get<std::size_t>();
}

Result<std::string> single_char(const json& object, const char* key, const JsonPlace& place) {
  KBIT_ASSIGN_OR_RETURN(std::string text, require_string(object, key, place));
  if (text.empty() || find_invalid_utf8(text) || utf8_char_length(text, 0) != text.size()) {
    return data_loss(place.child(key).name() + " \"" + text + "\" must be one character");
  }
  return text;
}

}  // namespace

Result<std::unique_ptr<Normalizer>> parse_normalizer(const json& value, const JsonPlace& place) {
  if (value.is_null()) return std::unique_ptr<Normalizer>();
  KBIT_ASSIGN_OR_RETURN(const std::string type, type_of(value, place));
  if (type == "Sequence") {
    KBIT_ASSIGN_OR_RETURN(const json* list, require(value, "normalizers", place));
    if (!list->is_array()) return data_loss(place.child("normalizers").name() + " is not a list");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (std::size_t i = 0; i < list->size(); ++i) {
      KBIT_ASSIGN_OR_RETURN(auto step,
                            parse_normalizer((*list)[i], place.child("normalizers").index(i)));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Prepend") {
    KBIT_ASSIGN_OR_RETURN(std::string prefix, require_string(value, "prepend", place));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prefix)));
  }
  if (type == "Replace") {
    KBIT_ASSIGN_OR_RETURN(Regex pattern, parse_pattern(value, place));
    KBIT_ASSIGN_OR_RETURN(std::string content, require_string(value, "content", place));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(pattern), content));
  }
  if (type == "Strip") {
    KBIT_ASSIGN_OR_RETURN(const bool left, bool_or(value, "strip_left", true, place));
    KBIT_ASSIGN_OR_RETURN(const bool right, bool_or(value, "strip_right", true, place));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  return unsupported(place, type, "Sequence, Prepend, Replace, Strip");
}

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& value,
                                                          const JsonPlace& place) {
  if (value.is_null()) return std::unique_ptr<PreTokenizer>();
  KBIT_ASSIGN_OR_RETURN(const std::string type, type_of(value, place));
  if (type == "Sequence") {
    KBIT_ASSIGN_OR_RETURN(const json* list, require(value, "pretokenizers", place));
    if (!list->is_array()) {
      return data_loss(place.child("pretokenizers").name() + " is not a list");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (std::size_t i = 0; i < list->size(); ++i) {
      KBIT_ASSIGN_OR_RETURN(auto step,
                            parse_pre_tokenizer((*list)[i], place.child("pretokenizers").index(i)));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  if (type == "ByteLevel") {
    KBIT_ASSIGN_OR_RETURN(const bool prefix, bool_or(value, "add_prefix_space", true, place));
    KBIT_ASSIGN_OR_RETURN(const bool use_regex, bool_or(value, "use_regex", true, place));
    std::optional<Regex> split;
    if (use_regex) {
      KBIT_ASSIGN_OR_RETURN(Regex regex, Regex::compile(kGpt2Pattern));
      split = std::move(regex);
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(prefix, std::move(split)));
  }
  if (type == "Split") {
    KBIT_ASSIGN_OR_RETURN(Regex pattern, parse_pattern(value, place));
    KBIT_ASSIGN_OR_RETURN(const SplitBehavior behavior, parse_behavior(value, place));
    KBIT_ASSIGN_OR_RETURN(const bool invert, bool_or(value, "invert", false, place));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(pattern), behavior, invert));
  }
  if (type == "Metaspace") {
    KBIT_ASSIGN_OR_RETURN(std::string replacement, single_char(value, "replacement", place));
    KBIT_ASSIGN_OR_RETURN(const PrependScheme scheme, parse_prepend_scheme(value, place));
    KBIT_ASSIGN_OR_RETURN(const bool split, bool_or(value, "split", true, place));
    KBIT_ASSIGN_OR_RETURN(Regex space, Regex::literal(" "));
    KBIT_ASSIGN_OR_RETURN(Regex marker, Regex::literal(replacement));
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(
        std::move(replacement), scheme, split, std::move(space), std::move(marker)));
  }
  if (type == "Digits") {
    KBIT_ASSIGN_OR_RETURN(const bool single, bool_or(value, "individual_digits", false, place));
    KBIT_ASSIGN_OR_RETURN(Regex digits, Regex::compile(single ? "\\p{N}" : "\\p{N}+"));
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(std::move(digits), SplitBehavior::kIsolated, false));
  }
  return unsupported(place, type, "Sequence, ByteLevel, Split, Metaspace, Digits");
}

Result<std::unique_ptr<Decoder>> parse_decoder(const json& value, const JsonPlace& place) {
  if (value.is_null()) return std::unique_ptr<Decoder>();
  KBIT_ASSIGN_OR_RETURN(const std::string type, type_of(value, place));
  if (type == "Sequence") {
    KBIT_ASSIGN_OR_RETURN(const json* list, require(value, "decoders", place));
    if (!list->is_array()) return data_loss(place.child("decoders").name() + " is not a list");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (std::size_t i = 0; i < list->size(); ++i) {
      KBIT_ASSIGN_OR_RETURN(auto step, parse_decoder((*list)[i], place.child("decoders").index(i)));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "Metaspace") {
    KBIT_ASSIGN_OR_RETURN(std::string replacement, single_char(value, "replacement", place));
    KBIT_ASSIGN_OR_RETURN(const PrependScheme scheme, parse_prepend_scheme(value, place));
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(std::move(replacement), scheme));
  }
  if (type == "Replace") {
    KBIT_ASSIGN_OR_RETURN(Regex pattern, parse_pattern(value, place));
    KBIT_ASSIGN_OR_RETURN(std::string content, require_string(value, "content", place));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(pattern), content));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    KBIT_ASSIGN_OR_RETURN(std::string content, single_char(value, "content", place));
    KBIT_ASSIGN_OR_RETURN(const std::size_t start, count_field(value, "start", place));
    KBIT_ASSIGN_OR_RETURN(const std::size_t stop, count_field(value, "stop", place));
    return std::unique_ptr<Decoder>(new StripDecoder(std::move(content), start, stop));
  }
  return unsupported(place, type,
                     "Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip");
}

Result<std::optional<PostTemplate>> parse_post_processor(const json& value,
                                                         const JsonPlace& place) {
  if (value.is_null()) return std::optional<PostTemplate>();
  KBIT_ASSIGN_OR_RETURN(const std::string type, type_of(value, place));
  if (type == "ByteLevel") return std::optional<PostTemplate>();  // offsets only
  if (type == "Sequence") {
    KBIT_ASSIGN_OR_RETURN(const json* list, require(value, "processors", place));
    if (!list->is_array()) return data_loss(place.child("processors").name() + " is not a list");
    std::optional<PostTemplate> result;
    for (std::size_t i = 0; i < list->size(); ++i) {
      const JsonPlace where = place.child("processors").index(i);
      KBIT_ASSIGN_OR_RETURN(auto step, parse_post_processor((*list)[i], where));
      if (step && result) {
        return unimplemented(where.name() + " is a second TemplateProcessing (kbit reads one)");
      }
      if (step) result = std::move(step);
    }
    return result;
  }
  if (type != "TemplateProcessing") {
    return unsupported(place, type, "TemplateProcessing, ByteLevel, Sequence");
  }
  KBIT_ASSIGN_OR_RETURN(const json* single, require(value, "single", place));
  KBIT_ASSIGN_OR_RETURN(const json* specials, require(value, "special_tokens", place));
  if (!single->is_array()) return data_loss(place.child("single").name() + " is not a list");
  PostTemplate result;
  bool seen_sequence = false;
  for (std::size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const JsonPlace where = place.child("single").index(i);
    if (item.is_object() && item.contains("Sequence")) {
      if (seen_sequence) return unimplemented(where.name() + " is a second sequence");
      seen_sequence = true;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].is_object() ||
        !item["SpecialToken"].contains("id") || !item["SpecialToken"]["id"].is_string()) {
      return data_loss(where.name() + " is " + item.dump() +
                       ", not {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
    }
    const std::string name = item["SpecialToken"]["id"].get<std::string>();
    const auto special = specials->find(name);
    if (special == specials->end() || !special->is_object() || !special->contains("ids") ||
        !(*special)["ids"].is_array()) {
      return data_loss(where.name() + " names \"" + name + "\", which " +
                       place.child("special_tokens").name() + " does not define with \"ids\"");
    }
    for (const json& id : (*special)["ids"]) {
      if (!id.is_number_unsigned()) {
        return data_loss(place.child("special_tokens").name() + "[\"" + name + "\"].ids holds " +
                         id.dump() + ", not a token id");
      }
      (seen_sequence ? result.after : result.before).push_back(id.get<std::int32_t>());
    }
  }
  if (!seen_sequence) return data_loss(place.child("single").name() + " has no {\"Sequence\"}");
  return std::optional<PostTemplate>(std::move(result));
}

}  // namespace kbit::tokenizer::internal
