#!/usr/bin/env python3
"""Check that a quantized checkpoint (as `kbit quantize` writes it) loads and runs in transformers +
bitsandbytes (CPU backend).

Usage: python3 scripts/check_bnb_interop.py QUANTIZED_DIR FLOAT_MODEL_DIR GOLDEN_DIR
       [--golden-model NAME] [--tolerance-factor 2] [--max-tol X] [--mean-tol X] [--new-tokens 20]
Needs torch, transformers, accelerate, bitsandbytes, safetensors: run it through
scripts/check-bnb-interop.sh, which makes a throwaway virtual environment.

QUANTIZED_DIR is a Hugging Face model folder whose config.json has a bitsandbytes
`quantization_config` and whose safetensors hold bitsandbytes' state dict (like
GOLDEN_DIR/checkpoints/shakespeare-llama2-bnb-*); FLOAT_MODEL_DIR the model it was quantized from.
The mode (nf4, nf4_dq, fp4, fp4_dq, int8) comes from the folder's quantization_config. Checks:
  1. it loads with AutoModelForCausalLM.from_pretrained (CPU) with no missing, unexpected or
     mismatched keys and no warning about weights; every Linear but lm_head is bitsandbytes'
     (Linear4bit / Linear8bitLt) with the detected quant type; AutoTokenizer loads from it;
  2. its tensors, against FLOAT_MODEL_DIR quantized on load by transformers + bitsandbytes (CPU) in
     the same mode: the same keys, dtypes and shapes, the same quant_state JSON; the number of
     differing bytes is reported (bitsandbytes' CPU quantizer differs from its CUDA kernels, which
     kbit follows, for FP4 codes and for the 8-bit codes of double quantization:
     GOLDEN_DIR/README.md), and more than --max-code-mismatch (default 5%) of any tensor fails;
  3. logits on the two prompts of GOLDEN_DIR/summary.json (tokenized with BOS; the ids must equal
     the golden `{mode}.prompt{i}.input_ids`), against (a) that bitsandbytes-quantized model:
     with identical bytes the logits must agree to 1e-6, otherwise within the tolerance of (b);
     (b) the golden CUDA logits of the mode (GOLDEN_DIR/model-NAME.safetensors, NAME the float
     folder's name or --golden-model): mean and max |delta| within tolerance. The tolerance is
     --tolerance-factor times the largest distance bitsandbytes' CPU backend itself showed from
     the golden logits in src/generate/testdata/perplexity_reference_bnb.json (made by
     scripts/dev/make_bnb_perplexity_reference.py), or --max-tol / --mean-tol;
  4. a greedy generation of --new-tokens tokens per prompt, printed, with how many tokens agree
     with the golden greedy continuation (for information: 4-bit noise may flip a token);
  5. the memory footprint against golden summary.json where it lists this model and mode.
Prints a report; the exit status is 1 when a check fails, 2 on a usage error. (bitsandbytes' log
line "Failed to load CPU gemm_4bit_forward from kernels-community" is harmless: without the optional
package `kernels` it uses its own CPU kernel.)
"""
import argparse
import json
import logging
import os
import re
import sys
import warnings

import torch
import transformers
from safetensors import safe_open

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
REFERENCE_JSON = os.path.join(root, "src/generate/testdata/perplexity_reference_bnb.json")
# Used when the reference JSON is absent: twice the largest distance of bitsandbytes-CPU from the
# golden CUDA logits measured there (both shakespeare models, both CPU 4-bit paths; fp4_dq has no
# golden data and takes fp4's).
FALLBACK_TOLERANCE = {"nf4": (0.02, 0.16), "nf4_dq": (0.022, 0.25), "fp4": (0.036, 0.29),
                      "fp4_dq": (0.036, 0.29), "int8": (0.042, 0.32)}  # mode: (mean, max)

failures = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)
    return ok


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def detect_mode(qc):
    four = qc.get("load_in_4bit", qc.get("_load_in_4bit", False))
    eight = qc.get("load_in_8bit", qc.get("_load_in_8bit", False))
    if qc.get("quant_method", "bitsandbytes") != "bitsandbytes" or four == eight:
        return None
    if eight:
        return "int8"
    return qc.get("bnb_4bit_quant_type", "fp4") + ("_dq" if qc.get("bnb_4bit_use_double_quant") else "")


def load(path, **kwargs):
    """from_pretrained with the loading info and every transformers warning captured."""
    capture = Capture()
    logger = logging.getLogger("transformers")
    saved = logger.handlers[:]
    logger.handlers = [capture]  # shown once, by show()
    model, info, error = None, {}, None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True,
                                                                                **kwargs)
            except Exception as e:  # noqa: a failure to load is the finding
                error = e
    finally:
        logger.handlers = saved
    messages = capture.messages + [f"{w.category.__name__}: {w.message}" for w in caught]
    return (model.eval() if model is not None else None), info, messages, error


def show(messages):
    for m in messages:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", m).splitlines()
        for line in lines[:25]:
            print(f"  warn  {line[:200]}")
        if len(lines) > 25:
            print(f"  warn  ... {len(lines) - 25} more lines")


def quantized_linears(model):
    import bitsandbytes as bnb
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            out[name] = module
    return out


def file_tensors(folder):
    tensors = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
    return tensors


def same_json(a, b):
    if isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return numbers and abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-30)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def compare_tensors(mine, ref, max_mismatch):
    """The checkpoint's tensors against bitsandbytes' own state dict for the same model and mode."""
    check(set(mine) == set(ref), f"same tensor names as bitsandbytes' state dict ({len(mine)} tensors)"
          + ("" if set(mine) == set(ref) else f": only in checkpoint {sorted(set(mine) - set(ref))[:8]}, "
             f"missing {sorted(set(ref) - set(mine))[:8]}"))
    differing, total_bytes, layout_bad, json_bad, too_many = {}, {}, [], [], []
    for k in sorted(set(mine) & set(ref)):
        a, b = mine[k], ref[k]
        if ".quant_state." in k:  # JSON; nested_offset (a mean) differs in the last bits between CPU and CUDA
            ja, jb = json.loads(bytes(a.tolist())), json.loads(bytes(b.tolist()))
            if not same_json(ja, jb):
                json_bad.append(f"{k}: {ja} vs {jb}")
            continue
        if a.dtype != b.dtype or a.shape != b.shape:
            layout_bad.append(f"{k}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
            continue
        kind = k.rsplit(".", 1)[-1] if not k.endswith(".weight") else "weight"
        if kind == "weight" and a.dtype not in (torch.uint8, torch.int8):
            kind = "float weight"
        n = int((a.view(torch.uint8) != b.view(torch.uint8)).sum()) if a.numel() else 0
        differing[kind] = differing.get(kind, 0) + n
        total_bytes[kind] = total_bytes.get(kind, 0) + a.numel() * a.element_size()
        if a.dtype in (torch.uint8, torch.int8) and a.numel() and n / (a.numel() * a.element_size()) > max_mismatch:
            too_many.append(f"{k} ({n}/{a.numel() * a.element_size()})")
    check(not layout_bad, "same dtypes and shapes" + ("" if not layout_bad else ": " + "; ".join(layout_bad[:5])))
    check(not json_bad, "same quant_state JSON (floats to 1e-5)"
          + ("" if not json_bad else ": " + "; ".join(json_bad[:3])))
    check(not too_many, f"no quantized tensor differs from bitsandbytes' in more than {max_mismatch:.0%} of its bytes"
          + ("" if not too_many else f": {len(too_many)} do (layout?): " + ", ".join(too_many[:4])))
    summary = ", ".join(f"{kind} {differing[kind]}/{total_bytes[kind]}" for kind in sorted(total_bytes))
    print(f"  info  bytes differing from bitsandbytes-CPU quantization: {summary}")
    return sum(differing.values()) == 0


def delta(logits, refs):
    d = [(a.double() - b.double()).abs() for a, b in zip(logits, refs)]
    mean = sum(x.sum().item() for x in d) / sum(x.numel() for x in d)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(logits, refs))
    return mean, max(x.max().item() for x in d), agree, sum(a.shape[0] for a in logits)


def tolerance(mode, args):
    mean_tol, max_tol = FALLBACK_TOLERANCE.get(mode, (None, None))
    source = "built-in defaults"
    if os.path.exists(args.reference):
        ref = json.load(open(args.reference))
        measured = []
        for model in ref["models"].values():
            entry = model.get(mode)
            if entry:
                for e in (entry, entry.get("dequant_path")):
                    if e:
                        g = e["logits_vs_golden"][mode]
                        measured.append((g["mean_abs"], g["max_abs"]))
        if measured:
            mean_tol = args.tolerance_factor * max(m for m, _ in measured)
            max_tol = args.tolerance_factor * max(x for _, x in measured)
            source = f"{args.tolerance_factor:g} x bnb-CPU vs golden in {os.path.relpath(args.reference, root)}"
    if args.mean_tol is not None:
        mean_tol, source = args.mean_tol, "--mean-tol"
    if args.max_tol is not None:
        max_tol, source = args.max_tol, ("--max-tol" if args.mean_tol is None else "--mean-tol/--max-tol")
    return mean_tol, max_tol, source


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("quantized")
    parser.add_argument("float_model")
    parser.add_argument("golden")
    parser.add_argument("--golden-model",
                        help="name of golden/model-NAME.safetensors (default: the float folder's name)")
    parser.add_argument("--reference", default=REFERENCE_JSON)
    parser.add_argument("--tolerance-factor", type=float, default=2.0)
    parser.add_argument("--mean-tol", type=float)
    parser.add_argument("--max-tol", type=float)
    parser.add_argument("--max-code-mismatch", type=float, default=0.05)
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    # Linear8bitLt logs on every call that it casts bf16 activations to fp16.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(
        lambda r: not r.getMessage().startswith("MatMul8bitLt: inputs will be cast"))
    import bitsandbytes

    print(f"check_bnb_interop: {args.quantized}")
    print(f"  torch {torch.__version__}, transformers {transformers.__version__}, "
          f"bitsandbytes {bitsandbytes.__version__}")
    config_path = os.path.join(args.quantized, "config.json")
    if not os.path.exists(config_path):
        print(f"  FAIL  {config_path} does not exist")
        return 2
    qc = json.load(open(config_path)).get("quantization_config")
    if not qc:
        print(f"  FAIL  {config_path} has no quantization_config")
        return 1
    mode = detect_mode(qc)
    if mode is None:
        print(f"  FAIL  quantization_config is not bitsandbytes 4-bit or 8-bit: {qc}")
        return 1
    print(f"  mode  {mode} (compute dtype {qc.get('bnb_4bit_compute_dtype')}, "
          f"threshold {qc.get('llm_int8_threshold')})")

    print("loading")
    model, info, messages, error = load(args.quantized)
    if error is not None:
        show(messages)
        check(False, f"from_pretrained raised {type(error).__name__}: {error}")
        print("result: FAIL: does not load")
        return 1
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        v = info.get(k)
        check(not v, f"{k}: {sorted(v)[:10] if v else 'none'}")
    weight_words = ("missing", "unexpected", "not initialized", "newly initialized", "were not used", "mismatch")
    bad = [m for m in messages if any(w in m.lower() for w in weight_words)]
    show(messages)
    check(not bad, "no transformers warning about weights")
    linears = quantized_linears(model)
    expected = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    check(set(linears) == expected, f"{len(linears)} bitsandbytes linears, every Linear but lm_head"
          + ("" if set(linears) == expected else f": unquantized {sorted(expected - set(linears))[:5]}"))
    if mode != "int8":
        types = {m.weight.quant_state.quant_type for m in linears.values()}
        nested = {bool(m.weight.quant_state.nested) for m in linears.values()}
        check(types == {mode[:3]} and nested == {mode.endswith("_dq")},
              f"quant_state: quant types {sorted(types)}, nested {sorted(nested)}")
    print(f"  info  dtype {model.dtype}, footprint {model.get_memory_footprint()} bytes")
    footprint = model.get_memory_footprint()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.quantized)
        check(True, "AutoTokenizer loads from the folder")
    except Exception as e:  # noqa
        check(False, f"AutoTokenizer does not load from the folder ({type(e).__name__}: {e}); using the float model's")
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.float_model)

    name = args.golden_model or os.path.basename(os.path.normpath(args.float_model))
    summary = json.load(open(os.path.join(args.golden, "summary.json")))
    golden_footprint = summary.get("models", {}).get(name, {}).get(mode, {}).get("footprint_bytes")
    if golden_footprint is not None:
        check(footprint == golden_footprint, f"footprint {footprint} == golden summary's {golden_footprint}")

    print("against the float model quantized on load by transformers + bitsandbytes (CPU)")
    config = transformers.BitsAndBytesConfig.from_dict(dict(qc))
    ref, _, ref_messages, error = load(args.float_model, dtype=model.dtype, quantization_config=config)
    if error is not None:
        show(ref_messages)
        check(False, f"quantizing {args.float_model} on load raised {type(error).__name__}: {error}")
        print("result: FAIL")
        return 1
    mine = file_tensors(args.quantized)
    ref_sd = ref.state_dict()
    # save_pretrained leaves out tied weights (lm_head.weight when tie_word_embeddings).
    for k in [k for k in ref_sd if k not in mine]:
        if any(k2 in mine and ref_sd[k2].data_ptr() == ref_sd[k].data_ptr() for k2 in ref_sd if k2 != k):
            print(f"  info  {k} is tied to another tensor: not expected in the file")
            del ref_sd[k]
    same_bytes = compare_tensors(mine, ref_sd, args.max_code_mismatch)
    # The round trip: what transformers holds after loading is what the file holds.
    roundtrip = model.state_dict()
    differ = [k for k in mine if k in roundtrip
              and not torch.equal(mine[k].view(torch.uint8).flatten(),
                                  roundtrip[k].contiguous().view(torch.uint8).flatten())]
    check(not differ, "the loaded model's state_dict equals the file" + (f": differ {differ[:5]}" if differ else ""))

    golden_path = os.path.join(args.golden, f"model-{name}.safetensors")
    golden = {}
    if os.path.exists(golden_path):
        with safe_open(golden_path, "pt") as st:
            golden = {k: st.get_tensor(k) for k in st.keys()}
    have_golden = f"{mode}.prompt0.logits" in golden
    logits, ref_logits, ids_list = [], [], []
    for i, prompt in enumerate(summary["prompts"]):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if have_golden:
            gid = golden[f"{mode}.prompt{i}.input_ids"]
            check(ids[0].tolist() == gid.tolist(), f"prompt {i}: {ids.shape[1]} ids (with BOS) equal golden input_ids")
        ids_list.append(ids)
        logits.append(model(ids).logits[0].float())
        ref_logits.append(ref(ids).logits[0].float())
    mean, mx, agree, positions = delta(logits, ref_logits)
    mean_tol, max_tol, source = tolerance(mode, args)
    if same_bytes:
        check(mx <= 1e-6, f"(a) logits vs bnb-quantized float model: identical bytes, max |d| {mx:.3g} <= 1e-6")
    else:
        check(mx <= max_tol and mean <= mean_tol,
              f"(a) logits vs bnb-quantized float model (bytes differ): mean |d| {mean:.4g} <= {mean_tol:.4g}, "
              f"max |d| {mx:.4g} <= {max_tol:.4g}, argmax {agree}/{positions}")

    print(f"against the golden CUDA logits ({os.path.relpath(golden_path, args.golden)}, {mode})")
    if not have_golden:
        print(f"  skip  no golden logits for {name} in mode {mode}")
    else:
        mean, mx, agree, positions = delta(logits, [golden[f"{mode}.prompt{i}.logits"] for i in range(len(logits))])
        check(mean <= mean_tol and mx <= max_tol,
              f"(b) mean |d| {mean:.4g} <= {mean_tol:.4g}, max |d| {mx:.4g} <= {max_tol:.4g} ({source}); "
              f"argmax {agree}/{positions}")
        if "f32.prompt0.logits" in golden:
            fmean, fmx, fagree, _ = delta(logits, [golden[f"f32.prompt{i}.logits"] for i in range(len(logits))])
            gmean, gmx, _, _ = delta([golden[f"{mode}.prompt{i}.logits"] for i in range(len(logits))],
                                     [golden[f"f32.prompt{i}.logits"] for i in range(len(logits))])
            print(f"  info  vs golden f32: mean |d| {fmean:.4g}, max {fmx:.4g}, argmax {fagree}/{positions} "
                  f"(golden {mode} vs f32: mean {gmean:.4g}, max {gmx:.4g})")

    print(f"greedy, {args.new_tokens} new tokens")
    for i, ids in enumerate(ids_list):
        out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)[0]
        new = out[ids.shape[1]:]
        note = ""
        key = f"{mode}.prompt{i}.greedy"
        if key in golden:
            g = golden[key][ids.shape[1]:ids.shape[1] + len(new)].tolist()
            same = next((j for j, (a, b) in enumerate(zip(new.tolist(), g)) if a != b), min(len(g), len(new)))
            note = f" [first {same}/{len(new)} tokens equal golden greedy]"
        print(f"  prompt {i}: {json.dumps(tokenizer.decode(new, skip_special_tokens=True))}{note}")

    print("result: " + ("PASS" if not failures else f"FAIL ({len(failures)}): " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
