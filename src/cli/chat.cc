// kbit chat: a conversation with a model through its chat template, replies streamed.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include <fmt/core.h>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "kbit/generate/chat_template.h"
#include "kbit/generate/generator.h"

namespace kbit::cli {
namespace {

struct ChatFlags {
  ModelFlags model;
  std::string system;
  generate::GenerationParams generation;
  std::int64_t context = 4096;
};

// The conversation so far and the tokens already in the KV cache.
struct Conversation {
  std::vector<generate::ChatMessage> messages;
  std::vector<std::int32_t> cached_tokens;
};

// Renders the conversation, reuses the cached prefix of its tokens, and streams the reply.
Result<std::string> reply(const ChatFlags& flags, LoadedModel& loaded,
                          const generate::ChatTemplate& chat_template, model::KvCache& cache,
                          Conversation& conversation) {
  KBIT_ASSIGN_OR_RETURN(
      const std::string rendered,
      chat_template.render(conversation.messages, /*add_generation_prompt=*/true,
                           generate::tokenizer_template_context(loaded.tokenizer)));
  // transformers tokenizes a rendered template without adding special tokens again.
  KBIT_ASSIGN_OR_RETURN(std::vector<std::int32_t> ids, loaded.tokenizer.encode(rendered, false));
  std::size_t common = 0;
  while (common < ids.size() && common < conversation.cached_tokens.size() &&
         ids[common] == conversation.cached_tokens[common]) {
    ++common;
  }
  common = std::min(common, ids.size() - 1);  // generate() needs at least one new token
  KBIT_RETURN_IF_ERROR(cache.truncate(static_cast<std::int64_t>(common)));
  const std::span<const std::int32_t> new_tokens(ids.data() + common, ids.size() - common);
  KBIT_ASSIGN_OR_RETURN(const generate::GenerationResult result,
                        generate::generate(loaded.model, loaded.tokenizer, cache, new_tokens,
                                           flags.generation, [](std::string_view text) {
                                             std::fwrite(text.data(), 1, text.size(), stdout);
                                             std::fflush(stdout);
                                           }));
  // The cache now holds the prompt and every generated token that was fed back.
  ids.insert(ids.end(), result.tokens.begin(), result.tokens.end());
  ids.resize(static_cast<std::size_t>(cache.size()));
  conversation.cached_tokens = std::move(ids);
  return result.text;
}

Status run(const ChatFlags& flags) {
  KBIT_RETURN_IF_ERROR(flags.generation.sampling.validate());
  KBIT_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(flags.model));
  KBIT_ASSIGN_OR_RETURN(const generate::ChatTemplate chat_template,
                        generate::ChatTemplate::load_for_model(flags.model.model_dir));
  KBIT_ASSIGN_OR_RETURN(model::KvCache cache, loaded.model.new_cache(flags.context));
  Conversation conversation;
  if (!flags.system.empty()) conversation.messages.push_back({"system", flags.system});
  const bool interactive = isatty(STDIN_FILENO) != 0;
  std::string line;
  while (true) {
    if (interactive) fmt::print("> ");
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    conversation.messages.push_back({"user", line});
    KBIT_ASSIGN_OR_RETURN(std::string text,
                          reply(flags, loaded, chat_template, cache, conversation));
    fmt::print("\n");
    conversation.messages.push_back({"assistant", std::move(text)});
  }
  return ok_status();
}

}  // namespace

Action add_chat_command(CLI::App& app) {
  auto flags = std::make_shared<ChatFlags>();
  flags->generation.max_new_tokens = 256;
  CLI::App* command = app.add_subcommand(
      "chat", "Talk with a model: one message per line on standard input, replies streamed");
  add_model_flags(*command, flags->model);
  command->add_option("--system", flags->system, "a system message to start with");
  command
      ->add_option("-n,--max-new-tokens", flags->generation.max_new_tokens,
                   "the longest reply in tokens")
      ->capture_default_str();
  add_sampling_flags(*command, flags->generation.sampling);
  command->add_option("--ctx", flags->context, "context size in tokens for the whole conversation")
      ->capture_default_str();
  return [flags] { return run(*flags); };
}

}  // namespace kbit::cli
