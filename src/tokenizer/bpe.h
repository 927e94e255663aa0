// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): a vocabulary, ranked merges,
// optional unknown token and byte fallback, as the `tokenizers` library applies them to one
// pre-tokenized word.
//
// Immutable after load; tokenize() is safe to call concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "kbit/core/status.h"

namespace kbit::tokenizer::internal {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `model` is tokenizer.json's "model" object; errors name `file` and the field.
  static Result<BpeModel> from_json(const nlohmann::json& model, const std::string& file);

  // Appends the ids of one word (a pre-token, already normalized) to `out`.
  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const;

  std::optional<std::int32_t> token_to_id(std::string_view token) const;
  // The token string, or nullptr when `id` is not in the vocabulary.
  const std::string* id_to_token(std::int32_t id) const;
  std::int64_t size() const { return static_cast<std::int64_t>(id_to_token_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  struct Merge {
    std::int32_t rank;
    std::int32_t new_id;
  };
  static std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) |
           static_cast<std::uint32_t>(right);
  }
  const Merge* find_merge(std::int32_t left, std::int32_t right) const;
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
    std::uint32_t length;  // bytes; 0 once merged into its left neighbour
  };
  // Applies the merges to symbols[begin, end) and appends the resulting ids to `out`.
  void merge_range(std::vector<Symbol>& symbols, std::size_t begin, std::size_t end,
                   std::vector<std::int32_t>& out) const;
  // False when no sequence of merges can ever join the adjacent symbols `left` and `right`.
  bool joinable(std::int32_t left, std::int32_t right) const;
  bool inert(std::int32_t id) const {
    return static_cast<std::size_t>(id) >= in_merge_.size() ||
           !in_merge_[static_cast<std::size_t>(id)];
  }

  TokenMap vocab_;
  std::vector<std::string> id_to_token_;  // "" for ids the vocabulary skips
  std::vector<bool> has_id_;
  // Whether an id is the left or right part of some merge. A symbol whose id is not never
  // merges, so it splits a long word into parts that merge independently (same result, small
  // heaps): what keeps unsplit SentencePiece-style input fast.
  std::vector<bool> in_merge_;
  // (last code point of a merge's left token << 32 | first code point of its right token) for
  // every merge: two adjacent symbols whose pair is absent here are never joined either.
  std::unordered_set<std::uint64_t> joinable_;
  std::vector<char32_t> first_char_;  // per id: first and last code point of the token string
  std::vector<char32_t> last_char_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::optional<std::int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::array<std::int32_t, 256> byte_ids_{};   // <0xXX> ids, -1 where missing
  std::array<std::int32_t, 128> ascii_ids_{};  // ids of one-character ASCII tokens, -1 if none
};

}  // namespace kbit::tokenizer::internal
