// kbit tokenize: the token ids (and tokens) of a text, as the model's tokenizer.json makes them.
#include <fstream>
#include <sstream>

#include <fmt/core.h>

#include "cli/commands.h"
#include "kbit/tokenizer/tokenizer.h"

namespace kbit::cli {
namespace {

struct TokenizeFlags {
  std::string model_dir;
  std::string prompt;
  std::string file;
  bool no_special = false;
  bool ids_only = false;
};

// The token's vocabulary string with control characters written as escapes.
std::string printable(const std::string& token) {
  std::string out;
  for (const char c : token) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out;
}

Result<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("-f " + path + ": cannot open the file");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

Status run(const TokenizeFlags& flags) {
  KBIT_ASSIGN_OR_RETURN(
      const tokenizer::Tokenizer tok,
      tokenizer::Tokenizer::load(std::filesystem::path(flags.model_dir) / "tokenizer.json"));
  std::string text = flags.prompt;
  if (!flags.file.empty()) {
    KBIT_ASSIGN_OR_RETURN(text, read_text(flags.file));
  }
  KBIT_ASSIGN_OR_RETURN(const std::vector<tokenizer::TokenId> ids,
                        tok.encode(text, /*add_special_tokens=*/!flags.no_special));
  if (flags.ids_only) {
    std::string line;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) line += ' ';
      line += std::to_string(ids[i]);
    }
    fmt::print("{}\n", line);
    return ok_status();
  }
  fmt::print("{} tokens\n", ids.size());
  for (const tokenizer::TokenId id : ids) {
    fmt::print("{:>8}  {}\n", id, printable(tok.id_to_token(id)));
  }
  return ok_status();
}

}  // namespace

Action add_tokenize_command(CLI::App& app) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* command =
      app.add_subcommand("tokenize", "Print the token ids (and tokens) of a text for a model");
  command->add_option("-m,--model", flags->model_dir, "model folder holding tokenizer.json")
      ->required();
  CLI::Option* prompt = command->add_option("-p,--prompt", flags->prompt, "text to tokenize");
  CLI::Option* file = command->add_option("-f,--file", flags->file, "file whose text to tokenize");
  prompt->excludes(file);
  file->excludes(prompt);
  command->add_flag("--no-special", flags->no_special,
                    "leave out the special tokens the tokenizer adds (e.g. BOS)");
  command->add_flag("--ids-only", flags->ids_only, "print only the ids, on one line");
  return [flags, prompt, file] {
    if (prompt->count() == 0 && file->count() == 0) {
      return invalid_argument("give the text with -p TEXT or -f FILE");
    }
    return run(*flags);
  };
}

}  // namespace kbit::cli
