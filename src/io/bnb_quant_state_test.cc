#include "kbit/io/bnb_quant_state.h"

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kbit/io/safetensors.h"
#include "testing/shared_data.h"

namespace kbit::io {
namespace {

// Expected strings are Python 3's repr() of the same doubles.
TEST(PythonFloatReprTest, MatchesPython) {
  const std::vector<std::pair<double, std::string>> cases = {
      {0.07243895530700684, "0.07243895530700684"},
      {1.0, "1.0"},
      {-2.5, "-2.5"},
      {0.0001, "0.0001"},
      {1e-05, "1e-05"},
      {1e+16, "1e+16"},
      {1234567890123456.0, "1234567890123456.0"},
      {1e-05, "1e-05"},
      {123.456, "123.456"},
      {0.1, "0.1"},
      {0.3333333333333333, "0.3333333333333333"},
      {9.5367431640625e-07, "9.5367431640625e-07"},
      {1e+300, "1e+300"},
      {-0.0, "-0.0"},
      {0.0, "0.0"},
      {5e-324, "5e-324"},
      {1000000000000000.0, "1000000000000000.0"},
      {9999999999999998.0, "9999999999999998.0"},
      {0.00012345, "0.00012345"},
      {100.0, "100.0"},
      {1.5e-07, "1.5e-07"},
      {2.5613839626312256, "2.5613839626312256"}};
  for (const auto& [value, expected] : cases) EXPECT_EQ(python_float_repr(value), expected);
}

TEST(QuantStateTest, ParsesAndWritesBothForms) {
  const std::string plain =
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [70, 300]})";
  const std::string nested =
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [70, 300], )"
      R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 2.5613839626312256})";
  Result<QuantState> state = parse_quant_state(plain);
  ASSERT_TRUE(state.ok()) << state.status().to_string();
  EXPECT_EQ(state->shape, (Shape{70, 300}));
  EXPECT_FALSE(state->nested.has_value());
  EXPECT_EQ(*serialize_quant_state(*state), plain);  // 79 bytes, spec 4.2
  Result<QuantState> with_nested = parse_quant_state(nested);
  ASSERT_TRUE(with_nested.ok()) << with_nested.status().to_string();
  EXPECT_EQ(with_nested->nested->blocksize, 256);
  EXPECT_EQ(*serialize_quant_state(*with_nested), nested);  // 168 bytes
  // Any key order and whitespace are accepted.
  Result<QuantState> reordered = parse_quant_state(
      R"({ "shape":[2,64],"dtype":"float16","blocksize":128,"quant_type":"fp4" })");
  ASSERT_TRUE(reordered.ok());
  EXPECT_EQ(*serialize_quant_state(*reordered),
            R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [2, 64]})");
  EXPECT_EQ(quant_state_key_suffix(quant::FourBitType::kFp4), "bitsandbytes__fp4");
}

TEST(QuantStateTest, RejectsBadBlobsNamingTheField) {
  const auto error = [](const std::string& json) {
    return parse_quant_state(json).status().message();
  };
  const std::string base =
      R"("quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64])";
  EXPECT_NE(error("{" + base + R"(, "extra": 1})").find("'extra' is not a QuantState field"),
            std::string::npos);
  EXPECT_NE(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16"})")
                .find("'shape' is missing"),
            std::string::npos);
  EXPECT_NE(error("{" + base + R"(, "nested_blocksize": 256})").find("not all three"),
            std::string::npos);
  EXPECT_NE(error(R"({"quant_type": "int4", "blocksize": 64, "dtype": "bfloat16", "shape": [1]})")
                .find("'quant_type'"),
            std::string::npos);
  EXPECT_NE(error(R"({"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [1]})")
                .find("'blocksize'"),
            std::string::npos);
  EXPECT_NE(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [1]})")
                .find("'dtype'"),
            std::string::npos);
  EXPECT_NE(error("[1, 2]").find("not a JSON object"), std::string::npos);
  QuantState state;
  state.nested = NestedQuantState{256, std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(serialize_quant_state(state).ok());
}

// Every QuantState blob that transformers + bitsandbytes saved in the golden checkpoints parses,
// and writing it back gives the same bytes.
TEST(QuantStateTest, GoldenCheckpointBlobsRoundTripByteForByte) {
  KBIT_REQUIRE_SHARED_DIR();
  int checked = 0;
  for (const std::string mode : {"nf4", "nf4_dq", "fp4"}) {
    Result<SafetensorsFile> file = SafetensorsFile::open(testing::shared_file(
        "golden/checkpoints/shakespeare-llama2-bnb-" + mode + "/model.safetensors"));
    ASSERT_TRUE(file.ok()) << file.status().to_string();
    for (const std::string& name : file->names()) {
      if (name.find(".quant_state.bitsandbytes__") == std::string::npos) continue;
      const TensorView blob = *file->tensor(name);
      const std::string json(blob.data_as<const char>(), blob.nbytes());
      Result<QuantState> state = parse_quant_state(json);
      ASSERT_TRUE(state.ok()) << name << ": " << state.status().to_string();
      EXPECT_EQ(state->nested.has_value(), mode == "nf4_dq") << name;
      EXPECT_TRUE(name.ends_with(quant_state_key_suffix(state->type))) << name;
      EXPECT_EQ(*serialize_quant_state(*state), json) << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * 28);
}

}  // namespace
}  // namespace kbit::io
