// Tokenizer: tokenizer.json's pipeline, run as the `tokenizers` library runs it:
//   split out added tokens (raw text) -> normalize -> split out normalized added tokens
//   -> pre-tokenize -> BPE per piece -> post-processor template.
// Decoding maps ids to token strings, drops special tokens on request, and runs the decoder.
#include "kbit/tokenizer/tokenizer.h"

#include <array>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "tokenizer/bpe.h"
#include "tokenizer/components.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace kbit::tokenizer {

using internal::BpeModel;
using internal::JsonPlace;
using nlohmann::json;

namespace {

struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// Added tokens of one kind (raw or normalized), indexed by first byte, longest first: the
// leftmost-longest matching that tokenizers does with Aho-Corasick.
struct AddedMatcher {
  std::array<std::vector<std::size_t>, 256> by_first_byte;  // indices into `patterns`
  std::vector<std::string> patterns;
  std::vector<const AddedToken*> tokens;
  bool empty() const { return patterns.empty(); }
};

// A stretch of text, or an added token's id when id >= 0.
struct Segment {
  std::size_t begin;
  std::size_t end;
  TokenId id;
};

Result<std::string> read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path.string() + ": cannot open the file (does it exist?)");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return data_loss(path.string() + ": read failed");
  return buffer.str();
}

Result<json> parse_json(const std::string& text, const std::string& file) {
  try {
    return json::parse(text);
  } catch (const json::exception& error) {
    return data_loss(file + ": not valid JSON (" + error.what() + ")");
  }
}

Result<bool> flag(const json& object, const char* key, const JsonPlace& place) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    return data_loss(place.child(key).name() + " must be true or false, not " + it->dump());
  }
  return it->get<bool>();
}

// A token setting of tokenizer_config.json: a string, an AddedToken dict, or null.
Result<std::optional<std::string>> config_token(const json& config, const char* key,
                                                const std::string& file) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return std::optional<std::string>((*it)["content"].get<std::string>());
  }
  return data_loss(file + ": " + key + " must be a string or {\"content\": ...}, not " +
                   it->dump());
}

}  // namespace

struct Tokenizer::Impl {
  BpeModel model;
  std::vector<AddedToken> added;
  std::unordered_map<TokenId, std::size_t> added_by_id;
  internal::TokenMap added_by_content;
  AddedMatcher raw_matcher;
  AddedMatcher normalized_matcher;
  std::optional<internal::Regex> word_char;  // Rust's is_alphanumeric() or '_'
  std::unique_ptr<internal::Normalizer> normalizer;
  std::unique_ptr<internal::PreTokenizer> pre_tokenizer;
  std::unique_ptr<internal::Decoder> decoder;
  std::optional<internal::PostTemplate> post;
  std::optional<TokenId> bos;
  std::optional<TokenId> eos;
  std::int64_t vocab_size = 0;

  const std::string* token_of(TokenId id) const {
    if (const auto it = added_by_id.find(id); it != added_by_id.end()) {
      return &added[it->second].content;
    }
    return model.id_to_token(id);
  }

  bool is_special(TokenId id) const {
    const auto it = added_by_id.find(id);
    return it != added_by_id.end() && added[it->second].special;
  }

  bool is_word_char(std::string_view text, std::size_t pos) const {
    const std::string one(text.substr(pos, internal::utf8_char_length(text, pos)));
    return !word_char->find_all(one).empty();
  }

  void build_matchers() {
    for (const AddedToken& token : added) {
      if (token.content.empty()) continue;
      AddedMatcher& matcher = token.normalized ? normalized_matcher : raw_matcher;
      std::string pattern = token.content;
      if (token.normalized && normalizer) normalizer->normalize(pattern);
      if (pattern.empty()) continue;
      matcher.patterns.push_back(pattern);
      matcher.tokens.push_back(&token);
    }
    for (AddedMatcher* matcher : {&raw_matcher, &normalized_matcher}) {
      for (std::size_t i = 0; i < matcher->patterns.size(); ++i) {
        matcher->by_first_byte[static_cast<unsigned char>(matcher->patterns[i][0])].push_back(i);
      }
      for (auto& list : matcher->by_first_byte) {
        std::stable_sort(list.begin(), list.end(), [&](std::size_t a, std::size_t b) {
          return matcher->patterns[a].size() > matcher->patterns[b].size();
        });
      }
    }
  }

  // tokenizers' AddedVocabulary::find_matches: leftmost-longest matches, then single_word,
  // lstrip and rstrip; the text between matches becomes text segments.
  std::vector<Segment> split_added(std::string_view text, const AddedMatcher& matcher) const {
    std::vector<Segment> segments;
    std::size_t start_offset = 0;
    std::size_t pos = 0;
    while (!matcher.empty() && pos < text.size()) {
      const auto& candidates = matcher.by_first_byte[static_cast<unsigned char>(text[pos])];
      std::size_t found = matcher.patterns.size();
      for (const std::size_t index : candidates) {
        if (text.compare(pos, matcher.patterns[index].size(), matcher.patterns[index]) == 0) {
          found = index;
          break;
        }
      }
      if (found == matcher.patterns.size()) {
        ++pos;
        continue;
      }
      const AddedToken& token = *matcher.tokens[found];
      std::size_t start = pos;
      std::size_t stop = pos + matcher.patterns[found].size();
      pos = stop;
      if (token.single_word) {
        bool word_before = false;
        if (start > 0) {
          std::size_t previous = start - 1;
          while (previous > 0 && (static_cast<unsigned char>(text[previous]) & 0xC0) == 0x80) {
            --previous;
          }
          word_before = is_word_char(text, previous);
        }
        const bool word_after = stop < text.size() && is_word_char(text, stop);
        if (word_before || word_after) continue;
      }
      if (token.lstrip) {
        std::size_t new_start = start;
        while (new_start > 0) {
          std::size_t previous = new_start - 1;
          while (previous > 0 && (static_cast<unsigned char>(text[previous]) & 0xC0) == 0x80) {
            --previous;
          }
          if (!internal::is_unicode_whitespace(internal::utf8_decode_at(text, previous))) break;
          new_start = previous;
        }
        start = std::max(new_start, start_offset);
      }
      if (token.rstrip) {
        while (stop < text.size() &&
               internal::is_unicode_whitespace(internal::utf8_decode_at(text, stop))) {
          stop += internal::utf8_char_length(text, stop);
        }
        pos = stop;
      }
      if (start_offset < start) segments.push_back({start_offset, start, -1});
      segments.push_back({start, stop, token.id});
      start_offset = stop;
    }
    if (start_offset < text.size()) segments.push_back({start_offset, text.size(), -1});
    return segments;
  }

  void encode_text(std::string_view text, bool at_start, std::vector<TokenId>& ids) const {
    std::string normalized(text);
    if (normalizer) normalizer->normalize(normalized);
    for (const Segment& segment : split_added(normalized, normalized_matcher)) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
        continue;
      }
      std::vector<internal::Piece> pieces;
      pieces.push_back(
          internal::Piece{normalized.substr(segment.begin, segment.end - segment.begin),
                          at_start && segment.begin == 0});
      if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
      for (const internal::Piece& piece : pieces) model.tokenize(piece.text, ids);
    }
  }

  Status load_added_tokens(const json& root, const std::string& file) {
    const auto list = root.find("added_tokens");
    if (list == root.end() || list->is_null()) return ok_status();
    const JsonPlace place{file, "added_tokens"};
    if (!list->is_array()) return data_loss(place.name() + " is not a list");
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& item = (*list)[i];
      const JsonPlace where = place.index(i);
      if (!item.is_object() || !item.contains("id") || !item["id"].is_number_unsigned() ||
          !item.contains("content") || !item["content"].is_string()) {
        return data_loss(where.name() + " is " + item.dump().substr(0, 200) +
                         ", not {\"id\": <id>, \"content\": <string>, ...}");
      }
      AddedToken token;
      token.id = item["id"].get<TokenId>();
      token.content = item["content"].get<std::string>();
      KBIT_ASSIGN_OR_RETURN(token.special, flag(item, "special", where));
      KBIT_ASSIGN_OR_RETURN(token.normalized, flag(item, "normalized", where));
      KBIT_ASSIGN_OR_RETURN(token.lstrip, flag(item, "lstrip", where));
      KBIT_ASSIGN_OR_RETURN(token.rstrip, flag(item, "rstrip", where));
      KBIT_ASSIGN_OR_RETURN(token.single_word, flag(item, "single_word", where));
      if (internal::find_invalid_utf8(token.content)) {
        return data_loss(where.child("content").name() + " is not valid UTF-8");
      }
      added_by_id[token.id] = added.size();
      added_by_content[token.content] = token.id;
      added.push_back(std::move(token));
    }
    return ok_status();
  }

  Status load_config(const std::filesystem::path& path) {
    std::error_code error;
    if (!std::filesystem::exists(path, error)) return ok_status();
    const std::string file = path.string();
    KBIT_ASSIGN_OR_RETURN(const std::string text, read_text(path));
    KBIT_ASSIGN_OR_RETURN(const json config, parse_json(text, file));
    if (!config.is_object()) return data_loss(file + ": the top level is not a JSON object");
    for (const char* key : {"bos_token", "eos_token"}) {
      KBIT_ASSIGN_OR_RETURN(const std::optional<std::string> name, config_token(config, key, file));
      if (!name) continue;
      std::optional<TokenId> id;
      if (const auto it = added_by_content.find(*name); it != added_by_content.end()) {
        id = it->second;
      } else {
        id = model.token_to_id(*name);
      }
      if (!id) {
        return data_loss(file + ": " + key + " \"" + *name +
                         "\" is not a token of tokenizer.json (fix the name or remove it)");
      }
      (std::string(key) == "bos_token" ? bos : eos) = id;
    }
    // transformers rebuilds the template from add_bos_token / add_eos_token when they are set.
    const JsonPlace place{file, "tokenizer_config"};
    const bool has_add_bos = config.contains("add_bos_token");
    const bool has_add_eos = config.contains("add_eos_token");
    if (has_add_bos || has_add_eos) {
      KBIT_ASSIGN_OR_RETURN(const bool add_bos, flag(config, "add_bos_token", place));
      KBIT_ASSIGN_OR_RETURN(const bool add_eos, flag(config, "add_eos_token", place));
      if ((add_bos && !bos) || (add_eos && !eos)) {
        return data_loss(file + ": add_" + std::string(add_bos && !bos ? "bos" : "eos") +
                         "_token is true but no such token is set");
      }
      internal::PostTemplate rebuilt;
      if (add_bos) rebuilt.before.push_back(*bos);
      if (add_eos) rebuilt.after.push_back(*eos);
      post = std::move(rebuilt);
    }
    return ok_status();
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::load(const std::filesystem::path& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  const std::string file = tokenizer_json.string();
  try {
    KBIT_ASSIGN_OR_RETURN(const std::string text, read_text(tokenizer_json));
    KBIT_ASSIGN_OR_RETURN(const json root, parse_json(text, file));
    if (!root.is_object()) return data_loss(file + ": the top level is not a JSON object");
    for (const char* key : {"truncation", "padding"}) {
      if (root.contains(key) && !root[key].is_null()) {
        return unimplemented(file + ": " + key + " " + root[key].dump().substr(0, 100) +
                             " is not supported (kbit encodes whole texts; set it to null)");
      }
    }
    const auto model = root.find("model");
    if (model == root.end() || !model->is_object()) {
      return data_loss(file + ": model is missing or not an object");
    }
    const auto type = model->find("type");
    if (type != model->end() && (!type->is_string() || type->get<std::string>() != "BPE")) {
      return unimplemented(file + ": model.type " + type->dump() +
                           " is not supported (kbit reads BPE)");
    }
    if (type == model->end() && !model->contains("merges")) {
      return unimplemented(file + ": model has no \"type\" and no merges (kbit reads BPE)");
    }
    KBIT_ASSIGN_OR_RETURN(impl->model, BpeModel::from_json(*model, file));
    KBIT_RETURN_IF_ERROR(impl->load_added_tokens(root, file));
    const json null_value;
    const auto field = [&](const char* key) -> const json& {
      const auto it = root.find(key);
      return it == root.end() ? null_value : *it;
    };
    KBIT_ASSIGN_OR_RETURN(impl->normalizer,
                          internal::parse_normalizer(field("normalizer"), {file, "normalizer"}));
    KBIT_ASSIGN_OR_RETURN(
        impl->pre_tokenizer,
        internal::parse_pre_tokenizer(field("pre_tokenizer"), {file, "pre_tokenizer"}));
    KBIT_ASSIGN_OR_RETURN(impl->decoder,
                          internal::parse_decoder(field("decoder"), {file, "decoder"}));
    KBIT_ASSIGN_OR_RETURN(impl->post, internal::parse_post_processor(field("post_processor"),
                                                                     {file, "post_processor"}));
    KBIT_ASSIGN_OR_RETURN(impl->word_char, internal::Regex::compile("[\\p{Alphabetic}\\p{N}_]"));
    impl->build_matchers();
    impl->vocab_size = impl->model.size();
    for (const AddedToken& token : impl->added) {
      impl->vocab_size = std::max<std::int64_t>(impl->vocab_size, std::int64_t{token.id} + 1);
    }
    if (impl->post) {
      for (const TokenId id : impl->post->before) {
        if (!impl->bos) impl->bos = id;
      }
      for (const TokenId id : impl->post->after) {
        if (!impl->eos) impl->eos = id;
      }
    }
    KBIT_RETURN_IF_ERROR(impl->load_config(tokenizer_json.parent_path() / "tokenizer_config.json"));
    for (const auto& ids : {impl->post ? impl->post->before : std::vector<TokenId>(),
                            impl->post ? impl->post->after : std::vector<TokenId>()}) {
      for (const TokenId id : ids) {
        if (impl->token_of(id) == nullptr) {
          return data_loss(file + ": post_processor adds token id " + std::to_string(id) +
                           ", which is not in the vocabulary");
        }
      }
    }
  } catch (const std::exception& error) {
    return data_loss(file + ": unexpected content (" + error.what() + ")");
  }
  return Tokenizer(std::move(impl));
}

Result<std::vector<TokenId>> Tokenizer::encode(std::string_view text,
                                               bool add_special_tokens) const {
  if (const auto offset = internal::find_invalid_utf8(text)) {
    return invalid_argument("text to encode is not valid UTF-8 at byte offset " +
                            std::to_string(*offset) + " (byte 0x" +
                            [&] {
                              static const char* digits = "0123456789ABCDEF";
                              const auto byte = static_cast<unsigned char>(text[*offset]);
                              return std::string{digits[byte >> 4], digits[byte & 15]};
                            }() +
                            ")");
  }
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens && impl_->post) {
    ids.insert(ids.end(), impl_->post->before.begin(), impl_->post->before.end());
  }
  for (const Segment& segment : impl_->split_added(text, impl_->raw_matcher)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      impl_->encode_text(text.substr(segment.begin, segment.end - segment.begin),
                         segment.begin == 0, ids);
    }
  }
  if (add_special_tokens && impl_->post) {
    ids.insert(ids.end(), impl_->post->after.begin(), impl_->post->after.end());
  }
  return ids;
}

Result<std::string> Tokenizer::decode(std::span<const TokenId> ids,
                                      bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const TokenId id : ids) {
    const std::string* token = impl_->token_of(id);
    if (token == nullptr) {
      return invalid_argument("token id " + std::to_string(id) + " is not in the vocabulary (0.." +
                              std::to_string(impl_->vocab_size - 1) + ")");
    }
    if (skip_special_tokens && impl_->is_special(id)) continue;
    tokens.push_back(*token);
  }
  if (!impl_->decoder) {
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  impl_->decoder->decode_chain(tokens);
  std::string text;
  for (const std::string& token : tokens) text += token;
  return text;
}

std::int64_t Tokenizer::vocab_size() const {
  return impl_->vocab_size;
}
std::optional<TokenId> Tokenizer::bos_id() const {
  return impl_->bos;
}
std::optional<TokenId> Tokenizer::eos_id() const {
  return impl_->eos;
}

std::optional<TokenId> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) {
    return it->second;
  }
  return impl_->model.token_to_id(token);
}

std::string Tokenizer::id_to_token(TokenId id) const {
  const std::string* token = impl_->token_of(id);
  return token == nullptr ? std::string() : *token;
}

bool Tokenizer::is_special(TokenId id) const {
  return impl_->is_special(id);
}

// ---- streaming ----
//
// pending_ holds the ids since an anchor token whose text was already emitted; emitted_bytes_ is
// how much of decode(pending_) has been returned. Text is held back while it ends in U+FFFD (a
// byte sequence that later ids may complete) or while the last id is a byte-fallback token (a
// later byte may turn the whole run into U+FFFDs). After emitting, the window restarts at the
// last id, so each step decodes a few ids and the leading-space rules see the same first token.

Tokenizer::StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

Result<std::string> Tokenizer::StreamingDecoder::push(TokenId id) {
  const std::string* token = tokenizer_->impl_->token_of(id);
  if (token == nullptr) {
    return invalid_argument("token id " + std::to_string(id) + " is not in the vocabulary (0.." +
                            std::to_string(tokenizer_->vocab_size() - 1) + ")");
  }
  pending_.push_back(id);
  const bool byte_token = token->size() == 6 && token->compare(0, 3, "<0x") == 0;
  if (byte_token) return std::string();
  KBIT_ASSIGN_OR_RETURN(const std::string text, tokenizer_->decode(pending_, skip_special_tokens_));
  if (text.size() <= emitted_bytes_ || text.ends_with(internal::kReplacementChar)) {
    return std::string();
  }
  std::string out = text.substr(emitted_bytes_);
  if (skip_special_tokens_ && tokenizer_->is_special(id)) {
    emitted_bytes_ = text.size();
  } else {
    pending_.assign(1, id);
    KBIT_ASSIGN_OR_RETURN(const std::string anchor,
                          tokenizer_->decode(pending_, skip_special_tokens_));
    emitted_bytes_ = anchor.size();
  }
  return out;
}

std::string Tokenizer::StreamingDecoder::finish() {
  Result<std::string> text = tokenizer_->decode(pending_, skip_special_tokens_);
  std::string out;
  if (text.ok() && text->size() > emitted_bytes_) out = text->substr(emitted_bytes_);
  pending_.clear();
  emitted_bytes_ = 0;
  return out;
}

}  // namespace kbit::tokenizer
