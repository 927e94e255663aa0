// A process-wide pool of worker threads for data-parallel CPU loops.
#pragma once

#include <cstdint>
#include <functional>

namespace kbit {

// Number of threads parallel_for uses at most: the KBIT_NUM_THREADS environment variable if
// set to a positive integer, else the hardware concurrency.
int max_threads();

// Splits [0, count) into contiguous chunks of at least `min_chunk` items and calls
// body(begin, end) for each, on up to `threads` threads (0 = max_threads()), the caller
// included. Returns when every chunk is done. `body` must be safe to call concurrently on
// disjoint ranges. Nested calls from inside `body` run serially.
void parallel_for(std::int64_t count, std::int64_t min_chunk,
                  const std::function<void(std::int64_t begin, std::int64_t end)>& body,
                  int threads = 0);

}  // namespace kbit
