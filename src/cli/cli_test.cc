// The kbit command end to end: bad input gives one clear error and a non-zero exit status, and
// `kbit generate` reproduces transformers' greedy output. Runs the built binary (KBIT_CLI).
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kbit/core/device.h"
#include "testing/golden.h"

namespace kbit::cli {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_status = -1;
  std::string out;
  std::string err;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("kbit_cli_test_" + std::to_string(::getpid()));
    fs::create_directories(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  // Runs `kbit <arguments>` (shell-quoted by the caller) and captures both streams.
  CommandResult run(const std::string& arguments) {
    const fs::path out = directory_ / "stdout", err = directory_ / "stderr";
    const std::string command = std::string(KBIT_CLI) + " " + arguments + " >" + out.string() +
                                " 2>" + err.string() + " </dev/null";
    const int status = std::system(command.c_str());
    return CommandResult{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(out),
                         read_file(err)};
  }

  // A copy of the demo model that a test may break.
  fs::path copy_of_demo_model() {
    const fs::path copy = directory_ / "model";
    fs::copy(fs::path(KBIT_SOURCE_DIR) / "models/shakespeare-llama2", copy);
    for (const auto& entry : fs::directory_iterator(copy)) {
      fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
    }
    return copy;
  }

  // Expects one error line naming every fragment, and exit status 1.
  void expect_failure(const CommandResult& result, std::initializer_list<std::string> fragments) {
    EXPECT_EQ(result.exit_status, 1) << result.err;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    for (const std::string& fragment : fragments) {
      EXPECT_NE(result.err.find(fragment), std::string::npos)
          << "'" << fragment << "' not in: " << result.err;
    }
  }

  fs::path directory_;
};

TEST_F(CliTest, VersionAndHelp) {
  EXPECT_EQ(run("--version").exit_status, 0);
  const CommandResult help = run("--help");
  EXPECT_EQ(help.exit_status, 0);
  for (const char* command : {"generate", "chat", "perplexity", "logits", "tokenize", "roundtrip",
                              "quantize", "info", "bench", "finetune", "merge"}) {
    EXPECT_NE(help.out.find(command), std::string::npos) << command;
  }
  EXPECT_NE(run("no-such-command").exit_status, 0);
}

TEST_F(CliTest, TruncatedWeightsFile) {
  const fs::path model = copy_of_demo_model();
  fs::resize_file(model / "model.safetensors", fs::file_size(model / "model.safetensors") / 2);
  expect_failure(run("generate -m " + model.string() + " -p x"),
                 {"model.safetensors", "truncated"});
}

TEST_F(CliTest, HeaderThatLiesAboutOffsets) {
  const fs::path model = copy_of_demo_model();
  // The first tensor's offsets shifted by 4 bytes: it overlaps its neighbour.
  std::string bytes = read_file(model / "model.safetensors");
  const std::size_t at = bytes.find("\"data_offsets\":[0,");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 18, "\"data_offsets\":[4,");
  std::ofstream(model / "model.safetensors", std::ios::binary) << bytes;
  expect_failure(run("generate -m " + model.string() + " -p x"),
                 {"model.safetensors", "data_offsets"});
}

TEST_F(CliTest, MissingShard) {
  const fs::path model = copy_of_demo_model();
  fs::rename(model / "model.safetensors", model / "model-00001-of-00002.safetensors");
  std::ofstream(model / "model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors",)"
      << R"( "model.embed_tokens.weight": "model-00001-of-00002.safetensors"}})";
  expect_failure(run("generate -m " + model.string() + " -p x"),
                 {"model-00002-of-00002.safetensors"});
}

TEST_F(CliTest, ConfigWithAWrongField) {
  const fs::path model = copy_of_demo_model();
  nlohmann::json config = nlohmann::json::parse(read_file(model / "config.json"));
  config["hidden_act"] = "gelu";
  std::ofstream(model / "config.json") << config.dump();
  expect_failure(run("generate -m " + model.string() + " -p x"),
                 {"config.json", "hidden_act", "gelu"});
}

TEST_F(CliTest, UnsupportedTokenizer) {
  const fs::path model = copy_of_demo_model();
  nlohmann::json tokenizer = nlohmann::json::parse(read_file(model / "tokenizer.json"));
  tokenizer["model"]["type"] = "WordPiece";
  std::ofstream(model / "tokenizer.json") << tokenizer.dump();
  expect_failure(run("tokenize -m " + model.string() + " -p x"), {"tokenizer.json", "WordPiece"});
}

TEST_F(CliTest, BadFlagValues) {
  const std::string model = copy_of_demo_model().string();
  expect_failure(run("generate -m " + model + " -p x --top-p 1.5"), {"--top-p"});
  expect_failure(run("perplexity -m " + model + " -f /nonexistent"), {"/nonexistent"});
}

TEST_F(CliTest, BadQuantizationFlags) {
  const std::string model = copy_of_demo_model().string();
  EXPECT_NE(run("generate -m " + model + " -p x --load-in-4bit --load-in-8bit").exit_status, 0);
  expect_failure(run("generate -m " + model + " -p x --load-in-4bit --blocksize 48"),
                 {"--blocksize 48"});
  expect_failure(run("generate -m " + model + " -p x --load-in-4bit --int8-threshold 3"),
                 {"--int8-threshold", "8-bit"});
  expect_failure(run("generate -m " + model + " -p x --load-in-8bit --double-quant"),
                 {"--double-quant", "4-bit"});
  expect_failure(run("generate -m " + model + " -p x --load-in-4bit --lean-double-quant"),
                 {"--lean-double-quant", "--double-quant"});
  expect_failure(run("generate -m " + model + " -p x --load-in-8bit --lean-double-quant"),
                 {"--lean-double-quant", "--load-in-4bit"});
  expect_failure(run("generate -m " + model + " -p x --quant-type fp4"), {"--load-in-4bit"});
  expect_failure(run("generate -m " + model + " -p x --load-in-4bit --skip-modules '(lm'"),
                 {"(lm"});
  expect_failure(run("info -m " + model + " --memory 24XB"), {"--memory", "24XB"});
  expect_failure(run("quantize -m " + model + " -o " + (directory_ / "q").string()),
                 {"--load-in-4bit"});
}

// --device: an unknown name or an unusable GPU is refused naming the flag; bench's own flags.
TEST_F(CliTest, BadDeviceAndBenchFlags) {
  const std::string model = copy_of_demo_model().string();
  expect_failure(run("generate -m " + model + " -p x --device tpu"), {"--device 'tpu'"});
  if (!cuda_available()) {
    expect_failure(run("generate -m " + model + " -p x --device cuda"), {"--device cuda", "cpu"});
    expect_failure(run("info -m " + model + " --device cuda:1"), {"--device cuda:1"});
    expect_failure(run("bench --random-weights " + model + "/config.json"), {"GPU"});
  }
  expect_failure(run("bench -m " + model + " --random-weights " + model + "/config.json"),
                 {"-m DIR", "--random-weights"});
  expect_failure(run("bench -m " + model + " -n 0"), {"-n"});
}

// kbit bench on the CPU: the JSON report of prompt and generation throughput.
TEST_F(CliTest, BenchReportsThroughput) {
  const std::string model = copy_of_demo_model().string();
  const CommandResult bench = run("bench -m " + model + " --device cpu -p 16 -n 4 -r 2 --json");
  ASSERT_EQ(bench.exit_status, 0) << bench.err;
  const nlohmann::json report = nlohmann::json::parse(bench.out);
  EXPECT_EQ(report["device"], "cpu");
  EXPECT_EQ(report["mode"], "f32");
  ASSERT_EQ(report["results"].size(), 1u);
  const nlohmann::json& result = report["results"][0];
  EXPECT_EQ(result["batch"], 1);
  EXPECT_GT(result["prompt_tokens_per_second"].get<double>(), 0.0);
  EXPECT_GT(result["decode_tokens_per_second"].get<double>(), 0.0);
  EXPECT_EQ(result["prompt_seconds"].size(), 2u);
}

// quantize, then info and generate on the result; the output folder exists only when complete.
TEST_F(CliTest, QuantizeInfoAndGenerate) {
  const std::string model = copy_of_demo_model().string();
  const std::string out = (directory_ / "nf4").string();
  const CommandResult quantized =
      run("quantize -m " + model + " -o " + out + " --load-in-4bit --double-quant");
  ASSERT_EQ(quantized.exit_status, 0) << quantized.err;
  EXPECT_TRUE(fs::exists(fs::path(out) / "tokenizer.json"));
  expect_failure(run("quantize -m " + model + " -o " + out + " --load-in-4bit"),
                 {out, "already exists"});
  expect_failure(run("quantize -m " + out + " -o " + out + "2 --load-in-8bit"),
                 {"already quantized"});
  EXPECT_FALSE(fs::exists(out + "2"));

  const CommandResult info = run("info -m " + out + " --json --memory 1GiB");
  ASSERT_EQ(info.exit_status, 0) << info.err;
  const nlohmann::json summary = nlohmann::json::parse(info.out);
  ASSERT_EQ(summary["modes"].size(), 1u);
  EXPECT_EQ(summary["modes"][0]["mode"], "stored");
  EXPECT_EQ(summary["modes"][0]["fits"], true);

  for (const std::string& arguments :
       {"generate -m " + out + " -p ROMEO: -n 8",
        "generate -m " + model + " -p ROMEO: -n 8 --load-in-8bit --dtype bf16"}) {
    const CommandResult generated = run(arguments);
    EXPECT_EQ(generated.exit_status, 0) << arguments << ": " << generated.err;
    EXPECT_GT(generated.out.size(), std::string("ROMEO:").size()) << arguments;
  }
}

// `kbit info --json` gives transformers' get_memory_footprint() of each mode (summary.json).
TEST_F(CliTest, InfoFootprintsMatchTransformers) {
  KBIT_REQUIRE_SHARED_DIR();
  const CommandResult info =
      run("info -m " + testing::shared_file("models/shakespeare-llama2").string() + " --json");
  ASSERT_EQ(info.exit_status, 0) << info.err;
  const nlohmann::json summary = nlohmann::json::parse(info.out);
  const nlohmann::json golden =
      nlohmann::json::parse(read_file(testing::shared_file("golden/summary.json")));
  int compared = 0;
  for (const nlohmann::json& mode : summary["modes"]) {
    const nlohmann::json& expected = golden["models"]["shakespeare-llama2"];
    const std::string name = mode["mode"];
    if (!expected.contains(name)) continue;
    EXPECT_EQ(mode["footprint_bytes"], expected[name]["footprint_bytes"]) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 5);  // bf16, nf4_dq, nf4, fp4, int8
}

// `kbit generate` in f32 reproduces transformers' greedy tokens for both prompts of the model.
TEST_F(CliTest, GenerateReproducesGreedyOutput) {
  KBIT_REQUIRE_SHARED_DIR();
  Result<io::SafetensorsFile> golden = testing::open_golden("greedy-f32.safetensors");
  ASSERT_TRUE(golden.ok());
  const nlohmann::json summary =
      nlohmann::json::parse(read_file(testing::shared_file("golden/summary.json")));
  for (int prompt = 0; prompt < 2; ++prompt) {
    const std::string text = summary["prompts"][prompt].get<std::string>();
    const fs::path prompt_file = directory_ / "prompt";
    std::ofstream(prompt_file, std::ios::binary) << text;
    const CommandResult result =
        run("generate -m " + std::string(KBIT_SOURCE_DIR) +
            "/models/shakespeare-llama2 --temperature 0 --ignore-eos -n 40 --json -p \"$(cat " +
            prompt_file.string() + ")\"");
    ASSERT_EQ(result.exit_status, 0) << result.err;
    const nlohmann::json out = nlohmann::json::parse(result.out);
    std::vector<std::int64_t> ids = out["prompt_ids"].get<std::vector<std::int64_t>>();
    const auto generated = out["generated_ids"].get<std::vector<std::int64_t>>();
    ids.insert(ids.end(), generated.begin(), generated.end());
    EXPECT_EQ(ids, testing::golden_values<std::int64_t>(
                       *golden, "shakespeare-llama2.prompt" + std::to_string(prompt) + ".greedy"));
  }
}

// --adapter applies a PEFT LoRA adapter: generate runs with it, logits change with it, and a
// missing adapter folder is one error line naming it.
TEST_F(CliTest, GenerateAndLogitsWithAnAdapter) {
  KBIT_REQUIRE_SHARED_DIR();
  const std::string model = testing::shared_file("models/shakespeare-llama3").string();
  const std::string adapter =
      testing::shared_file("golden/checkpoints/shakespeare-llama3-qlora-adapter").string();
  const std::string quantized = " --load-in-4bit --double-quant --dtype bf16";
  const CommandResult generated =
      run("generate -m " + model + " -p ROMEO: -n 8 --adapter " + adapter + quantized);
  EXPECT_EQ(generated.exit_status, 0) << generated.err;
  EXPECT_GT(generated.out.size(), std::string("ROMEO:").size());

  const std::string with = (directory_ / "with.safetensors").string();
  const std::string without = (directory_ / "without.safetensors").string();
  const std::string logits = "logits -m " + model + " --ids 0,17,300" + quantized;
  ASSERT_EQ(run(logits + " --adapter " + adapter + " -o " + with).exit_status, 0);
  ASSERT_EQ(run(logits + " -o " + without).exit_status, 0);
  EXPECT_NE(read_file(with), read_file(without));

  const std::string missing = (directory_ / "no-adapter").string();
  expect_failure(run("generate -m " + model + " -p x --adapter " + missing), {missing});
}

// kbit finetune trains an adapter that --adapter then applies; bad data is one error line naming
// the file and the line.
TEST_F(CliTest, FinetuneWritesAnAdapterThatLoads) {
  const fs::path model = fs::path(KBIT_SOURCE_DIR) / "models/shakespeare-llama2";
  const fs::path data = directory_ / "data.jsonl";
  std::ofstream(data) << R"({"text": "ROMEO: But soft, what light through yonder window breaks?"})"
                      << "\n"
                      << R"({"prompt": "JULIET:", "completion": " O Romeo, Romeo!"})"
                      << "\n";
  const fs::path adapter = directory_ / "adapter";
  const fs::path metrics = directory_ / "metrics.jsonl";
  const std::string train = "finetune -m " + model.string() + " --data " + data.string() + " -o " +
                            adapter.string() + " --max-length 16 --lora-r 4 ";
  // Two layouts in one file: refused before any training, naming the line.
  expect_failure(run(train), {data.string(), "line 2"});
  std::ofstream(data) << R"({"text": "ROMEO: But soft, what light through yonder window breaks?"})"
                      << "\n";
  const CommandResult trained =
      run(train + "--max-steps 3 --lr 1e-2 --metrics " + metrics.string());
  ASSERT_EQ(trained.exit_status, 0) << trained.err;
  const std::string lines = read_file(metrics);
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 3);
  EXPECT_TRUE(fs::exists(adapter / "adapter_config.json"));
  const CommandResult generated =
      run("generate -m " + model.string() + " -p ROMEO: -n 4 --adapter " + adapter.string());
  EXPECT_EQ(generated.exit_status, 0) << generated.err;
  expect_failure(run(train + "--optim sgd"), {"sgd"});

  // Checkpoints: a run interrupted after step 2 (its save of step 4 cut short) and resumed ends
  // with the adapter of the run that was not.
  const std::string four_steps = train + "--max-steps 4 --lr 1e-2 --save-every 2";
  ASSERT_EQ(run(four_steps).exit_status, 0);
  EXPECT_TRUE(fs::exists(adapter / "checkpoint-2" / "trainer_state.safetensors"));
  const std::string finished = read_file(adapter / "adapter_model.safetensors");
  fs::remove_all(adapter / "checkpoint-4");
  fs::remove(adapter / "adapter_model.safetensors");
  fs::create_directories(adapter / "checkpoint-4.tmp-99");
  const CommandResult resumed = run(four_steps + " --resume");
  ASSERT_EQ(resumed.exit_status, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming from"), std::string::npos) << resumed.err;
  EXPECT_EQ(read_file(adapter / "adapter_model.safetensors"), finished);
  const std::string empty = (directory_ / "empty").string();
  expect_failure(run("finetune -m " + model.string() + " --data " + data.string() + " -o " + empty +
                     " --max-steps 4 --resume"),
                 {"--resume", empty});
}

// kbit finetune --full trains every weight and writes a model folder that loads; its checkpoints
// resume to the same weights; LoRA and quantization options are refused with it.
TEST_F(CliTest, FullFinetuneWritesAModelThatLoads) {
  const fs::path model = fs::path(KBIT_SOURCE_DIR) / "models/shakespeare-llama2";
  const fs::path data = directory_ / "data.jsonl";
  std::ofstream(data) << R"({"text": "ROMEO: But soft, what light through yonder window breaks?"})"
                      << "\n";
  const fs::path output = directory_ / "full";
  const std::string train = "finetune -m " + model.string() + " --data " + data.string() + " -o " +
                            output.string() + " --full --max-length 16 --lr 1e-3 ";
  const std::string two_steps = train + "--max-steps 2 --save-every 1";
  const CommandResult trained = run(two_steps);
  ASSERT_EQ(trained.exit_status, 0) << trained.err;
  EXPECT_NE(trained.out.find("saved the model"), std::string::npos) << trained.out;
  for (const char* file : {"model.safetensors", "config.json", "tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(output / file)) << file;
  }
  EXPECT_TRUE(fs::exists(output / "checkpoint-1" / "trainer_state.safetensors"));
  const std::string finished = read_file(output / "model.safetensors");
  EXPECT_NE(finished, read_file(model / "model.safetensors"));
  const CommandResult generated = run("generate -m " + output.string() + " -p ROMEO: -n 4");
  EXPECT_EQ(generated.exit_status, 0) << generated.err;

  fs::remove_all(output / "checkpoint-2");
  fs::remove(output / "model.safetensors");
  const CommandResult resumed = run(two_steps + " --resume");
  ASSERT_EQ(resumed.exit_status, 0) << resumed.err;
  EXPECT_EQ(read_file(output / "model.safetensors"), finished);

  // A usage error: CLI11's message and exit status.
  const CommandResult lora = run(train + "--max-steps 1 --lora-r 8");
  EXPECT_NE(lora.exit_status, 0);
  EXPECT_NE(lora.err.find("--full excludes --lora-r"), std::string::npos) << lora.err;
  expect_failure(run(train + "--max-steps 1 --load-in-4bit"), {"quantized", "--full"});
}

}  // namespace
}  // namespace kbit::cli
