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
  C.grad.NAME F64             d loss / d NAME for every trainable tensor (transformers names, no prefix;
                              head.fc2.weight, head.fc2.bias for the head)
metadata: model, cases "k1:4:1,l3k2:3:2,kall:4:4" (name:layers:k), torch and transformers versions.
tests/test_finetune_golden.c builds the same computation with include/tbert/finetune_stack.h + the head.

usage: /opt/golden/bin/python tests/golden/make_finetune_golden.py
"""
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import BertConfig, BertModel
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
MODEL = "deep4_f32"
OUT = os.path.join(ROOT, "data", "finetune", "finetune_golden.safetensors")
CASES = [("k1", 4, 1), ("l3k2", 3, 2), ("kall", 4, 4)]
LENGTHS = [2, 36, 9, 17, 5, 23, 12, 30]  # window lengths ([CLS] .. [SEP]); 36 = max_position_embeddings
DOCS = [1, 2, 1, 3, 1]                   # windows per document, in order
LABELS = [0, 1, 1, 0, 1]
SEED = 1515


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
    for name, p in trainable.items():
        assert p.grad is not None, name
        res["grad." + name] = p.grad.numpy()
    res["grad.head.fc2.weight"] = w.grad.numpy()
    res["grad.head.fc2.bias"] = b.grad.numpy()
    return res


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
        for key, v in res.items():
            tensors["%s.%s" % (name, key)] = np.ascontiguousarray(v, dtype=np.float64)
        n_grad = sum(1 for key in res if key.startswith("grad."))
        print("%s: layers %d k %d loss %.6f, %d gradient tensors" % (name, layers, k, res["loss"][0], n_grad))
    meta = {"model": MODEL, "cases": ",".join("%s:%d:%d" % c for c in CASES),
            "torch": torch.__version__, "transformers": transformers.__version__}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    print("wrote", OUT, "%.0f kB" % (os.path.getsize(OUT) / 1e3))


if __name__ == "__main__":
    main()
