#!/opt/golden/bin/python
"""Golden references for the encoder (developers run this; CI does not: it needs torch + transformers).

Writes
  tests/models/<name>/            small random BERT folders covering CONVENTIONS.md's "any BERT" list:
                                  config.json, vocab.txt (a few hundred real MiniLM tokens; a cased variant),
                                  tokenizer_config.json, model.safetensors (F32 / F16 / BF16, with and
                                  without the `bert.` prefix, with and without a pooler)
  tests/data/encoder/<name>.json  16 padded inputs (token ids, lengths) and the index of the reference
  tests/data/encoder/<name>.f64   float64 little-endian: last_hidden_state rows of the real tokens
                                  (sequence by sequence, packed), then pooler_output [16,H] when present
  tests/data/encoder/minilm_sms_mean.{json,f64}
                                  mean-pooled all-MiniLM-L6-v2 vectors (float64 reference) of 64 SMS lines,
                                  stored by line number with the ids HF tokenizers gave them (max_len 128)

The reference is transformers' BertModel in float64 on the CPU, run on the very weights stored in the file
(F16/BF16 weights are rounded first, then widened to float64), eager attention with the padding mask.

usage: /opt/golden/bin/python tests/golden/make_encoder_golden.py [--minilm DIR] [--sms FILE]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
N_INPUTS = 16
SEED = 20261125

# name, layers, hidden, heads, intermediate, dtype, prefix, pooler, cased, max_pos, eps, extra
MODELS = [
    # the Tiny-BERT shape (google/bert_uncased_L-2_H-128_A-2) with a small vocabulary
    ("bert_tiny_shape", 2, 128, 2, 512, "F32", "bert.", True, False, 64, 1e-12, {}),
    ("cased_f16_noprefix", 3, 96, 4, 192, "F16", "", True, True, 48, 1e-12, {}),
    ("bf16_nopooler", 2, 64, 8, 128, "BF16", "bert.", False, False, 40, 1e-5, {}),
    # MiniLM's head size (32) and file layout: no prefix, an unused I64 position_ids tensor
    ("minilm_like_f16", 2, 192, 6, 576, "F16", "", True, False, 64, 1e-12, {"position_ids": True}),
    # deeper and narrow, for --layers K (a K=2 reference is written too)
    ("deep4_f32", 4, 32, 2, 64, "F32", "", False, True, 36, 1e-12, {"layers_k": 2}),
]

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def make_vocab(minilm_vocab, cased):
    toks = [t.rstrip("\n") for t in open(minilm_vocab, encoding="utf-8")]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [t for t in toks[999:1100] if len(t) == 1]  # punctuation, digits, letters
    words = [t for t in toks[1996:2600] if t.isalpha()][:260]
    subwords = [t for t in toks if t.startswith("##") and t[2:].isalpha()][:40]
    vocab = specials + chars + words + subwords
    if cased:
        vocab += [w.capitalize() for w in words[:60]] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    seen, out = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def random_state(model, gen):
    """Replaces transformers' init (std 0.02, nearly uniform attention) with O(1)-scaled weights, so that
    attention is peaked and every term of the forward matters in the comparison."""
    sd = {}
    for k, v in model.state_dict().items():
        if v.dtype != torch.float32 and v.dtype != torch.float64:
            sd[k] = v
            continue
        if k.endswith("LayerNorm.weight"):
            t = 1.0 + 0.2 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        elif k.endswith("bias") or k.endswith("LayerNorm.bias"):
            t = 0.2 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        elif v.dim() == 2 and "embeddings" not in k:
            t = torch.randn(v.shape, generator=gen, dtype=torch.float64) / np.sqrt(v.shape[1])
        else:
            t = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        sd[k] = t
    return sd


def make_inputs(rng, vocab_size, max_pos, n=N_INPUTS):
    """[CLS] random ids [SEP]; lengths from 2 (empty text) up to max_pos, with repeats and a full row."""
    lengths = [2, max_pos, 3] + [int(x) for x in rng.integers(2, max_pos + 1, size=n - 3)]
    ids = []
    for L in lengths:
        body = [int(x) for x in rng.integers(5, vocab_size, size=L - 2)]
        ids.append([2] + body + [3])
    return ids, lengths


def run_reference(model, ids, lengths, pad_id=0):
    T = max(lengths)
    inp = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, row in enumerate(ids):
        inp[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        out = model(input_ids=inp, attention_mask=mask, token_type_ids=torch.zeros_like(inp))
    hidden = out.last_hidden_state.numpy()
    packed = np.concatenate([hidden[i, : lengths[i]] for i in range(len(ids))], axis=0)
    pooler = out.pooler_output.numpy() if out.pooler_output is not None else None
    return packed, pooler


def write_golden(path_base, meta, arrays):
    offset = 0
    with open(path_base + ".f64", "wb") as f:
        for name, a in arrays:
            a = np.ascontiguousarray(a, dtype="<f8")
            meta["arrays"][name] = {"offset": offset, "shape": list(a.shape)}
            f.write(a.tobytes())
            offset += a.size
    with open(path_base + ".json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def build_model(spec, minilm_vocab, gen, rng):
    name, L, H, A, I, dtype, prefix, pooler, cased, max_pos, eps, extra = spec
    vocab = make_vocab(minilm_vocab, cased)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                     intermediate_size=I, max_position_embeddings=max_pos, type_vocab_size=2, layer_norm_eps=eps,
                     hidden_act="gelu", pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    model = BertModel(cfg, add_pooling_layer=pooler).eval()
    sd = random_state(model, gen)
    # round to the stored dtype, and use exactly those values (widened) in the float64 reference
    stored = {}
    for k, v in sd.items():
        if v.dtype == torch.float64:
            stored[k] = v.to(DTYPES[dtype]).contiguous()
            sd[k] = stored[k].to(torch.float64)
    model = model.double()
    model.load_state_dict(sd, strict=False)

    folder = os.path.join(ROOT, "models", name)
    os.makedirs(folder, exist_ok=True)
    tensors = {prefix + k: v for k, v in stored.items() if not k.endswith("position_ids")}
    if extra.get("position_ids"):
        tensors["embeddings.position_ids"] = torch.arange(max_pos, dtype=torch.int64).unsqueeze(0)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab), "hidden_size": H,
              "num_hidden_layers": L, "num_attention_heads": A, "intermediate_size": I,
              "max_position_embeddings": max_pos, "type_vocab_size": 2, "layer_norm_eps": eps,
              "hidden_act": "gelu", "pad_token_id": 0, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
              "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": not cased, "tokenize_chinese_chars": True, "strip_accents": None,
                   "tokenizer_class": "BertTokenizer", "model_max_length": max_pos}, f, indent=2)
        f.write("\n")

    ids, lengths = make_inputs(rng, len(vocab), max_pos)
    meta = {"model": name, "layers": L, "hidden": H, "n": len(ids), "lengths": lengths, "ids": ids,
            "dtype": dtype, "has_pooler": pooler, "arrays": {}}
    packed, pool_out = run_reference(model, ids, lengths)
    arrays = [("hidden", packed)]
    if pool_out is not None:
        arrays.append(("pooler", pool_out))
    k = extra.get("layers_k")
    if k:
        # transformers with only the first K encoder layers
        model.encoder.layer = model.encoder.layer[:k]
        packed_k, _ = run_reference(model, ids, lengths)
        meta["layers_k"] = k
        arrays.append(("hidden_k", packed_k))
    write_golden(os.path.join(ROOT, "data", "encoder", name), meta, arrays)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"{name}: L{L} H{H} A{A} I{I} {dtype} prefix='{prefix}' pooler={pooler} cased={cased} "
          f"vocab {len(vocab)}, folder {size / 1e6:.2f} MB")


def minilm_sms(minilm_dir, sms_path):
    lines = open(sms_path, "rb").read().decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    texts = [ln.split("\t", 1)[1] if "\t" in ln else ln for ln in lines]
    # 60 lines spread over the corpus plus the 4 longest (truncated at 128 tokens)
    picks = sorted(set(list(range(1, len(texts) + 1, len(texts) // 60))[:60]))
    longest = sorted(range(1, len(texts) + 1), key=lambda i: -len(texts[i - 1]))[:64 - len(picks)]
    picks = sorted(set(picks + longest))[:64]
    tok = BertTokenizerFast.from_pretrained(minilm_dir)
    enc = [tok(texts[i - 1], truncation=True, max_length=128)["input_ids"] for i in picks]
    model = BertModel.from_pretrained(minilm_dir, attn_implementation="eager", add_pooling_layer=False)
    model = model.double().eval()
    lengths = [len(e) for e in enc]
    T = max(lengths)
    inp = torch.zeros((len(enc), T), dtype=torch.long)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for i, row in enumerate(enc):
        inp[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        h = model(input_ids=inp, attention_mask=mask, token_type_ids=torch.zeros_like(inp)).last_hidden_state
    m = mask.unsqueeze(-1).double()
    mean = (h * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling
    normed = mean / torch.clamp(mean.norm(dim=1, keepdim=True), min=1e-12)  # its Normalize module
    meta = {"model": "minilm", "corpus": "sms/SMSSpamCollection", "max_len": 128, "pool": "mean",
            "lines": picks, "lengths": lengths, "ids": enc, "arrays": {}}
    write_golden(os.path.join(ROOT, "data", "encoder", "minilm_sms_mean"), meta,
                 [("mean", mean.numpy()), ("normalized", normed.numpy())])
    print(f"minilm_sms_mean: {len(picks)} lines, lengths {min(lengths)}..{max(lengths)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", default=os.path.expanduser("~/.cache/tbert/models/minilm"))
    ap.add_argument("--sms", default=os.path.join(ROOT, "..", "..", "shared", "data", "sms", "SMSSpamCollection"))
    args = ap.parse_args()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    os.makedirs(os.path.join(ROOT, "data", "encoder"), exist_ok=True)
    for spec in MODELS:
        build_model(spec, os.path.join(args.minilm, "vocab.txt"), gen, rng)
    if os.path.exists(args.sms):
        minilm_sms(args.minilm, args.sms)
    else:
        print(f"{args.sms} not found: minilm_sms_mean not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
