// Chat templates: the Jinja templates of Hugging Face models, rendered by kbit's own interpreter
// exactly as transformers' apply_chat_template renders them.
//
// The interpreter covers what Hub templates use: for/if/elif/else, set (with namespace()),
// loop variables, macros, filters (trim, length, tojson, upper, lower, ...), tests, string and
// dict methods, slicing, raise_exception, and the context transformers provides (messages,
// add_generation_prompt, bos_token, eos_token, ...). Anything else fails at parse or render time
// with an error naming the template line and the construct.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kbit/core/status.h"
#include "kbit/io/chat_message.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::generate {

using ChatMessage = io::ChatMessage;

class ChatTemplate {
 public:
  // Parses a template; fails naming the line and column of a syntax error.
  static Result<ChatTemplate> parse(const std::string& source);
  // The template of a model folder: chat_template.jinja, else tokenizer_config.json's
  // `chat_template` (a string, or a list of named templates: "default" is used). kNotFound
  // naming both files when neither has one.
  static Result<ChatTemplate> load_for_model(const std::filesystem::path& model_dir);

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

  // Renders with `messages`, `add_generation_prompt` and every key of `context` (bos_token,
  // eos_token, ...) as template variables.
  Result<std::string> render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                             const nlohmann::json& context = nlohmann::json::object()) const;
  // The same, keeping the key order of the context's objects: nlohmann::json sorts object keys,
  // and templates that print dicts (tojson of tool schemas, items()) show that order.
  Result<std::string> render_ordered(const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt,
                                     const nlohmann::ordered_json& context) const;

 private:
  struct Impl;
  explicit ChatTemplate(std::unique_ptr<Impl> impl);
  template <typename Json>
  Result<std::string> render_impl(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt, const Json& context) const;
  std::unique_ptr<Impl> impl_;
};

// The variables transformers passes a template from the tokenizer: bos_token and eos_token (the
// tokens' strings), each where the tokenizer has one.
nlohmann::json tokenizer_template_context(const tokenizer::Tokenizer& tokenizer);

}  // namespace kbit::generate
