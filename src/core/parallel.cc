#include "kbit/core/parallel.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace kbit {
namespace {

thread_local bool inside_parallel_region = false;

// Workers sleep until a job is posted, then take chunks from a shared counter. One job at a
// time: concurrent callers are serialised by job_mutex_.
class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

  int worker_count() const { return static_cast<int>(threads_.size()); }

  void run(std::int64_t chunks, int helpers, const std::function<void(std::int64_t)>& chunk_body) {
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &chunk_body;
      chunk_count_ = chunks;
      next_chunk_.store(0);
      remaining_ = chunks;
      helpers_wanted_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    take_chunks();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return remaining_ == 0 && helpers_busy_ == 0; });
    body_ = nullptr;
    // Close the job to workers that wake only now: one joining late would read the counters
    // of the next job and could run one of its chunks twice.
    helpers_wanted_ = 0;
  }

 private:
  void take_chunks() {
    inside_parallel_region = true;
    for (std::int64_t chunk = next_chunk_.fetch_add(1); chunk < chunk_count_;
         chunk = next_chunk_.fetch_add(1)) {
      (*body_)(chunk);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_all();
    }
    inside_parallel_region = false;
  }

  void worker_loop() {
    std::uint64_t seen_generation = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
      if (helpers_wanted_ == 0) continue;
      --helpers_wanted_;
      ++helpers_busy_;
      lock.unlock();
      take_chunks();
      lock.lock();
      if (--helpers_busy_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(std::int64_t)>* body_ = nullptr;
  std::int64_t chunk_count_ = 0;
  std::atomic<std::int64_t> next_chunk_{0};
  std::int64_t remaining_ = 0;
  int helpers_wanted_ = 0;
  int helpers_busy_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
};

int threads_from_environment() {
  const char* text = std::getenv("KBIT_NUM_THREADS");
  int value = 0;
  if (text != nullptr) {
    const char* end = text + std::strlen(text);
    const auto [parsed_end, error] = std::from_chars(text, end, value);
    if (error == std::errc() && parsed_end == end && value > 0) return value;
  }
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

ThreadPool& pool() {
  static ThreadPool instance(max_threads() - 1);
  return instance;
}

}  // namespace

int max_threads() {
  static const int threads = threads_from_environment();
  return threads;
}

void parallel_for(std::int64_t count, std::int64_t min_chunk,
                  const std::function<void(std::int64_t, std::int64_t)>& body, int threads) {
  if (count <= 0) return;
  min_chunk = std::max<std::int64_t>(1, min_chunk);
  const int wanted = std::min(threads > 0 ? threads : max_threads(), max_threads());
  const std::int64_t max_chunks = (count + min_chunk - 1) / min_chunk;
  // A few chunks per thread balance uneven work without much scheduling overhead.
  const std::int64_t chunks = std::min<std::int64_t>(max_chunks, std::int64_t{wanted} * 4);
  if (chunks <= 1 || wanted <= 1 || inside_parallel_region) {
    body(0, count);
    return;
  }
  const std::int64_t chunk_size = (count + chunks - 1) / chunks;
  const std::function<void(std::int64_t)> chunk_body = [&](std::int64_t chunk) {
    const std::int64_t begin = chunk * chunk_size;
    body(begin, std::min(count, begin + chunk_size));
  };
  const std::int64_t used_chunks = (count + chunk_size - 1) / chunk_size;
  pool().run(used_chunks, std::min(wanted - 1, pool().worker_count()), chunk_body);
}

}  // namespace kbit
