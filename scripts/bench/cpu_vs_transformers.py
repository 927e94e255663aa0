#!/usr/bin/env python3
"""kbit against transformers on the CPU, in the same run: prompt and decode speed, load time and
peak memory for a Hugging Face model folder, both in f32 with the same number of threads.

kbit: `kbit generate --json` (greedy, EOS ignored) on a prompt of PROMPT tokens, generating NEW
tokens. transformers: the same prompt through one forward pass, then NEW single-token steps with
the KV cache, in a child process with torch's threads set to the same count. Peak memory is each
process's own VmHWM (/proc/self/status).

Usage: python3 scripts/bench/cpu_vs_transformers.py KBIT_BINARY MODEL_DIR [MODEL_DIR ...]
       [--prompt 256] [--new 128] [--threads N] [--text FILE] [--repeats 3]
Prints a Markdown table (medians over the repeats) and the raw numbers as JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

TRANSFORMERS_CHILD = r"""
import json, sys, time
import torch, transformers
path, prompt_len, new, threads, text_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
start = time.perf_counter()
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
load = time.perf_counter() - start
ids = tokenizer(open(text_file).read(), add_special_tokens=False)["input_ids"][:prompt_len]
ids = torch.tensor([ids])
model(ids[:, :8])  # warm-up
start = time.perf_counter()
out = model(ids, use_cache=True)
prompt_seconds = time.perf_counter() - start
past = out.past_key_values
token = out.logits[:, -1].argmax(-1, keepdim=True)
start = time.perf_counter()
for _ in range(new):
    out = model(token, past_key_values=past, use_cache=True)
    past = out.past_key_values
    token = out.logits[:, -1].argmax(-1, keepdim=True)
decode_seconds = time.perf_counter() - start
# VmHWM: the peak of this process's own memory (ru_maxrss would include the parent's, which
# holds torch as well).
hwm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
print(json.dumps({"prompt_tps": prompt_len / prompt_seconds, "decode_tps": new / decode_seconds,
                  "load_seconds": load, "peak_rss_mb": hwm_kb / 1024}))
"""


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed: {result.stderr}")
    return result.stdout


def measure_kbit(binary, model, prompt_text, new, threads):
    out = run([binary, "generate", "-m", model, "-p", prompt_text, "-n", str(new),
               "--temperature", "0", "--ignore-eos", "--json", "--threads", str(threads)])
    result = json.loads(out.strip().splitlines()[-1])
    return {"prompt_tps": result["prompt_tokens_per_second"],
            "decode_tps": result["decode_tokens_per_second"],
            "load_seconds": result["load_seconds"],
            "peak_rss_mb": result["peak_rss_bytes"] / 2**20,
            "prompt_tokens": len(result["prompt_ids"])}


def measure_transformers(model, text_file, prompt_tokens, new, threads):
    out = run([sys.executable, "-c", TRANSFORMERS_CHILD, model, str(prompt_tokens), str(new),
               str(threads), text_file])
    return json.loads(out.strip().splitlines()[-1])


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
    args = parser.parse_args()
    import transformers  # noqa: the prompt is cut with the model's own tokenizer
    text = open(args.text).read()
    tail = text[int(0.9 * len(text)):]
    results = {}
    for model in args.models:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"][:args.prompt - 1]
        prompt_text = tokenizer.decode(ids)  # kbit adds BOS: PROMPT tokens in all
        prompt_file = f"/tmp/kbit_bench_prompt_{os.getpid()}.txt"
        with open(prompt_file, "w") as f:
            f.write(prompt_text)
        runs = {"kbit": [], "transformers": []}
        for _ in range(args.repeats):
            runs["kbit"].append(measure_kbit(args.kbit, model, prompt_text, args.new, args.threads))
            prompt_tokens = runs["kbit"][-1]["prompt_tokens"]
            runs["transformers"].append(measure_transformers(model, prompt_file, prompt_tokens,
                                                             args.new, args.threads))
        medians = {side: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                   for side, rs in runs.items()}
        results[os.path.basename(os.path.normpath(model))] = medians
    print(json.dumps(results, indent=2))
    print("\n| model | | prompt tok/s | decode tok/s | load s | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, sides in results.items():
        k, t = sides["kbit"], sides["transformers"]
        for side, r in (("kbit", k), ("transformers", t)):
            print(f"| {name} | {side} | {r['prompt_tps']:.0f} | {r['decode_tps']:.1f} | "
                  f"{r['load_seconds']:.3f} | {r['peak_rss_mb']:.0f} |")
        print(f"| {name} | kbit / transformers | {k['prompt_tps'] / t['prompt_tps']:.2f}x | "
              f"{k['decode_tps'] / t['decode_tps']:.2f}x | {k['load_seconds'] / t['load_seconds']:.2f}x | "
              f"{k['peak_rss_mb'] / t['peak_rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
