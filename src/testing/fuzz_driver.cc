// A stand-in for libFuzzer's main, for builds without clang's -fsanitize=fuzzer: replays every
// file of a corpus folder through LLVMFuzzerTestOneInput, then feeds it random mutations of the
// corpus (byte flips, overwrites with boundary values, insertions, deletions, truncations) until
// a time budget is spent. A crash (or a sanitizer report) ends the process, failing the test.
//
// Usage: <fuzzer> CORPUS_DIR [--seconds N] [--seed S]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

using Bytes = std::vector<std::uint8_t>;

std::vector<Bytes> read_corpus(const std::filesystem::path& folder) {
  std::vector<Bytes> corpus;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return corpus;
}

// One random edit of `input`.
Bytes mutate(Bytes input, std::mt19937_64& random) {
  const auto pick = [&](std::size_t bound) {
    return bound == 0 ? std::size_t{0} : static_cast<std::size_t>(random() % bound);
  };
  static const std::uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '"', '{', '}',
                                             '[',  ']',  ',',  ':',  '-',  '9', '0', 'e'};
  switch (pick(6)) {
    case 0:  // flip a bit
      if (!input.empty()) input[pick(input.size())] ^= static_cast<std::uint8_t>(1u << pick(8));
      break;
    case 1:  // overwrite with a value parsers find interesting
      if (!input.empty()) input[pick(input.size())] = interesting[pick(sizeof(interesting))];
      break;
    case 2:  // insert a byte
      input.insert(input.begin() + static_cast<std::ptrdiff_t>(pick(input.size() + 1)),
                   interesting[pick(sizeof(interesting))]);
      break;
    case 3:  // delete a byte
      if (!input.empty())
        input.erase(input.begin() + static_cast<std::ptrdiff_t>(pick(input.size())));
      break;
    case 4:  // truncate
      input.resize(pick(input.size() + 1));
      break;
    default:  // rewrite the 8-byte header length
      if (input.size() >= 8) {
        const std::uint64_t length = pick(2) == 0 ? random() : pick(input.size() + 16);
        for (int i = 0; i < 8; ++i)
          input[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length >> (8 * i));
      }
      break;
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [--seconds N] [--seed S]\n", argv[0]);
    return 2;
  }
  double seconds = 5;
  std::uint64_t seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") seconds = std::atof(argv[i + 1]);
    if (flag == "--seed") seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  const std::vector<Bytes> corpus = read_corpus(argv[1]);
  if (corpus.empty()) {
    std::fprintf(stderr, "fuzz driver: no corpus files in %s\n", argv[1]);
    return 2;
  }
  for (const Bytes& input : corpus) LLVMFuzzerTestOneInput(input.data(), input.size());

  std::mt19937_64 random(seed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  long runs = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    Bytes input = corpus[random() % corpus.size()];
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits; ++e) input = mutate(std::move(input), random);
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
  }
  std::printf("fuzz driver: %zu corpus inputs and %ld mutations, no crash\n", corpus.size(), runs);
  return 0;
}
