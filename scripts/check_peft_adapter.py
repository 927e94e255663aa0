#!/usr/bin/env python3
"""Does an adapter kbit wrote load in PEFT, and compute there what it computes in kbit?

Run by scripts/check-peft-adapter.sh (which makes the virtual environment). Checks, on the CPU:
  1. PeftModel.from_pretrained loads ADAPTER_DIR onto BASE_MODEL_DIR (in float32, eager attention)
     with no missing and no unexpected LoRA keys, and every lora_A / lora_B it holds equals the
     file's tensor bit for bit;
  2. the logits of a prompt through the PEFT model equal kbit's (`kbit logits --adapter`, f32 on
     the CPU) within --tolerance of the largest logit (both compute in float32; they differ only
     in the order of sums).
Prints one line per check; exit status 1 if any fails.

Usage: check_peft_adapter.py BASE_MODEL_DIR ADAPTER_DIR KBIT WORK_DIR [--prompt TEXT] [--tolerance X]
"""
import argparse
import subprocess
import sys

import peft
import safetensors.torch
import torch
import transformers


def load_peft(base_dir, adapter_dir):
    base = transformers.AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model


def check_weights(model, adapter_dir):
    """Every saved tensor sits in the PEFT model unchanged, and every LoRA weight came from the file."""
    saved = safetensors.torch.load_file(f"{adapter_dir}/adapter_model.safetensors")
    loaded = {}
    for name, tensor in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            loaded[name.replace(".default", "")] = tensor.detach()
    missing = sorted(set(loaded) - set(saved))
    unexpected = sorted(set(saved) - set(loaded))
    mismatched = [k for k in saved if k in loaded and not torch.equal(saved[k], loaded[k])]
    ok = not missing and not unexpected and not mismatched
    print(f"{'ok  ' if ok else 'FAIL'} weights: {len(saved)} tensors; missing {missing[:3]}, "
          f"unexpected {unexpected[:3]}, different {mismatched[:3]}")
    return ok


def check_logits(model, args):
    out = f"{args.work_dir}/kbit-logits.safetensors"
    subprocess.run([args.kbit, "logits", "-m", args.base_model_dir, "--adapter", args.adapter_dir,
                    "--device", "cpu", "--dtype", "f32", "-p", args.prompt, "-o", out], check=True)
    kbit = safetensors.torch.load_file(out)
    with torch.no_grad():
        logits = model(kbit["input_ids"][None]).logits[0].float()
    scale = logits.abs().max().item()
    error = (logits - kbit["logits"]).abs().max().item() / scale
    ok = error <= args.tolerance
    print(f"{'ok  ' if ok else 'FAIL'} logits: {kbit['input_ids'].numel()} tokens, largest difference "
          f"{error:.2e} of the largest logit (tolerance {args.tolerance:.0e})")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_model_dir")
    parser.add_argument("adapter_dir")
    parser.add_argument("kbit")
    parser.add_argument("work_dir")
    parser.add_argument("--prompt", default="ROMEO:\nBut soft, what light through yonder window")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"check-peft-adapter: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}")
    model = load_peft(args.base_model_dir, args.adapter_dir)
    ok = check_weights(model, args.adapter_dir)
    ok = check_logits(model, args) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
