#!/usr/bin/env python3
"""Reference full fine-tuning gradients (every weight trainable, no LoRA) for kbit's backward pass,
computed with transformers on the CPU.

The same 2-layer cut of shakespeare-llama2 (f32 weights = the bf16 checkpoint widened exactly, eager
attention, eval mode, tied embeddings) and the same batch and loss as make_lora_gradient_reference.py
(both take them from llama_reference_common.py), with no adapter: all 20 parameters require grad, and
loss.backward() gives d loss / d every weight. model.embed_tokens.weight is tied to lm_head, so its
gradient is the sum of the embedding lookup's scatter-add and the lm_head part.

One float32 run (model(input_ids, labels=labels).loss) and one float64 run (model.double(), with the
places where transformers' Llama forces float32 replaced by the same formulas in float64, exactly as in
the LoRA reference). Stored: the losses; for every parameter the float64 gradient's L2 norm; for the 5
norm weights the whole gradient (float32 and float64 runs); for the 15 2-D weights the gradient rows
rows.<param> (4 of them: see sample_rows) of both runs. Float64 values are stored as <key>.hi / <key>.lo
float32 pairs (double_float). src/train/testdata/README.md lists every key.

Writes src/train/testdata/full_gradients_shakespeare_llama2.safetensors.

Usage: python3 scripts/dev/make_full_gradient_reference.py [SHARED_DIR]   (default ../shared)
Needs torch, transformers and safetensors (the venv of make_lora_gradient_reference.py will do).
Single thread, deterministic: a rerun writes the same bytes.
"""
import collections

import safetensors
import torch
import transformers

from llama_reference_common import (BOS, command_line, double_float, forward_loss, load_base, reference_batch,
                                    write_safetensors)

OUT_NAME = "src/train/testdata/full_gradients_shakespeare_llama2.safetensors"
EMBEDDING = "model.embed_tokens.weight"
PARAMETERS = 20           # embed_tokens (= lm_head), 2 x (4 attention + 3 MLP Linear weights + 2 norms), norm


def sample_rows(name, out_features, input_ids):
    """The sorted gradient rows stored for a 2-D parameter [out, in].

    A Linear weight: 0, out // 3, 2 * out // 3, out - 1. The embedding (tied lm_head): 0 (<unk>) and
    out - 1, which are not in the batch, so their gradient is the lm_head part alone; BOS (1), at position 0
    of both sequences and never a labelled target; and the most frequent other token id of input_ids
    (ties: the smallest id), which gets the lookup's scatter-add from several positions and is a labelled
    target there, on top of its lm_head part."""
    if name != EMBEDDING:
        return [0, out_features // 3, 2 * out_features // 3, out_features - 1]
    counts = collections.Counter(input_ids.flatten().tolist())
    frequent = min((t for t in counts if t != BOS), key=lambda t: (-counts[t], t))
    rows = sorted([0, BOS, frequent, out_features - 1])
    assert 0 not in counts and out_features - 1 not in counts and counts[BOS] == 2 and counts[frequent] > 1
    return rows


def gradients(model, input_ids, labels, f64):
    """Loss and {parameter name: grad} of one forward + backward."""
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, input_ids, labels, f64)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    assert len(grads) == PARAMETERS and all(g is not None for g in grads.values())
    return loss.detach(), grads


def relative_error(got, want):
    """||got - want||_2 / ||want||_2 in float64."""
    return (torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want)).item()


def report(loss32, loss64, grads32, grads64, rows):
    print(f"loss f32 {loss32.item():.7f}  f64 {loss64.item():.15f}  "
          f"|diff| {abs(loss32.double().item() - loss64.item()):.3g}")
    worst = 0.0
    for name, g64 in grads64.items():
        g32 = grads32[name]
        assert (g64 != 0).any() and (g32 != 0).any(), f"all-zero gradient {name}"
        s64, s32 = (g64, g32) if name not in rows else (g64[rows[name]], g32[rows[name]])
        assert (s64 != 0).any(dim=-1).all(), f"an all-zero stored row of {name}"
        rel_stored, rel_whole = relative_error(s32, s64), relative_error(g32, g64)
        worst = max(worst, rel_stored)
        print(f"  {name}: rows {rows.get(name, 'all')}  ||g64|| {torch.linalg.vector_norm(g64).item():.6g}  "
              f"max|g64| whole {g64.abs().max().item():.4g} stored {s64.abs().max().item():.4g}  "
              f"rel err stored {rel_stored:.3g} whole {rel_whole:.3g}")
        if name == EMBEDDING:
            for row in rows[name]:
                print(f"    row {row}: ||g64|| {torch.linalg.vector_norm(g64[row]).item():.4g}  "
                      f"max|g64| {g64[row].abs().max().item():.4g}  "
                      f"rel err {relative_error(g32[row], g64[row]):.3g}")
    print(f"worst ||g32 - g64|| / ||g64|| over the stored values of one parameter: {worst:.3g}; "
          "no gradient is all zero, no stored row is all zero")


def main():
    shared, root, model_dir, input_ids, labels, labelled = reference_batch(__file__)

    model = load_base(model_dir)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    rows = {name: sample_rows(name, w.shape[0], input_ids) for name, w in weights.items() if w.dim() == 2}
    loss32, grads32 = gradients(model, input_ids, labels, f64=False)
    model.double()
    assert model.lm_head.weight is model.model.embed_tokens.weight, "tie lost in model.double()"
    for name, param in model.named_parameters():  # the same values, widened
        assert torch.equal(param, weights[name].double()), name
    loss64, grads64 = gradients(model, input_ids, labels, f64=True)
    report(loss32, loss64, grads32, grads64, rows)

    tensors = {"input_ids": input_ids, "labels": labels,
               "labelled_targets": torch.tensor([labelled], dtype=torch.int64),
               "f32.loss": loss32.reshape(1).float()}
    tensors.update(double_float("loss_f64", loss64.reshape(1)))
    for name, g64 in grads64.items():
        tensors.update(double_float(f"grad64_norm.{name}", torch.linalg.vector_norm(g64).reshape(1)))
        if name in rows:
            index = torch.tensor(rows[name], dtype=torch.int64)
            tensors[f"rows.{name}"] = index
            tensors.update(double_float(f"grad64.{name}", g64[index]))
            tensors[f"grad.{name}"] = grads32[name][index].float()
        else:
            tensors.update(double_float(f"grad64.{name}", g64))
            tensors[f"grad.{name}"] = grads32[name].float()

    metadata = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "model": "shakespeare-llama2, first 2 layers, tied embeddings",
        "trainable": "all 20 parameters, no LoRA; model.embed_tokens.weight is lm_head.weight",
        "rows": "2-D weights [out, in]: rows 0, out//3, 2*out//3, out-1; model.embed_tokens.weight: rows 0 and "
                "2047 (not in the batch), 1 (BOS) and the most frequent other token id of input_ids",
        "labelled_targets": str(labelled),
        "loss": "mean over labelled targets of the batch of cross_entropy(logits[t], labels[t+1])",
        "f64": "model.double(); RMSNorm, RoPE, eager softmax and loss in float64; stored as hi + lo",
        "command": command_line("make_full_gradient_reference.py"),
    }
    write_safetensors(root, OUT_NAME, tensors, metadata)


if __name__ == "__main__":
    main()
