#include "kbit/generate/chat_template.h"

#include <fstream>
#include <sstream>

#include "generate/jinja/error.h"
#include "generate/jinja/evaluator.h"
#include "generate/jinja/parser.h"
#include "generate/jinja/value.h"

namespace kbit::generate {

struct ChatTemplate::Impl {
  jinja::Body body;
};

namespace {

std::string where(const jinja::Error& error) {
  std::string text = "chat template line " + std::to_string(error.line);
  if (error.column > 0) text += ", column " + std::to_string(error.column);
  return text;
}

Status to_status(const jinja::Error& error) {
  switch (error.kind) {
    case jinja::Error::Kind::kSyntax:
      return invalid_argument(where(error) + ": syntax error: " + error.message);
    case jinja::Error::Kind::kUnsupported:
      return unimplemented(where(error) + ": " + error.message);
    case jinja::Error::Kind::kRaised:
      return invalid_argument(where(error) +
                              ": the template raised an exception: " + error.message);
    case jinja::Error::Kind::kRender:
      break;
  }
  return invalid_argument(where(error) + ": " + error.message);
}

Result<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

ChatTemplate::ChatTemplate(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

Result<ChatTemplate> ChatTemplate::parse(const std::string& source) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->body = jinja::parse_template(source);
    return ChatTemplate(std::move(impl));
  } catch (const jinja::Error& error) {
    return to_status(error);
  } catch (const std::exception& error) {
    return internal_error(std::string("chat template: ") + error.what());
  }
}

Result<ChatTemplate> ChatTemplate::load_for_model(const std::filesystem::path& model_dir) {
  const std::filesystem::path jinja_file = model_dir / "chat_template.jinja";
  const std::filesystem::path config_file = model_dir / "tokenizer_config.json";
  if (std::filesystem::exists(jinja_file)) {
    KBIT_ASSIGN_OR_RETURN(std::string source, read_file(jinja_file));
    Result<ChatTemplate> parsed = parse(source);
    if (!parsed.ok()) return parsed.status().with_context(jinja_file.string());
    return parsed;
  }
  if (std::filesystem::exists(config_file)) {
    KBIT_ASSIGN_OR_RETURN(std::string text, read_file(config_file));
    nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return data_loss(config_file.string() + " is not a JSON object");
    }
    const auto found = config.find("chat_template");
    if (found != config.end() && !found->is_null()) {
      std::string source;
      if (found->is_string()) {
        source = found->get<std::string>();
      } else if (found->is_array()) {
        bool have_default = false;
        for (const auto& entry : *found) {
          if (entry.is_object() && entry.value("name", "") == "default" &&
              entry.contains("template") && entry["template"].is_string()) {
            source = entry["template"].get<std::string>();
            have_default = true;
          }
        }
        if (!have_default) {
          return not_found(config_file.string() +
                           ": chat_template lists named templates but none named \"default\"");
        }
      } else {
        return data_loss(config_file.string() +
                         ": chat_template must be a string or a list of {name, template}");
      }
      Result<ChatTemplate> parsed = parse(source);
      if (!parsed.ok()) return parsed.status().with_context(config_file.string());
      return parsed;
    }
  }
  return not_found("no chat template in " + model_dir.string() + ": neither " +
                   jinja_file.filename().string() + " nor a \"chat_template\" key in " +
                   config_file.filename().string() +
                   " (pass a template explicitly, or use a model with a chat template)");
}

Result<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt,
                                         const nlohmann::json& context) const {
  return render_impl(messages, add_generation_prompt, context);
}

Result<std::string> ChatTemplate::render_ordered(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt,
                                                 const nlohmann::ordered_json& context) const {
  return render_impl(messages, add_generation_prompt, context);
}

template <typename Json>
Result<std::string> ChatTemplate::render_impl(const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt,
                                              const Json& context) const {
  if (!context.is_object()) return invalid_argument("chat template context must be a JSON object");
  try {
    // What transformers passes: tools and documents (None unless given), the messages, the flag,
    // then the caller's keys (bos_token, eos_token, ...).
    jinja::Value variables = jinja::Value::dict({});
    variables.set("tools", jinja::Value::none());
    variables.set("documents", jinja::Value::none());
    jinja::Value::List message_values;
    for (const auto& m : messages) {
      message_values.push_back(jinja::Value::dict(
          {{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}}));
    }
    variables.set("messages", jinja::Value::list(std::move(message_values)));
    variables.set("add_generation_prompt", jinja::Value(add_generation_prompt));
    for (const auto& [key, value] : context.items()) {
      variables.set(key, jinja::Value::from_json(value));
    }
    return jinja::render(impl_->body, variables);
  } catch (const jinja::Error& error) {
    return to_status(error);
  } catch (const std::exception& error) {
    return internal_error(std::string("chat template: ") + error.what());
  }
}

nlohmann::json tokenizer_template_context(const tokenizer::Tokenizer& tokenizer) {
  nlohmann::json context = nlohmann::json::object();
  if (tokenizer.bos_id()) context["bos_token"] = tokenizer.id_to_token(*tokenizer.bos_id());
  if (tokenizer.eos_id()) context["eos_token"] = tokenizer.id_to_token(*tokenizer.eos_id());
  return context;
}

}  // namespace kbit::generate
