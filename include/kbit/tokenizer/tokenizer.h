// Hugging Face tokenizers (tokenizer.json): text <-> token ids, as the `tokenizers` library does.
//
// Supported: BPE models with the byte-level pre-tokenizer (GPT-2 / Llama-3 split pattern) and
// the metaspace form with byte fallback (Llama-2 / SentencePiece), their normalizers, added and
// special tokens, and the post-processor's BOS/EOS. Anything else is refused at load with an
// error naming the field and its value.
//
// A Tokenizer is immutable after load; every method is safe to call concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kbit/core/status.h"

namespace kbit::tokenizer {

using TokenId = std::int32_t;

class Tokenizer {
 public:
  // Loads tokenizer.json, and tokenizer_config.json from the same folder when present (its
  // bos_token / eos_token / add_bos_token settings). Fails naming the file and the field.
  static Result<Tokenizer> load(const std::filesystem::path& tokenizer_json);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Ids of `text` (valid UTF-8, else kInvalidArgument naming the byte offset). With
  // add_special_tokens, the post-processor's tokens (e.g. BOS) are added as transformers does.
  Result<std::vector<TokenId>> encode(std::string_view text, bool add_special_tokens) const;

  // The text of `ids`; invalid ids fail naming the id. Special tokens are dropped when
  // skip_special_tokens. decode(encode(x, false), false) == x for valid UTF-8 x.
  Result<std::string> decode(std::span<const TokenId> ids, bool skip_special_tokens) const;

  std::int64_t vocab_size() const;  // including added tokens
  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;
  std::optional<TokenId> token_to_id(std::string_view token) const;
  // The token's string as stored in the vocabulary ("Ġthe", "▁the", "<0x0A>"), or "" if invalid.
  std::string id_to_token(TokenId id) const;
  bool is_special(TokenId id) const;

  // Turns ids into text one at a time for streaming output: push() returns the text that is
  // complete so far (never a broken UTF-8 sequence, never text that a later id could change),
  // finish() returns what remains.
  class StreamingDecoder {
   public:
    explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
    Result<std::string> push(TokenId id);
    std::string finish();

   private:
    const Tokenizer* tokenizer_;
    bool skip_special_tokens_;
    std::vector<TokenId> pending_;
    std::size_t emitted_bytes_ = 0;
  };

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kbit::tokenizer
