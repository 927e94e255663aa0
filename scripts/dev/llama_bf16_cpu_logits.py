#!/usr/bin/env python3
"""Makes src/model/testdata/llama-bf16-cpu-logits.safetensors: transformers' logits for the golden
prompts with the whole model in torch.bfloat16 on the CPU (sdpa attention), the tighter reference
for kbit's bf16 activations (llama_test.cc). Keys: `{model}.prompt{i}.input_ids` (I64) and
`{model}.prompt{i}.logits` (BF16 [tokens, vocab]; bf16 is what transformers returns, so exact).

Usage: scripts/dev/llama_bf16_cpu_logits.py [--shared /work/shared]
"""
import argparse
import pathlib

import torch
import transformers
from safetensors.torch import load_file, save_file

MODELS = ["shakespeare-llama2", "shakespeare-llama3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="/work/shared", type=pathlib.Path)
    parser.add_argument(
        "--out",
        default=pathlib.Path(__file__).resolve().parents[2]
        / "src/model/testdata/llama-bf16-cpu-logits.safetensors",
        type=pathlib.Path,
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    tensors = {}
    for name in MODELS:
        golden = load_file(args.shared / "golden" / f"model-{name}.safetensors")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.shared / "models" / name, dtype=torch.bfloat16
        ).eval()
        for prompt in range(2):
            ids = golden[f"bf16.prompt{prompt}.input_ids"]
            with torch.no_grad():
                logits = model(ids.reshape(1, -1)).logits[0]
            assert logits.dtype == torch.bfloat16
            tensors[f"{name}.prompt{prompt}.input_ids"] = ids.contiguous()
            tensors[f"{name}.prompt{prompt}.logits"] = logits.contiguous()
    metadata = {"transformers": transformers.__version__, "torch": torch.__version__}
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
