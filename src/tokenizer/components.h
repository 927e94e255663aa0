// The pipeline stages of tokenizer.json that kbit supports, parsed from their JSON objects:
//   normalizer:     Sequence, Prepend, Replace (String or Regex), Strip
//   pre_tokenizer:  Sequence, ByteLevel, Split (String or Regex; every behavior; invert),
//                   Metaspace (prepend_scheme always/first/never; split), Digits
//   post_processor: TemplateProcessing, ByteLevel, Sequence of those
//   decoder:        Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
// Each behaves as the same component of the `tokenizers` library. Anything else is refused with
// an error naming the field and its value.
//
// All stages are immutable after parsing and safe to use concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kbit/core/status.h"
#include "tokenizer/bpe.h"

namespace kbit::tokenizer::internal {

// Where a JSON value sits, for error messages: the file and a path like
// "pre_tokenizer.pretokenizers[0].pattern".
struct JsonPlace {
  std::string file;
  std::string path;
  JsonPlace child(const std::string& key) const { return {file, path + "." + key}; }
  JsonPlace index(std::size_t i) const { return {file, path + "[" + std::to_string(i) + "]"}; }
  std::string name() const { return file + ": " + path; }
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// A piece of text between pre-tokenizer splits; `at_start` when it begins at offset 0 of the
// original input (what Metaspace's prepend_scheme "first" asks).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` with their finer split (and transformation).
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // tokenizers' decode_chain: token strings in, token strings out.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// The single-sequence template of the post-processor: special-token ids around the sequence.
struct PostTemplate {
  std::vector<std::int32_t> before;
  std::vector<std::int32_t> after;
};

// null JSON gives nullptr (no stage).
Result<std::unique_ptr<Normalizer>> parse_normalizer(const nlohmann::json& value,
                                                     const JsonPlace& place);
Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& value,
                                                          const JsonPlace& place);
Result<std::unique_ptr<Decoder>> parse_decoder(const nlohmann::json& value, const JsonPlace& place);
// nullopt when the post-processor adds nothing.
Result<std::optional<PostTemplate>> parse_post_processor(const nlohmann::json& value,
                                                         const JsonPlace& place);

}  // namespace kbit::tokenizer::internal
