#!/usr/bin/env python3
"""Reference perplexities of transformers + bitsandbytes (CPU backend) in each quantization mode,
and the distance of bitsandbytes' CPU logits from the CUDA golden logits.

Protocol as scripts/dev/make_perplexity_reference.py: the last tenth of tinyshakespeare.txt (from
character offset int(0.9 * length)), tokenized with no special tokens, cut into consecutive windows
of CONTEXT tokens (the remainder dropped); each window scored alone with no BOS; the loss of tokens
1 ... CONTEXT-1 of every window averaged (in f64, from the model's logits).

Each model is loaded as the golden data were made (../shared/golden/README.md): dtype=bfloat16 and
  bf16     no quantization
  nf4_dq   BitsAndBytesConfig(load_in_4bit, quant_type nf4, double quant, compute dtype bf16)
  nf4      the same without double quant
  fp4      BitsAndBytesConfig(load_in_4bit, quant_type fp4, no double quant, compute dtype bf16)
  int8     BitsAndBytesConfig(load_in_8bit) (LLM.int8, threshold 6.0)
so the weights are quantized on load by bitsandbytes' CPU code, and run by its CPU kernels.

Also, per model and mode, the logits of the two golden prompts (input ids from
golden/model-{model}.safetensors, checked against the tokenizer with BOS) against the golden
`{mode}.prompt{i}.logits` and `f32.prompt{i}.logits` (CUDA): mean and max |delta| over all
elements, per prompt and overall, and how many positions have the same argmax. For reference the
golden mode's own distance from golden f32 is recorded too.

On a CPU with AVX512-BF16, bitsandbytes' Linear4bit repacks its weight on the first forward
(`_convert_weight_packed_for_cpu`: absmax dequantized and rounded to bf16) and runs a fused bf16
kernel; the 4-bit modes are therefore also measured with that switched off
(`Linear4bit.support_avx512bf16_for_cpu = False`: dequantize_4bit + torch linear in bf16, the same
arithmetic as bitsandbytes' CUDA matmul path), recorded under `dequant_path`. (bitsandbytes logs
"Failed to load CPU gemm_4bit_forward from kernels-community" when the optional package `kernels`
is absent; it then uses the fused kernel of its own libbitsandbytes_cpu.)

Writes src/generate/testdata/perplexity_reference_bnb.json.

Needs bitsandbytes, which must not be installed system-wide: run it in a throwaway venv, e.g.

    python3 -m venv /tmp/bnb-venv
    /tmp/bnb-venv/bin/pip install torch transformers bitsandbytes accelerate safetensors numpy
    /tmp/bnb-venv/bin/python scripts/dev/make_bnb_perplexity_reference.py [SHARED_DIR]
    rm -rf /tmp/bnb-venv

(SHARED_DIR defaults to ../shared. transformers' bitsandbytes quantizers require accelerate.
If download.pytorch.org is reachable, `pip install torch --index-url
https://download.pytorch.org/whl/cpu` first avoids PyPI's CUDA wheels.)
Options: --models, --modes to restrict the run; --no-dequant-path; --out FILE. About 20 minutes
on 2 idle cores.
"""
import argparse
import json
import logging
import math
import os
import platform
import sys
import time

import torch
import transformers
from safetensors.torch import load_file

CONTEXT = 256
MODELS = ("shakespeare-llama2", "shakespeare-llama3")
MODES = ("bf16", "nf4_dq", "nf4", "fp4", "int8")
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))


def quantization_config(mode):
    if mode == "bf16":
        return None
    if mode == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=mode[:3],
                                           bnb_4bit_use_double_quant=mode.endswith("_dq"),
                                           bnb_4bit_compute_dtype=torch.bfloat16)


def load(path, mode):
    config = quantization_config(mode)
    kwargs = {"quantization_config": config} if config is not None else {}
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, output_loading_info=True, **kwargs)
    bad = {k: sorted(v) for k, v in info.items() if v}
    if bad:
        sys.exit(f"{path} in {mode}: loading info not clean: {bad}")
    return model.eval()


def linear4bit_modules(model):
    import bitsandbytes as bnb
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def perplexity(model, ids):
    windows = len(ids) // CONTEXT
    total = 0.0
    for w in range(windows):
        window = torch.tensor([ids[w * CONTEXT:(w + 1) * CONTEXT]])
        logits = model(window).logits[0].double()
        nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, window[0, 1:, None]).sum()
        total += nll.item()
    tokens = windows * (CONTEXT - 1)
    mean_nll = total / tokens
    return {"tokens": tokens, "windows": windows, "mean_nll": mean_nll,
            "perplexity": math.exp(mean_nll), "text_tokens": len(ids)}


def delta(pairs):
    """pairs: [(ours, reference)] per prompt -> mean/max |delta| overall and per prompt."""
    per_prompt, total, count, agree, positions = [], 0.0, 0, 0, 0
    for ours, ref in pairs:
        d = (ours.double() - ref.double()).abs()
        same = int((ours.argmax(-1) == ref.argmax(-1)).sum())
        per_prompt.append({"mean_abs": d.mean().item(), "max_abs": d.max().item(),
                           "argmax_agree": same, "positions": ours.shape[0]})
        total += d.sum().item()
        count += d.numel()
        agree += same
        positions += ours.shape[0]
    return {"mean_abs": total / count, "max_abs": max(p["max_abs"] for p in per_prompt),
            "argmax_agree": agree, "positions": positions, "per_prompt": per_prompt}


def prompt_logits(model, golden, mode, tokenizer, prompts):
    out = []
    for i, prompt in enumerate(prompts):
        ids = golden[f"{mode}.prompt{i}.input_ids"]
        mine = tokenizer(prompt)["input_ids"]
        if mine != ids.tolist():
            sys.exit(f"prompt {i}: tokenizer ids {mine} differ from golden {ids.tolist()}")
        out.append(model(ids[None]).logits[0].float())
    return out


def compare(logits, golden, mode):
    return {ref: delta([(l, golden[f"{ref}.prompt{i}.logits"]) for i, l in enumerate(logits)])
            for ref in dict.fromkeys((mode, "f32"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shared", nargs="?", default=os.path.join(here, "../../../shared"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--no-dequant-path", action="store_true",
                        help="skip the 4-bit runs without the AVX512-BF16 kernel")
    parser.add_argument("--out", default=os.path.join(root, "src/generate/testdata/perplexity_reference_bnb.json"))
    args = parser.parse_args()

    import bitsandbytes
    from bitsandbytes.functional import has_avx512bf16
    try:  # the optional hub kernel (package `kernels`) that bitsandbytes prefers on AVX512-BF16
        from bitsandbytes.backends.cpu.ops import gemm_4bit_forward_kernel
    except ImportError:
        gemm_4bit_forward_kernel = None

    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    # Linear8bitLt logs on every call that it casts bf16 activations to fp16.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(
        lambda r: not r.getMessage().startswith("MatMul8bitLt: inputs will be cast"))
    text = open(os.path.join(args.shared, "data/tinyshakespeare.txt"), encoding="utf-8").read()
    tail = text[int(0.9 * len(text)):]
    prompts = json.load(open(os.path.join(args.shared, "golden/summary.json")))["prompts"]
    avx512bf16 = bool(has_avx512bf16())
    results = {
        "context": CONTEXT,
        "text": "tinyshakespeare.txt from character int(0.9 * length)",
        "protocol": f"windows of {CONTEXT} tokens (no special tokens, no BOS), mean NLL of tokens 1..{CONTEXT - 1} "
                    "of each window; model loaded with dtype=bfloat16 and BitsAndBytesConfig per mode, on the CPU",
        "modes": {m: (quantization_config(m).to_dict() if m != "bf16" else None) for m in args.modes},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__, "python": platform.python_version()},
        "cpu": {"torch_capability": torch.backends.cpu.get_cpu_capability(), "avx512bf16": avx512bf16,
                "threads": torch.get_num_threads(),
                "linear4bit_kernel": (("kernels-community gemm_4bit_forward" if gemm_4bit_forward_kernel is not None
                                       else "libbitsandbytes_cpu gemv_4bit_inference_cpu_{nf4,fp4}_bf16")
                                      + " (weights repacked on first forward, absmax rounded to bf16)"
                                      if avx512bf16 else "dequantize_4bit + torch linear")},
        "logits_vs_golden": "per model and mode: bitsandbytes CPU logits on the golden prompts against "
                            "golden {mode}.prompt{i}.logits and f32.prompt{i}.logits (CUDA); "
                            "golden_mode_vs_f32 is the golden mode's own distance from golden f32",
        "models": {},
    }
    for name in args.models:
        path = os.path.join(args.shared, "models", name)
        golden = load_file(os.path.join(args.shared, f"golden/model-{name}.safetensors"))
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        entry = results["models"].setdefault(name, {})
        for mode in args.modes:
            start = time.perf_counter()
            model = load(path, mode)
            logits = prompt_logits(model, golden, mode, tokenizer, prompts)
            r = perplexity(model, ids)
            r["logits_vs_golden"] = compare(logits, golden, mode)
            r["golden_mode_vs_f32"] = delta([(golden[f"{mode}.prompt{i}.logits"], golden[f"f32.prompt{i}.logits"])
                                             for i in range(len(prompts))])
            r["seconds"] = time.perf_counter() - start
            if avx512bf16 and mode not in ("bf16", "int8") and not args.no_dequant_path:
                model = load(path, mode)
                for m in linear4bit_modules(model):
                    m.support_avx512bf16_for_cpu = False
                logits = prompt_logits(model, golden, mode, tokenizer, prompts)
                d = perplexity(model, ids)
                r["dequant_path"] = {"mean_nll": d["mean_nll"], "perplexity": d["perplexity"],
                                     "logits_vs_golden": compare(logits, golden, mode)}
            entry[mode] = r
            g = r["logits_vs_golden"]
            print(f"{name} {mode}: ppl {r['perplexity']:.4f} (nll {r['mean_nll']:.6f}); vs golden {mode} "
                  f"mean {g[mode]['mean_abs']:.4g} max {g[mode]['max_abs']:.4g}; vs f32 mean "
                  f"{g['f32']['mean_abs']:.4g} max {g['f32']['max_abs']:.4g}"
                  + (f"; dequant path ppl {r['dequant_path']['perplexity']:.4f}, vs golden max "
                     f"{r['dequant_path']['logits_vs_golden'][mode]['max_abs']:.4g}" if "dequant_path" in r else "")
                  + f" [{r['seconds']:.0f}s]", flush=True)
            del model
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
