"""Fine-tuned head fixtures without torch (tests/test_finetune_load.py, tests/golden/make_export_golden.py): the
finetune.* tensors `tbert train --finetune K` writes (briefs: ftformat), made as seeded perturbations of a base
model's tensors, added to a frozen head's best.safetensors with the recipe's version 2 "finetune" key."""
import hashlib
import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def bert_names(cfg, pooler):
    """transformers' BertModel tensor names -> shapes, from config.json."""
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    n = {"embeddings.word_embeddings.weight": (cfg["vocab_size"], H),
         "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], H),
         "embeddings.token_type_embeddings.weight": (cfg.get("type_vocab_size", 2), H),
         "embeddings.LayerNorm.weight": (H,), "embeddings.LayerNorm.bias": (H,)}
    for i in range(cfg["num_hidden_layers"]):
        p = "encoder.layer.%d." % i
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            n[p + m + ".weight"], n[p + m + ".bias"] = (H, H), (H,)
        for m in ("attention.output.LayerNorm", "output.LayerNorm"):
            n[p + m + ".weight"], n[p + m + ".bias"] = (H,), (H,)
        n[p + "intermediate.dense.weight"], n[p + "intermediate.dense.bias"] = (I, H), (I,)
        n[p + "output.dense.weight"], n[p + "output.dense.bias"] = (H, I), (H,)
    if pooler:
        n["pooler.dense.weight"], n["pooler.dense.bias"] = (H, H), (H,)
    return n


def base_tensors(model_dir):
    """The base model's tensors under BertModel names (no `bert.`), in float32."""
    t = load_file(os.path.join(model_dir, "model.safetensors"))
    return {(k[5:] if k.startswith("bert.") else k): v.astype(np.float32) for k, v in t.items()}


def base_sha256(model_dir):
    return hashlib.sha256(open(os.path.join(model_dir, "model.safetensors"), "rb").read()).hexdigest()


def finetune_tensors(model_dir, layers, seed, embeddings=True, pooler=True):
    """finetune.* tensors: the top `layers` layers whole, word embeddings + embedding LayerNorm weight (when
    embeddings), the pooler weight (when pooler and the base has one), each base * (1 + 0.3 N) + 0.02 N."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    base = base_tensors(model_dir)
    names = bert_names(cfg, "pooler.dense.weight" in base)
    L = cfg["num_hidden_layers"]
    tuned = [n for n in names if any(n.startswith("encoder.layer.%d." % i) for i in range(L - layers, L))]
    if embeddings:
        tuned += ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight"]
    if pooler and "pooler.dense.weight" in names:
        tuned.append("pooler.dense.weight")
    rng = np.random.default_rng(seed)
    out = {}
    for n in tuned:
        b = base[n]
        out["finetune." + n] = (b * (1 + 0.3 * rng.standard_normal(b.shape)) + 0.02 * rng.standard_normal(b.shape)).astype(np.float32)
    return out


def read_head(path):
    with safe_open(path, "np") as f:
        meta = dict(f.metadata())
    return load_file(path), meta


def write_head(folder, tensors, meta, finetune=None):
    """folder/best.safetensors with tensors and meta; finetune (a dict: layers, embeddings, base_model_sha256)
    becomes the recipe's "finetune" key with recipe_version 2."""
    os.makedirs(folder, exist_ok=True)
    meta = dict(meta)
    if finetune is not None:
        r = json.loads(meta["recipe"])
        r["recipe_version"] = 2
        r["finetune"] = finetune
        meta["recipe"] = json.dumps(r, separators=(",", ":"))
    save_file(tensors, os.path.join(folder, "best.safetensors"), metadata=meta)
