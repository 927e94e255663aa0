// RoPE inverse frequencies for every rope type of llama_config.h, computed in float32 in the
// order transformers uses (modeling_rope_utils.py), so the cos/sin tables agree with it.
#pragma once

#include <cstdint>
#include <vector>

#include "kbit/model/llama_config.h"

namespace kbit::model {

// inv_freq [head_dim / 2] for a forward whose largest position is seq_len − 1. Only the dynamic
// type depends on seq_len: past max_position_embeddings, theta grows to
// theta · (factor · seq_len / max_position_embeddings − (factor − 1))^(d / (d − 2)).
// Requires an even head_dim ≥ 4 (dynamic) or ≥ 2 (others), and a config parse_llama_config
// accepted.
std::vector<float> rope_inv_freq(const RopeParameters& rope, std::int64_t head_dim,
                                 std::int64_t max_position_embeddings, std::int64_t seq_len);

}  // namespace kbit::model
