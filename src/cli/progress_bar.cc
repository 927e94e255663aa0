#include "cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/core.h>

namespace kbit::cli {

ProgressBar::ProgressBar(std::string what, std::string unit)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      enabled_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() {
  if (drawn_) fmt::print(stderr, "\r\033[K");
}

void ProgressBar::update(std::int64_t done, std::int64_t total) {
  if (!enabled_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;
  constexpr int kWidth = 30;
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  fmt::print(stderr, "\r{} [{}{}] {}/{} {} {:.1f} s\033[K", what_, std::string(filled, '#'),
             std::string(kWidth - filled, '.'), done, total, unit_, elapsed);
  std::fflush(stderr);
}

}  // namespace kbit::cli
