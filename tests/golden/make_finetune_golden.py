#!/opt/golden/bin/python
"""Golden gradients for fine-tuning (issue 15), from PyTorch autograd in float64 (developers run this; CI does
not: it needs torch + transformers).

Model: the committed random tests/models/deep4_f32 (L4 H32 A2 I64, F32 weights, no pooler, no prefix; made by
make_encoder_golden.py), loaded into transformers' BertModel in float64 (the F32 values widened exactly), eager
attention with the padding mask, dropout off.
Batch: 8 windows ([CLS] ids [SEP], lengths 2 .. 36, padded to 36) in 5 documents (1, 2, 1, 3, 1 windows).
Computation, as tbert's dense block and linear binary head:
  h = BertModel(windows).last_hidden_state   (with `layers` layers in use)
  w_i = masked mean of window i over its real tokens ([CLS] and [SEP] included)
  d_j = mean of document j's windows' w_i;  x_j = d_j / max(||d_j||, 1e-12)  (torch.nn.functional.normalize)
  z_j = x_j . head.fc2.weight + head.fc2.bias;  loss = mean_j BCE-with-logits(z_j, label_j)
Cases: the top k of the layers in use trainable, the rest frozen:
  k1    layers 4, k 1        (encoder.layer.3.*)
  l3k2  layers 3, k 2        (--layers 3: encoder.layer.1.* and .2.*; layer 3 unused)
  kall  layers 4, k 4 = all  (every encoder layer and the embeddings: word, position, token type, LayerNorm)
and the head's weight and bias always.

Writes tests/data/finetune/finetune_golden.safetensors:
  ids [rows] I32 (packed windows), off [8+1] I32 (window w is rows off[w] .. off[w+1]-1), doc_off [5+1] I32,
  labels [5] I32, head.fc2.weight [1,32] / head.fc2.bias [1] F32 (the head's initial values, also in float64 below);
  per case C:
  C.hidden_in [rows,32] F64   the input of the first trained layer (packed rows), i.e. the frozen layers' output
                              (kall: the embeddings' input is ids; no hidden_in)
  C.pooled [5,32] F64         x (the normalised document vectors: the stack's output)
  C.logits [5] F64, C.loss [1] F64
  C.grad_pooled [5,32] F64    d loss / d x (what the head's backward hands the stack)
  C.grad.NAME F64             d loss / d NAME for every trainable tensor (transformers names, no prefix;
                              head.fc2.weight, head.fc2.bias for the head)
  opt.params.NAME F32        every tensor of case kall and the head after 4 optimiser steps (below)
  opt.norms [4] F64          clip_grad_norm_'s total norm at each step
metadata: model, cases "k1:4:1,l3k2:3:2,kall:4:4" (name:layers:k), torch and transformers versions, and the
optimiser golden's settings: opt_lr_encoder, opt_lr_head, opt_weight_decay, opt_clip (max norm), opt_warmup,
opt_total, opt_scales (the gradient's scale per step), opt_decay (the names Trainer decays, comma-separated).
The optimiser golden: starting from the model's float32 values and the head's, 4 steps each with case kall's
gradient rounded to float32 times OPT_SCALES[step], through clip_grad_norm_ (clips at scale 1, not at 0.25),
torch.optim.AdamW (lr 1e-3 encoder, 1e-2 head, weight decay 0.01 on what Trainer.get_decay_parameter_names
picks) and get_linear_schedule_with_warmup (2 warm-up of 10 steps): issue 15's "one optimiser step with the
schedule and clipping" on the real tensor list.
tests/test_finetune_golden.c builds the same computation with include/tbert/finetune_stack.h + the head.

usage: /opt/golden/bin/python tests/golden/make_finetune_golden.py
"""
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, Trainer, get_linear_schedule_with_warmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
MODEL = "deep4_f32"
OUT = os.path.join(ROOT, "data", "finetune", "finetune_golden.safetensors")
CASES = [("k1", 4, 1), ("l3k2", 3, 2), ("kall", 4, 4)]
LENGTHS = [2, 36, 9, 17, 5, 23, 12, 30]  # window lengths ([CLS] .. [SEP]); 36 = max_position_embeddings
DOCS = [1, 2, 1, 3, 1]                   # windows per document, in order
LABELS = [0, 1, 1, 0, 1]
SEED = 1515
# the optimiser golden: OPT_SCALES[s] scales case kall's gradient (float32-rounded) at step s; the max norm is
# OPT_CLIP_FRAC of the unscaled gradient's norm, so the steps at 1.0 clip and those at 0.25 do not
OPT_LR_ENC, OPT_LR_HEAD, OPT_WD, OPT_WARMUP, OPT_TOTAL = 1e-3, 1e-2, 0.01, 2, 10
OPT_SCALES = [1.0, 0.25, 1.0, 0.25]
OPT_CLIP_FRAC = 0.5


def load_model(folder):
    cfg = BertConfig.from_pretrained(folder)
    cfg.hidden_dropout_prob = 0.0
    cfg.attention_probs_dropout_prob = 0.0
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=False)
    sd = {k: v.to(torch.float64) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    model = model.double()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing
    return model.eval()


def run_case(folder, layers, k, ids, mask, head_w, head_b):
    model = load_model(folder)
    model.encoder.layer = model.encoder.layer[:layers]
    first = layers - k
    trainable = {}
    for name, p in model.named_parameters():
        train = name.startswith("encoder.layer.") and int(name.split(".")[2]) >= first
        if k == layers and name.startswith("embeddings."):
            train = True
        if name.startswith("encoder.layer.") and int(name.split(".")[2]) >= layers:
            train = False
        p.requires_grad_(train)
        if train:
            trainable[name] = p
    w = torch.nn.Parameter(torch.from_numpy(head_w.astype(np.float64)))
    b = torch.nn.Parameter(torch.from_numpy(head_b.astype(np.float64)))
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), output_hidden_states=True)
    h = out.last_hidden_state                                   # [W, T, H]
    m = mask.to(torch.float64).unsqueeze(-1)
    win = (h * m).sum(1) / m.sum(1)                             # [W, H]
    docs, s = [], 0
    for n in DOCS:
        docs.append(win[s:s + n].mean(0))
        s += n
    d = torch.stack(docs)                                       # [D, H]
    x = torch.nn.functional.normalize(d, p=2, dim=1, eps=1e-12)
    x.retain_grad()
    z = x @ w.T + b                                             # [D, 1]
    y = torch.tensor(LABELS, dtype=torch.float64).unsqueeze(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    loss.backward()
    res = {}
    lens = mask.sum(1).tolist()
    if first > 0:
        hin = out.hidden_states[first]                          # input of layer `first`
        res["hidden_in"] = torch.cat([hin[i, :lens[i]] for i in range(len(lens))]).detach().numpy()
    res["pooled"] = x.detach().numpy()
    res["logits"] = z.detach().numpy().reshape(-1)
    res["loss"] = np.array([loss.item()])
    res["grad_pooled"] = x.grad.numpy()
    for name, p in trainable.items():
        assert p.grad is not None, name
        res["grad." + name] = p.grad.numpy()
    res["grad.head.fc2.weight"] = w.grad.numpy()
    res["grad.head.fc2.bias"] = b.grad.numpy()
    return res


def optimiser_golden(folder, grads, head_w, head_b):
    """Four steps of transformers' recipe on every tensor of case kall (the model's float32 values, the head's):
    AdamW (foreach=False) with one group per (encoder | head) x (decay | not), decay by Trainer's own rule
    (get_decay_parameter_names: not biases, not LayerNorm), get_linear_schedule_with_warmup, clip_grad_norm_."""
    model = load_model(folder).float()
    decay_names = set(Trainer.get_decay_parameter_names(None, model))
    params = {}
    for name, p in model.named_parameters():
        if "grad." + name in grads:
            params[name] = torch.nn.Parameter(p.detach().clone())
    params["head.fc2.weight"] = torch.nn.Parameter(torch.from_numpy(head_w.copy()))
    params["head.fc2.bias"] = torch.nn.Parameter(torch.from_numpy(head_b.copy()))
    decay_names |= {"head.fc2.weight"}
    assert len(params) == sum(1 for k in grads if k.startswith("grad."))
    groups = {}
    for name, p in params.items():
        key = (name.startswith("head."), name in decay_names)
        groups.setdefault(key, []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": OPT_LR_HEAD if head else OPT_LR_ENC,
                              "weight_decay": OPT_WD if decay else 0.0} for (head, decay), ps in groups.items()],
                            betas=(0.9, 0.999), eps=1e-8, foreach=False)
    sched = get_linear_schedule_with_warmup(opt, OPT_WARMUP, OPT_TOTAL)
    g32 = {name: torch.from_numpy(grads["grad." + name]).to(torch.float32) for name in params}
    norm0 = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g32.values()])))
    clip = OPT_CLIP_FRAC * norm0
    norms, clipped = [], []
    for scale in OPT_SCALES:
        for name, p in params.items():
            p.grad = g32[name] * scale
        norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), clip, foreach=False))
        norms.append(norm)
        clipped.append(norm > clip)
        opt.step()
        sched.step()
    assert any(clipped) and not all(clipped), clipped
    out = {"opt.params." + name: p.detach().numpy().copy() for name, p in params.items()}
    out["opt.norms"] = np.array(norms, dtype=np.float64)
    meta = {"opt_lr_encoder": repr(OPT_LR_ENC), "opt_lr_head": repr(OPT_LR_HEAD), "opt_weight_decay": repr(OPT_WD),
            "opt_clip": repr(clip), "opt_warmup": str(OPT_WARMUP), "opt_total": str(OPT_TOTAL),
            "opt_scales": ",".join(repr(x) for x in OPT_SCALES),
            "opt_decay": ",".join(sorted(n for n in params if n in decay_names))}
    return out, meta


def main():
    torch.manual_seed(SEED)
    folder = os.path.join(ROOT, "models", MODEL)
    vocab_size = sum(1 for _ in open(os.path.join(folder, "vocab.txt"), encoding="utf-8"))
    rng = np.random.default_rng(SEED)
    assert sum(DOCS) == len(LENGTHS) and len(LABELS) == len(DOCS)
    T = max(LENGTHS)
    ids = torch.zeros((len(LENGTHS), T), dtype=torch.long)
    mask = torch.zeros((len(LENGTHS), T), dtype=torch.long)
    packed = []
    for i, L in enumerate(LENGTHS):
        row = [2] + [int(x) for x in rng.integers(5, vocab_size, size=L - 2)] + [3]
        ids[i, :L] = torch.tensor(row)
        mask[i, :L] = 1
        packed += row
    head_w = (rng.standard_normal((1, 32)) * 0.5).astype(np.float32)
    head_b = np.array([0.1], dtype=np.float32)
    tensors = {
        "ids": np.array(packed, dtype=np.int32),
        "off": np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int32),
        "doc_off": np.concatenate([[0], np.cumsum(DOCS)]).astype(np.int32),
        "labels": np.array(LABELS, dtype=np.int32),
        "head.fc2.weight": head_w,
        "head.fc2.bias": head_b,
    }
    for name, layers, k in CASES:
        res = run_case(folder, layers, k, ids, mask, head_w, head_b)
        if name == "kall":
            opt_tensors, opt_meta = optimiser_golden(folder, res, head_w, head_b)
        for key, v in res.items():
            tensors["%s.%s" % (name, key)] = np.ascontiguousarray(v, dtype=np.float64)
        n_grad = sum(1 for key in res if key.startswith("grad."))
        print("%s: layers %d k %d loss %.6f, %d gradient tensors" % (name, layers, k, res["loss"][0], n_grad))
    tensors.update(opt_tensors)
    meta = {"model": MODEL, "cases": ",".join("%s:%d:%d" % c for c in CASES),
            "torch": torch.__version__, "transformers": transformers.__version__}
    meta.update(opt_meta)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print("wrote", OUT, "%.0f kB" % (os.path.getsize(OUT) / 1e3))


if __name__ == "__main__":
    main()
