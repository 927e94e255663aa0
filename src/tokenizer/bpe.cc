#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "tokenizer/utf8.h"

namespace kbit::tokenizer::internal {
namespace {

// Optional string field: absent or null gives "".
Result<std::string> optional_string(const nlohmann::json& object, const char* key,
                                    const std::string& file) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return data_loss(file + ": model." + key + " must be a string or null, not " + it->dump());
  }
  return it->get<std::string>();
}

Result<bool> optional_bool(const nlohmann::json& object, const char* key, const std::string& file) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    return data_loss(file + ": model." + key + " must be true or false, not " + it->dump());
  }
  return it->get<bool>();
}

}  // namespace

Result<BpeModel> BpeModel::from_json(const nlohmann::json& model, const std::string& file) {
  BpeModel bpe;
  const auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return data_loss(file + ": model.vocab is missing or not an object of token -> id");
  }
  for (const auto& [token, id_value] : vocab->items()) {
    if (!id_value.is_number_integer() || id_value.get<std::int64_t>() < 0 ||
        id_value.get<std::int64_t>() > 0x7FFFFFFF) {
      return data_loss(file + ": model.vocab[\"" + token + "\"] is " + id_value.dump() +
                       ", not a token id (a non-negative integer)");
    }
    const auto id = id_value.get<std::int32_t>();
    if (static_cast<std::size_t>(id) >= bpe.id_to_token_.size()) {
      bpe.id_to_token_.resize(static_cast<std::size_t>(id) + 1);
      bpe.has_id_.resize(static_cast<std::size_t>(id) + 1);
    }
    bpe.id_to_token_[static_cast<std::size_t>(id)] = token;
    bpe.has_id_[static_cast<std::size_t>(id)] = true;
    bpe.vocab_.emplace(token, id);
  }

  KBIT_ASSIGN_OR_RETURN(bpe.continuing_subword_prefix_,
                        optional_string(model, "continuing_subword_prefix", file));
  KBIT_ASSIGN_OR_RETURN(bpe.end_of_word_suffix_,
                        optional_string(model, "end_of_word_suffix", file));
  KBIT_ASSIGN_OR_RETURN(const std::string unk, optional_string(model, "unk_token", file));
  if (!unk.empty()) {
    const auto it = bpe.vocab_.find(unk);
    if (it == bpe.vocab_.end()) {
      return data_loss(file + ": model.unk_token \"" + unk + "\" is not in model.vocab");
    }
    bpe.unk_id_ = it->second;
  }
  KBIT_ASSIGN_OR_RETURN(bpe.fuse_unk_, optional_bool(model, "fuse_unk", file));
  KBIT_ASSIGN_OR_RETURN(bpe.byte_fallback_, optional_bool(model, "byte_fallback", file));
  KBIT_ASSIGN_OR_RETURN(bpe.ignore_merges_, optional_bool(model, "ignore_merges", file));
  const auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return unimplemented(file + ": model.dropout " + dropout->dump() +
                         " is not supported (kbit tokenizes deterministically; set it to null)");
  }

  const auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) {
    return data_loss(file + ": model.merges is missing or not a list (BPE needs its merges)");
  }
  bpe.merges_.reserve(merges->size());
  for (std::size_t rank = 0; rank < merges->size(); ++rank) {
    const nlohmann::json& merge = (*merges)[rank];
    std::string left;
    std::string right;
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const std::size_t space = text.find(' ', 1);
      if (space == std::string::npos) {
        return data_loss(file + ": model.merges[" + std::to_string(rank) + "] \"" + text +
                         "\" is not two tokens separated by a space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return data_loss(file + ": model.merges[" + std::to_string(rank) + "] is " + merge.dump() +
                       ", not \"a b\" or [\"a\", \"b\"]");
    }
    const auto left_id = bpe.vocab_.find(left);
    const auto right_id = bpe.vocab_.find(right);
    // With a continuing-subword prefix ("##"), the right part's prefix is dropped when merged.
    const std::string& prefix = bpe.continuing_subword_prefix_;
    const bool drop_prefix = !prefix.empty() && right.compare(0, prefix.size(), prefix) == 0;
    const auto merged_id =
        bpe.vocab_.find(left + (drop_prefix ? right.substr(prefix.size()) : right));
    if (left_id == bpe.vocab_.end() || right_id == bpe.vocab_.end() ||
        merged_id == bpe.vocab_.end()) {
      return data_loss(file + ": model.merges[" + std::to_string(rank) + "] [\"" + left + "\", \"" +
                       right + "\"] uses a token that is not in model.vocab");
    }
    for (const std::int32_t id : {left_id->second, right_id->second}) {
      if (static_cast<std::size_t>(id) >= bpe.in_merge_.size()) {
        bpe.in_merge_.resize(static_cast<std::size_t>(id) + 1);
      }
      bpe.in_merge_[static_cast<std::size_t>(id)] = true;
    }
    bpe.merges_.emplace(pair_key(left_id->second, right_id->second),
                        Merge{static_cast<std::int32_t>(rank), merged_id->second});
  }

  bpe.first_char_.assign(bpe.id_to_token_.size(), 0);
  bpe.last_char_.assign(bpe.id_to_token_.size(), 0);
  for (std::size_t id = 0; id < bpe.id_to_token_.size(); ++id) {
    const std::string& token = bpe.id_to_token_[id];
    if (token.empty() || find_invalid_utf8(token)) continue;
    bpe.first_char_[id] = utf8_decode_at(token, 0);
    std::size_t last = token.size() - 1;
    while (last > 0 && (static_cast<unsigned char>(token[last]) & 0xC0) == 0x80) --last;
    bpe.last_char_[id] = utf8_decode_at(token, last);
  }
  for (const auto& [key, merge] : bpe.merges_) {
    const auto left = static_cast<std::size_t>(key >> 32);
    const auto right = static_cast<std::size_t>(key & 0xFFFFFFFFu);
    bpe.joinable_.insert(pair_key(static_cast<std::int32_t>(bpe.last_char_[left]),
                                  static_cast<std::int32_t>(bpe.first_char_[right])));
  }

  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto it = bpe.vocab_.find(std::string_view(name));
    bpe.byte_ids_[static_cast<std::size_t>(b)] = it == bpe.vocab_.end() ? -1 : it->second;
  }
  for (int c = 0; c < 128; ++c) {
    const auto it = bpe.vocab_.find(std::string(1, static_cast<char>(c)));
    bpe.ascii_ids_[static_cast<std::size_t>(c)] = it == bpe.vocab_.end() ? -1 : it->second;
  }
  return bpe;
}

bool BpeModel::joinable(std::int32_t left, std::int32_t right) const {
  return joinable_.count(pair_key(
             static_cast<std::int32_t>(last_char_[static_cast<std::size_t>(left)]),
             static_cast<std::int32_t>(first_char_[static_cast<std::size_t>(right)]))) != 0;
}

const BpeModel::Merge* BpeModel::find_merge(std::int32_t left, std::int32_t right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

std::optional<std::int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() ||
      !has_id_[static_cast<std::size_t>(id)]) {
    return nullptr;
  }
  return &id_to_token_[static_cast<std::size_t>(id)];
}

// Mirrors tokenizers' BPE::merge_word and Word::merge_all: characters (or their byte-fallback
// tokens, or the unknown token) become symbols in a linked list; a heap ordered by (rank,
// position) applies the best merge first, skipping entries that earlier merges made stale.
void BpeModel::tokenize(std::string_view word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  const auto add = [&](std::int32_t id, std::size_t length) {
    const auto index = static_cast<std::int32_t>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, index + 1, static_cast<std::uint32_t>(length)});
  };
  const bool plain = continuing_subword_prefix_.empty() && end_of_word_suffix_.empty();
  std::optional<std::pair<std::int32_t, std::size_t>> unk;  // pending (id, bytes)
  std::string decorated;
  for (std::size_t pos = 0; pos < word.size();) {
    const std::size_t length = utf8_char_length(word, pos);
    std::string_view piece = word.substr(pos, length);
    std::int32_t id = -1;
    if (plain && length == 1) {
      id = ascii_ids_[static_cast<unsigned char>(word[pos])];
    } else {
      if (!plain) {
        decorated.clear();
        if (pos != 0) decorated += continuing_subword_prefix_;
        decorated += piece;
        if (pos + length == word.size()) decorated += end_of_word_suffix_;
        piece = decorated;
      }
      const auto it = vocab_.find(piece);
      if (it != vocab_.end()) id = it->second;
    }
    pos += length;
    if (id >= 0) {
      if (unk) {
        add(unk->first, unk->second);
        unk.reset();
      }
      add(id, length);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char byte : piece) all = all && byte_ids_[static_cast<unsigned char>(byte)] >= 0;
      if (all) {
        for (const char byte : piece) add(byte_ids_[static_cast<unsigned char>(byte)], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk && fuse_unk_) {
        unk->second += length;
      } else {
        if (unk) add(unk->first, unk->second);
        unk.emplace(*unk_id_, length);
      }
    }
  }
  if (unk) add(unk->first, unk->second);
  std::size_t begin = 0;
  for (std::size_t i = 0; i < symbols.size(); ++i) {
    if (inert(symbols[i].id)) {
      merge_range(symbols, begin, i, out);
      out.push_back(symbols[i].id);
      begin = i + 1;
    } else if (plain && i > begin && !joinable(symbols[i - 1].id, symbols[i].id)) {
      merge_range(symbols, begin, i, out);
      begin = i;
    }
  }
  merge_range(symbols, begin, symbols.size(), out);
}

void BpeModel::merge_range(std::vector<Symbol>& symbols, std::size_t begin, std::size_t end,
                           std::vector<std::int32_t>& out) const {
  if (end - begin <= 1) {
    if (end > begin) out.push_back(symbols[begin].id);
    return;
  }
  for (std::size_t i = begin; i < end; ++i) {
    symbols[i].prev = static_cast<std::int32_t>(i) - 1;
    symbols[i].next = static_cast<std::int32_t>(i) + 1;
  }
  symbols[begin].prev = -1;
  symbols[end - 1].next = -1;
  struct Candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t new_id;
    bool operator<(const Candidate& other) const {  // "lower priority than"
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  thread_local std::vector<Candidate> storage;
  storage.clear();
  for (std::size_t i = begin; i + 1 < end; ++i) {
    if (const Merge* merge = find_merge(symbols[i].id, symbols[i + 1].id)) {
      storage.push_back(Candidate{merge->rank, static_cast<std::int32_t>(i), merge->new_id});
    }
  }
  std::make_heap(storage.begin(), storage.end());
  const auto push = [&](const Candidate& candidate) {
    storage.push_back(candidate);
    std::push_heap(storage.begin(), storage.end());
  };
  while (!storage.empty()) {
    std::pop_heap(storage.begin(), storage.end());
    const Candidate top = storage.back();
    storage.pop_back();
    Symbol& current = symbols[static_cast<std::size_t>(top.pos)];
    if (current.length == 0 || current.next == -1) continue;
    const auto next_pos = static_cast<std::size_t>(current.next);
    const Symbol right = symbols[next_pos];
    const Merge* merge = find_merge(current.id, right.id);
    if (merge == nullptr || merge->new_id != top.new_id) continue;

    current.id = top.new_id;
    current.length += right.length;
    current.next = right.next;
    symbols[next_pos].length = 0;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;

    if (current.prev >= 0) {
      const Symbol& previous = symbols[static_cast<std::size_t>(current.prev)];
      if (const Merge* m = find_merge(previous.id, current.id)) {
        push(Candidate{m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      const Symbol& following = symbols[static_cast<std::size_t>(current.next)];
      if (const Merge* m = find_merge(current.id, following.id)) {
        push(Candidate{m->rank, top.pos, m->new_id});
      }
    }
  }
  for (std::size_t i = begin; i < end; ++i) {
    if (symbols[i].length != 0) out.push_back(symbols[i].id);
  }
}

}  // namespace kbit::tokenizer::internal
