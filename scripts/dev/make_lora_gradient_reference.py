#!/usr/bin/env python3
"""Reference LoRA gradients for kbit's backward pass, computed with transformers + PEFT on the CPU.

shakespeare-llama2 cut to its first 2 layers (f32 weights = the bf16 checkpoint widened exactly, eager
attention, eval mode), PEFT LoRA r=8, alpha=16, dropout 0 on q/k/v/o/gate/up/down, every adapter weight
overwritten with seeded random values (torch.manual_seed(1234); for each module in sorted name order:
lora_A = randn(8, in) * 0.05, then lora_B = randn(out, 8) * 0.05). One batch of 2 x 32 tokens of
tinyshakespeare.txt, with the first 6 labels of sequence 1 masked to -100; the loss is transformers'
causal-LM loss (mean over the batch's labelled targets), and loss.backward() gives the adapter gradients.

Two bases with the same adapter and batch: `f32` (the weights as loaded) and `nf4` (each of the 14 Linear
weights replaced by bitsandbytes' NF4 quantize_4bit -> dequantize_4bit, block size 64, no double
quantization: what Linear4bit with compute dtype float32 multiplies by, forward and backward). Each base
runs once in float32 (model(input_ids, labels=labels).loss) and once in float64 (model.double(), with the
places where transformers' Llama forces float32 -- RMSNorm, RoPE cos/sin, the eager softmax and the loss's
logits.float() -- replaced by the same formulas in float64). Each float64 result is stored as two float32
tensors, <key>.hi = float32(x) and <key>.lo = float32(x - hi), so the file holds no F64 tensor (which kbit's
safetensors reader refuses). src/train/testdata/README.md lists every key.

Writes src/train/testdata/lora_gradients_shakespeare_llama2.safetensors.

The model cut, the batch, the loss, the float64 overrides, the hi/lo storage and the reproducible writer
live in llama_reference_common.py, which make_full_gradient_reference.py shares: the same model and batch
with no LoRA and every weight trainable (full fine-tuning), written to
src/train/testdata/full_gradients_shakespeare_llama2.safetensors.

Usage: python3 scripts/dev/make_lora_gradient_reference.py [SHARED_DIR]   (default ../shared)
Needs torch, transformers, peft, safetensors and bitsandbytes (its CPU backend), e.g. in a throwaway venv:
  python3 -m venv /tmp/lora-ref-venv && /tmp/lora-ref-venv/bin/pip install torch transformers==5.17.0 \
      peft==0.21.0 safetensors bitsandbytes
The README lists the versions used. Single thread, deterministic: a rerun writes the same bytes.
"""
import os

import bitsandbytes
import bitsandbytes.functional as bnbf
import numpy as np
import peft
import safetensors
import torch
import transformers

from llama_reference_common import (command_line, double_float, forward_loss, load_base, reference_batch,
                                    write_safetensors)

R, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INIT_SEED, INIT_STD = 1234, 0.05
BLOCKSIZE = 64
OUT_NAME = "src/train/testdata/lora_gradients_shakespeare_llama2.safetensors"

# NF4 table and bitsandbytes' decision thresholds (../shared/spec/bnb-compat.md §1.1, §2.4), float32.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
NF4_THRESHOLDS = np.array([-0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
                           -0.33967943489551544, -0.23460740596055984, -0.13791173323988914,
                           -0.045525018125772476, 0.03979014977812767, 0.1202552504837513,
                           0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                           0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=np.float32)


# ---------------------------------------------------------------- model

def linear_names(model):
    return sorted(name for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS)


def nf4_roundtrip(weight):
    """bitsandbytes' NF4 quantize_4bit -> dequantize_4bit on the CPU, block size 64, no double quant."""
    packed, state = bnbf.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state).to(torch.float32)


def nf4_roundtrip_numpy(weight):
    """The same from the spec, for a check: absmax per 64 consecutive values, x = w * (1 / absmax) in
    f32, code = number of thresholds below x (strict >), value = NF4[code] * absmax in f32."""
    w = weight.detach().numpy().astype(np.float32).reshape(-1, BLOCKSIZE)
    absmax = np.abs(w).max(axis=1, keepdims=True)
    x = w * (np.float32(1.0) / absmax)
    codes = (x[..., None] > NF4_THRESHOLDS).sum(axis=-1)
    return torch.from_numpy((NF4[codes] * absmax).reshape(weight.shape))


def quantize_base_nf4(model):
    """Replaces each target Linear weight by its NF4 round trip; returns the max |bnb - numpy| seen."""
    worst = 0.0
    with torch.no_grad():
        for name in linear_names(model):
            weight = model.get_submodule(name).weight
            dequantized = nf4_roundtrip(weight)
            worst = max(worst, (dequantized - nf4_roundtrip_numpy(weight)).abs().max().item())
            weight.copy_(dequantized)
    return worst


def add_lora(model, init):
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                             task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for (module, part), param in lora_params(model).items():
            param.copy_(init[module, part])
    return model.eval()


def lora_params(peft_model):
    """{(base module name, "lora_A"/"lora_B"): parameter}, e.g. ("model.layers.0.mlp.up_proj", "lora_A")."""
    out = {}
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            assert param.requires_grad, name
            prefix, part = name.split(".lora_")
            out[prefix.removeprefix("base_model.model."), "lora_" + part.split(".")[0]] = param
        else:
            assert not param.requires_grad, name
    return out


def lora_init(model_dir):
    """The seeded adapter values: modules in sorted name order, A then B for each."""
    shapes = {}
    base = load_base(model_dir)
    for name in linear_names(base):
        linear = base.get_submodule(name)
        shapes[name] = (linear.in_features, linear.out_features)
    torch.manual_seed(INIT_SEED)
    init = {}
    for name in sorted(shapes):
        fan_in, fan_out = shapes[name]
        init[name, "lora_A"] = torch.randn(R, fan_in) * INIT_STD
        init[name, "lora_B"] = torch.randn(fan_out, R) * INIT_STD
    return init


# ---------------------------------------------------------------- runs

def gradients(model, input_ids, labels, f64):
    """Loss and {(module, part): grad} of one forward + backward."""
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, input_ids, labels, f64)
    loss.backward()
    return loss.detach(), {key: p.grad.detach().clone() for key, p in lora_params(model).items()}


def run_base(label, model_dir, init, input_ids, labels):
    """The tensors of one base: loss, loss_f64, grad.*, grad64.*."""
    base = load_base(model_dir)
    if label == "nf4":
        worst = quantize_base_nf4(base)
        print(f"nf4: max |bitsandbytes - numpy spec| over the 14 dequantized weights: {worst:.3g}")
    model = add_lora(base, init)
    loss32, grads32 = gradients(model, input_ids, labels, f64=False)
    model.double()
    for key, param in lora_params(model).items():  # the adapter is the same values, widened
        assert torch.equal(param, init[key].double()), key
    loss64, grads64 = gradients(model, input_ids, labels, f64=True)
    report(label, loss32, loss64, grads32, grads64)
    out = {f"{label}.loss": loss32.reshape(1).float()}
    out.update(double_float(f"{label}.loss_f64", loss64.reshape(1)))
    for (module, part), grad in grads32.items():
        out[f"{label}.grad.{module}.{part}"] = grad.float()
        out.update(double_float(f"{label}.grad64.{module}.{part}", grads64[module, part]))
    return out


def report(label, loss32, loss64, grads32, grads64):
    print(f"{label}: loss f32 {loss32.item():.7f}  f64 {loss64.item():.15f}  "
          f"|diff| {abs(loss32.double().item() - loss64.item()):.3g}")
    worst = 0.0
    for key, g64 in grads64.items():
        assert (g64 != 0).any() and (grads32[key] != 0).any(), f"all-zero gradient {key}"
        rel = ((grads32[key].double() - g64).abs().max() / g64.abs().max()).item()
        worst = max(worst, rel)
        print(f"  {key[0]}.{key[1]}: max|g64| {g64.abs().max().item():.4g}  "
              f"max|g32 - g64| / max|g64| {rel:.3g}")
    print(f"{label}: worst max|g32 - g64| / max|g64| = {worst:.3g}; no gradient is all zero")


def check_bnb_against_golden(shared):
    """bitsandbytes' CPU NF4 (bs 64, f32) against its CUDA output in the golden data, where present."""
    path = os.path.join(shared, "golden/quant4bit.safetensors")
    if not os.path.exists(path):
        print("golden quant4bit.safetensors not found; skipping the CPU-vs-CUDA NF4 check")
        return
    with safetensors.safe_open(path, "pt") as f:
        x, expected = f.get_tensor("input_f32"), f.get_tensor("nf4_f32_bs64.dequantized")
    got = nf4_roundtrip(x)
    print(f"bitsandbytes CPU NF4 vs golden CUDA dequantized (64x1000, bs 64): "
          f"{(got != expected.reshape(got.shape)).sum().item()} values differ")


def main():
    shared, root, model_dir, input_ids, labels, labelled = reference_batch(__file__)
    check_bnb_against_golden(shared)
    init = lora_init(model_dir)

    tensors = {"input_ids": input_ids, "labels": labels,
               "labelled_targets": torch.tensor([labelled], dtype=torch.int64)}
    for (module, part), value in init.items():
        tensors[f"init.{module}.{part}"] = value
    for label in ("f32", "nf4"):
        tensors.update(run_base(label, model_dir, init, input_ids, labels))

    metadata = {
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__, "safetensors": safetensors.__version__,
        "model": "shakespeare-llama2, first 2 layers", "r": str(R), "lora_alpha": str(ALPHA),
        "scaling": str(ALPHA / R), "lora_dropout": "0.0", "target_modules": ",".join(TARGETS),
        "init": f"torch.manual_seed({INIT_SEED}); sorted modules; A = randn(r, in) * {INIT_STD}, "
                f"B = randn(out, r) * {INIT_STD}",
        "nf4": f"bitsandbytes.functional.quantize_4bit(w, blocksize={BLOCKSIZE}, quant_type='nf4') -> "
               "dequantize_4bit, CPU, no double quant",
        "labelled_targets": str(labelled),
        "loss": "mean over labelled targets of the batch of cross_entropy(logits[t], labels[t+1])",
        "command": command_line("make_lora_gradient_reference.py"),
    }
    write_safetensors(root, OUT_NAME, tensors, metadata)


if __name__ == "__main__":
    main()
