"""What the PyTorch gradient references of src/train/testdata share: the 2-layer cut of shakespeare-llama2,
the batch, the causal-LM loss, the float64 versions of the places where transformers' Llama forces
float32, the double-float (hi, lo) storage of float64 values and the reproducible safetensors writer.

Imported by make_lora_gradient_reference.py and make_full_gradient_reference.py (run either from the
repository root; Python puts the script's folder, scripts/dev, on the import path).
"""
import contextlib
import json
import os
import sys

import safetensors.torch
import torch
import transformers
from transformers.models.llama import modeling_llama

LAYERS = 2
SEQ_LEN = 32
SEQ1_START = 500          # token index of sequence 1 in the encoding of the text's first 4000 characters
PROMPT_MASKED = 6         # labels[1, 0:6] = -100
BOS = 1


# ---------------------------------------------------------------- setup

def shared_dir_and_root(script_file):
    """SHARED_DIR (argv[1], default ../shared next to the repository) and the repository root, for the
    script at script_file (its __file__, in scripts/dev); also makes torch single-threaded and
    deterministic."""
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(script_file), "../../../shared")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(script_file))))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return shared, root


# ---------------------------------------------------------------- data

def make_batch(shared, model_dir):
    """input_ids [2, 32], labels [2, 32] with labels[1, 0:6] = -100."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = open(os.path.join(shared, "data/tinyshakespeare.txt"), encoding="utf-8").read()[:4000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= SEQ1_START + SEQ_LEN - 1, len(ids)
    rows = [[BOS] + ids[:SEQ_LEN - 1], [BOS] + ids[SEQ1_START:SEQ1_START + SEQ_LEN - 1]]
    input_ids = torch.tensor(rows, dtype=torch.int64)
    labels = input_ids.clone()
    labels[1, :PROMPT_MASKED] = -100
    return input_ids, labels


def labelled_targets(labels):
    """The number of targets the loss averages over (position t predicts labels[t + 1])."""
    return int((labels[:, 1:] != -100).sum())


def reference_batch(script_file):
    """What each reference script starts from: the shared folder, the repository root, the
    shakespeare-llama2 folder, the batch (input_ids, labels) and its count of labelled targets, printed."""
    shared, root = shared_dir_and_root(script_file)
    model_dir = os.path.join(shared, "models/shakespeare-llama2")
    input_ids, labels = make_batch(shared, model_dir)
    labelled = labelled_targets(labels)
    print("input_ids", input_ids.tolist(), "\nlabelled targets", labelled)
    return shared, root, model_dir, input_ids, labels, labelled


def causal_lm_loss(logits, labels):
    """transformers' ForCausalLMLoss without its logits.float(): position t predicts label t+1, mean over
    the labelled (not -100) targets of the whole batch, in the logits' dtype."""
    shift_labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1),
                                             ignore_index=-100, reduction="mean")


# ---------------------------------------------------------------- model

def load_base(model_dir):
    """The first LAYERS layers of the model, f32, eager attention, eval mode."""
    config = transformers.AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = LAYERS
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, config=config, dtype=torch.float32, attn_implementation="eager")
    assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied embeddings"
    return model.eval()


# ---------------------------------------------------------------- float64 Llama

def rms_norm_f64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@torch.no_grad()
def rotary_f64(self, x, position_ids):
    assert self.attention_scaling == 1.0
    base = self.config.rope_parameters["rope_theta"]
    dim = self.config.head_dim
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[:, :, None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def eager_attention_f64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    assert module.num_key_value_groups == 1 and dropout == 0.0
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


@contextlib.contextmanager
def llama_in_f64():
    """Swaps in float64 versions of the parts of transformers' Llama that cast to float32."""
    saved = (modeling_llama.LlamaRMSNorm.forward, modeling_llama.LlamaRotaryEmbedding.forward,
             modeling_llama.eager_attention_forward)
    modeling_llama.LlamaRMSNorm.forward = rms_norm_f64
    modeling_llama.LlamaRotaryEmbedding.forward = rotary_f64
    modeling_llama.eager_attention_forward = eager_attention_f64
    try:
        yield
    finally:
        (modeling_llama.LlamaRMSNorm.forward, modeling_llama.LlamaRotaryEmbedding.forward,
         modeling_llama.eager_attention_forward) = saved


def forward_loss(model, input_ids, labels, f64):
    """The loss of one forward, with its autograd graph. f64=False: transformers' own loss of the float32
    model (checked against causal_lm_loss); f64=True: the float64 model (model.double() done by the caller)
    under llama_in_f64, with causal_lm_loss in float64."""
    if f64:
        with llama_in_f64():
            logits = model(input_ids=input_ids).logits
            assert logits.dtype == torch.float64
            return causal_lm_loss(logits, labels)
    loss = model(input_ids=input_ids, labels=labels).loss
    with torch.no_grad():  # the loss reduction is the one causal_lm_loss implements
        check = causal_lm_loss(model(input_ids=input_ids).logits, labels)
    assert abs(check.item() - loss.item()) <= 1e-6 * abs(loss.item()), (check.item(), loss.item())
    return loss


# ---------------------------------------------------------------- output

def double_float(key, x):
    """A float64 tensor as two float32 ones, {key}.hi = float32(x) and {key}.lo = float32(x - hi): a
    "double-float" whose sum hi + lo (in float64) gives x to about 48 bits. (Readers without a float64
    dtype, such as kbit's safetensors reader, refuse F64 tensors.)"""
    assert x.dtype == torch.float64, key
    hi = x.float()
    lo = (x - hi.double()).float()
    assert ((hi.double() + lo.double() - x).abs() <= 2.0 ** -47 * x.abs()).all(), key
    return {f"{key}.hi": hi, f"{key}.lo": lo}


def sort_metadata(blob):
    """safetensors writes __metadata__ in hash order, which changes from run to run; this rewrites the
    header (same length, same tensor entries) with the metadata keys sorted, so the file is byte for byte
    reproducible."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= size and blob[8 + len(text):8 + size].strip() == b""
    return blob[:8] + text.ljust(size, b" ") + blob[8 + size:]


def command_line(script):
    """The command recorded in the metadata: python3 scripts/dev/<script> and the arguments given."""
    return f"python3 scripts/dev/{script}" + "".join(" " + a for a in sys.argv[1:])


def write_safetensors(root, out_name, tensors, metadata):
    """Writes tensors (no F64) with metadata, header keys sorted; returns the path."""
    assert all(v.dtype != torch.float64 for v in tensors.values())
    out = os.path.join(root, out_name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    blob = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    with open(out, "wb") as f:
        f.write(sort_metadata(blob))
    print(f"wrote {out}: {len(tensors)} tensors, {os.path.getsize(out)} bytes")
    return out
