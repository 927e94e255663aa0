#!/usr/bin/env python3
"""kbit's CPU speed and memory in every mode: f32 and bf16 activations, and the quantized modes
of transformers' BitsAndBytesConfig (nf4, nf4_dq, fp4 and int8, each with f32 compute and with
bf16 compute and activations as transformers' golden runs use), for Hugging Face model folders.

Each run is `kbit generate --json` (greedy, EOS ignored) on a prompt of PROMPT tokens from the
last tenth of tinyshakespeare.txt, generating NEW tokens; medians over the repeats. Memory: the
resident memory that loading added (VmHWM after loading minus VmRSS before) and the weights kbit
holds (LlamaModel::weight_bytes).

Usage: python3 scripts/bench/cpu_modes.py KBIT_BINARY MODEL_DIR [MODEL_DIR ...]
       [--prompt 256] [--new 128] [--threads N] [--text FILE] [--repeats 3]
Prints a Markdown table and the raw medians as JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

MODES = {
    "f32": [],
    "bf16": ["--dtype", "bf16"],
    "nf4": ["--load-in-4bit", "--quant-type", "nf4"],
    "nf4_dq": ["--load-in-4bit", "--quant-type", "nf4", "--double-quant"],
    "fp4": ["--load-in-4bit", "--quant-type", "fp4"],
    "int8": ["--load-in-8bit"],
    "nf4 bf16": ["--load-in-4bit", "--quant-type", "nf4", "--dtype", "bf16"],
    "nf4_dq bf16": ["--load-in-4bit", "--quant-type", "nf4", "--double-quant", "--dtype", "bf16"],
    "int8 bf16": ["--load-in-8bit", "--dtype", "bf16"],
}


def measure(binary, model, prompt_text, new, threads, flags):
    command = [binary, "generate", "-m", model, "-p", prompt_text, "-n", str(new), "--temperature",
               "0", "--ignore-eos", "--json", "--threads", str(threads)] + flags
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed: {result.stderr}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {"prompt_tps": out["prompt_tokens_per_second"],
            "decode_tps": out["decode_tokens_per_second"],
            "load_seconds": out["load_seconds"],
            "load_rss_mb": (out["peak_rss_after_load_bytes"] - out["rss_before_load_bytes"]) / 2**20,
            "weight_mb": out["weight_bytes"] / 2**20,
            "prompt_tokens": len(out["prompt_ids"])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("kbit")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--text", default=os.path.join(os.path.dirname(__file__),
                                                        "../../../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    text = open(args.text).read()
    # Characters, not tokens: about 3 characters per token in these vocabularies; kbit reports
    # the prompt's token count.
    prompt_text = text[int(0.9 * len(text)):][:args.prompt * 3]
    results = {}
    for model in args.models:
        name = os.path.basename(os.path.normpath(model))
        for mode in args.modes.split(","):
            runs = [measure(args.kbit, model, prompt_text, args.new, args.threads, MODES[mode])
                    for _ in range(args.repeats)]
            results[f"{name} {mode}"] = {key: statistics.median(r[key] for r in runs)
                                         for key in runs[0]}
    print(json.dumps(results, indent=2))
    print("\n| model | mode | prompt tok/s | decode tok/s | load s | weights MB | load RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for key, r in results.items():
        name, mode = key.split(" ", 1)
        print(f"| {name} | {mode} | {r['prompt_tps']:.0f} | {r['decode_tps']:.1f} | "
              f"{r['load_seconds']:.3f} | {r['weight_mb']:.1f} | {r['load_rss_mb']:.1f} |")


if __name__ == "__main__":
    main()
