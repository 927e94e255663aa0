#!/usr/bin/env python3
"""A Llama checkpoint of real shape with random weights, for memory and speed benchmarks.

Weights are normal with std 0.02 (norms 1.0), stored in bf16 and sharded as transformers saves
them (5 GB shards); the tokenizer and chat template are copied from a shared model whose
vocabulary the config keeps, so `kbit generate` runs on it. The default shape is TinyLlama's
(hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads) with shakespeare-llama3's
4096-token vocabulary: 0.97 B parameters, 1.9 GB.

Usage: python3 scripts/bench/make_random_llama.py OUT_DIR [--shared ../shared] [--layers 22]
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "../../../shared"))
parser.add_argument("--layers", type=int, default=22)
parser.add_argument("--hidden", type=int, default=2048)
parser.add_argument("--intermediate", type=int, default=5632)
parser.add_argument("--heads", type=int, default=32)
parser.add_argument("--kv-heads", type=int, default=4)
args = parser.parse_args()

source = os.path.join(args.shared, "models/shakespeare-llama3")
config = json.load(open(os.path.join(source, "config.json")))
config.update({"hidden_size": args.hidden, "intermediate_size": args.intermediate,
               "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
               "num_key_value_heads": args.kv_heads, "head_dim": args.hidden // args.heads,
               "max_position_embeddings": 2048})
vocab, e, i = config["vocab_size"], args.hidden, args.intermediate
d = e // args.heads
generator = torch.Generator().manual_seed(0)


def normal(*shape):
    return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)


tensors = {"model.embed_tokens.weight": normal(vocab, e), "lm_head.weight": normal(vocab, e),
           "model.norm.weight": torch.ones(e, dtype=torch.bfloat16)}
for layer in range(args.layers):
    p = f"model.layers.{layer}."
    tensors.update({
        p + "input_layernorm.weight": torch.ones(e, dtype=torch.bfloat16),
        p + "post_attention_layernorm.weight": torch.ones(e, dtype=torch.bfloat16),
        p + "self_attn.q_proj.weight": normal(args.heads * d, e),
        p + "self_attn.k_proj.weight": normal(args.kv_heads * d, e),
        p + "self_attn.v_proj.weight": normal(args.kv_heads * d, e),
        p + "self_attn.o_proj.weight": normal(e, args.heads * d),
        p + "mlp.gate_proj.weight": normal(i, e),
        p + "mlp.up_proj.weight": normal(i, e),
        p + "mlp.down_proj.weight": normal(e, i),
    })

os.makedirs(args.out, exist_ok=True)
shards, current, size = [], {}, 0
for name, tensor in tensors.items():
    nbytes = tensor.numel() * tensor.element_size()
    if current and size + nbytes > 5 * 10**9:
        shards.append(current)
        current, size = {}, 0
    current[name] = tensor
    size += nbytes
shards.append(current)
weight_map = {}
for index, shard in enumerate(shards):
    file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(args.out, file), metadata={"format": "pt"})
    weight_map.update({name: file for name in shard})
total = sum(t.numel() * t.element_size() for t in tensors.values())
with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(os.path.join(source, name), args.out)
params = sum(t.numel() for t in tensors.values())
print(f"wrote {args.out}: {params / 1e9:.3f} B parameters, {total / 1e9:.2f} GB")
