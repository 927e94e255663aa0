// The kbit command line: each subcommand lives in its own file and registers itself here.
//
// A subcommand adds its flags to `app` and returns the action to run when it is chosen. Actions
// return a Status; main() prints a failed one and exits non-zero. Subcommands parse and print;
// the work itself is done by library calls.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

#include "kbit/core/status.h"

namespace kbit::cli {

using Action = std::function<Status()>;

Action add_roundtrip_command(CLI::App& app);
Action add_tokenize_command(CLI::App& app);
Action add_logits_command(CLI::App& app);
Action add_generate_command(CLI::App& app);
Action add_chat_command(CLI::App& app);
Action add_perplexity_command(CLI::App& app);
Action add_quantize_command(CLI::App& app);
Action add_info_command(CLI::App& app);
Action add_bench_command(CLI::App& app);
Action add_finetune_command(CLI::App& app);
Action add_finetune_bench_command(CLI::App& app);
Action add_merge_command(CLI::App& app);

}  // namespace kbit::cli
