// A one-line progress bar on standard error, for loading and long runs. Silent when standard
// error is not a terminal, so logs and pipes stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kbit::cli {

class ProgressBar {
 public:
  // `what` names the work ("perplexity", "loading"); `unit` the items ("windows").
  ProgressBar(std::string what, std::string unit);
  ~ProgressBar();  // clears the line if anything was drawn

  // Redraws at most ten times a second, and always for the last item.
  void update(std::int64_t done, std::int64_t total);

 private:
  std::string what_;
  std::string unit_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace kbit::cli
