#!/usr/bin/env python3
"""Reference perplexities for kbit's tests, computed with transformers on the CPU in f32.

For each shared model: the last tenth of tinyshakespeare.txt (from character offset
int(0.9 * length)), tokenized with no special tokens, cut into consecutive windows of CONTEXT
tokens (the remainder dropped); each window scored alone with no BOS; the loss of tokens
1 ... CONTEXT-1 of every window averaged. Writes src/generate/testdata/perplexity_reference.json.

Usage: python3 scripts/dev/make_perplexity_reference.py [SHARED_DIR]   (default ../shared)
"""
import json
import math
import os
import sys

import torch
import transformers

CONTEXT = 256
shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../../shared")
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
text = open(os.path.join(shared, "data/tinyshakespeare.txt"), encoding="utf-8").read()
tail = text[int(0.9 * len(text)):]
torch.set_grad_enabled(False)
results = {"context": CONTEXT, "text": "tinyshakespeare.txt from character int(0.9 * length)",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "models": {}}
for name in ("shakespeare-llama2", "shakespeare-llama3"):
    path = os.path.join(shared, "models", name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    windows = len(ids) // CONTEXT
    total = 0.0
    for w in range(windows):
        window = torch.tensor([ids[w * CONTEXT:(w + 1) * CONTEXT]])
        logits = model(window).logits[0].double()
        nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, window[0, 1:, None]).sum()
        total += nll.item()
    tokens = windows * (CONTEXT - 1)
    mean_nll = total / tokens
    results["models"][name] = {"tokens": tokens, "windows": windows, "mean_nll": mean_nll,
                               "perplexity": math.exp(mean_nll), "text_tokens": len(ids)}
    print(name, results["models"][name])
out = os.path.join(root, "src/generate/testdata/perplexity_reference.json")
with open(out, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
print("wrote", out)
