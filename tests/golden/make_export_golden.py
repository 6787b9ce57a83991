#!/usr/bin/env python3
"""`tbert export` against transformers (issue 15, Decisions: Export). Run with /opt/golden/bin/python (torch +
transformers; not in CI):

    /opt/golden/bin/python tests/golden/make_export_golden.py --tbert build/cpu/tbert [--minilm DIR]

For each base model (the committed tests/models/bert_tiny_shape; MiniLM too when --minilm names its folder):
trains a small frozen head with tbert, lays seeded fine-tuned tensors over it (tests/util/finetune_fixture.py:
the top K layers, word embeddings, embedding LayerNorm, pooler), exports it with `tbert export`, loads the
exported folder with transformers.BertModel (float64) and compares its last_hidden_state with tbert's
(`tbert embed --pool flatten`: the last hidden state of every real token, zeros beyond) on the same token ids
(`tbert tokenize`), at CONVENTIONS' encoder tolerance atol 1e-4 + rtol 1e-4. Prints the max difference.
For bert_tiny_shape it writes tests/data/finetune/export_golden.npz (ids, lens, transformers' hidden states,
the fixture's seed and K), which tests/test_finetune_load.py checks in CI without torch."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import BertModel

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "util"))
from finetune_fixture import base_sha256, finetune_tensors, read_head, write_head  # noqa: E402

DATA = os.path.join(TESTS, "data", "head", "tiny.tsv")
SEED, MAX_LEN, N_TEXTS = 15, 32, 8
ATOL = RTOL = 1e-4


def tbert(bin_, args, stdin=None, env=None):
    p = subprocess.run([bin_] + args, input=stdin, capture_output=True, env=env)
    if p.returncode:
        sys.exit("tbert %s: exit %d: %s" % (" ".join(args), p.returncode, p.stderr.decode()))
    return p.stdout


def check_model(bin_, model, layers, tmp, env):
    name = os.path.basename(os.path.normpath(model))
    h0, ft, exp = (os.path.join(tmp, name + s) for s in ("_h0", "_ft", "_exported"))
    tbert(bin_, ["train", "--model", model, "--data", DATA, "--max-len", str(MAX_LEN), "--epochs", "1", "--threads", "1",
                 "--quiet", "--out", h0], env=env)
    head, meta = read_head(os.path.join(h0, "best.safetensors"))
    write_head(ft, {**head, **finetune_tensors(model, layers, SEED)}, meta,
               {"layers": layers, "embeddings": True, "base_model_sha256": base_sha256(model)})
    tbert(bin_, ["export", "--model", model, "--head", ft, "--out", exp, "--quiet"], env=env)
    texts = [line.split("\t", 1)[1].rstrip("\n") for line in open(DATA, encoding="utf-8")][:N_TEXTS]
    stdin = ("\n".join(texts) + "\n").encode()
    ids = [[int(x) for x in line.split()] for line in
           tbert(bin_, ["tokenize", "--model", model, "--max-len", str(MAX_LEN)], stdin, env).decode().splitlines()]
    emb = ["embed", "--pool", "flatten", "--max-len", str(MAX_LEN), "--threads", "1", "--format", "f32", "--quiet"]
    got = np.frombuffer(tbert(bin_, emb + ["--model", exp], stdin, env), np.float32)
    overlay = np.frombuffer(tbert(bin_, emb + ["--model", model, "--head", ft], stdin, env), np.float32)
    assert np.array_equal(got, overlay), "embed: exported model != base + overlay"
    m = BertModel.from_pretrained(exp).double().eval()
    H = m.config.hidden_size
    got = got.reshape(len(texts), MAX_LEN, H)
    ref = np.zeros_like(got, dtype=np.float64)
    with torch.no_grad():
        for i, seq in enumerate(ids):
            x = torch.tensor([seq])
            ref[i, :len(seq)] = m(input_ids=x, attention_mask=torch.ones_like(x),
                                  token_type_ids=torch.zeros_like(x)).last_hidden_state[0].numpy()
    with torch.no_grad():  # the exported weights are not the base's: transformers on the base differs
        b = BertModel.from_pretrained(model).double().eval()
        x = torch.tensor([ids[0]])
        moved = np.abs(b(input_ids=x).last_hidden_state[0].numpy() - ref[0, :len(ids[0])]).max()
    assert moved > 1e-2, "the exported model's hidden states equal the base's (%g)" % moved
    diff = np.abs(got - ref)
    bad = (diff > ATOL + RTOL * np.abs(ref)).sum() + np.isnan(got).sum()
    ratio = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    print("%s: K=%d, %d texts: max |tbert - transformers| %.3g, norm ratio %.3g, %d elements beyond atol %g + rtol %g"
          % (name, layers, len(texts), diff.max(), ratio, bad, ATOL, RTOL))
    return ids, ref.astype(np.float32), bad == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tbert", default=os.path.join(os.path.dirname(TESTS), "build", "cpu", "tbert"))
    ap.add_argument("--minilm", help="a MiniLM folder (e.g. ~/.cache/tbert/models/minilm) to check too")
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="tbert_export_golden.") as tmp:
        env = dict(os.environ, TBERT_CACHE=os.path.join(tmp, "cache"))
        ids, ref, good = check_model(a.tbert, os.path.join(TESTS, "models", "bert_tiny_shape"), 1, tmp, env)
        ok &= good
        padded = np.zeros((len(ids), MAX_LEN), np.int32)
        for i, s in enumerate(ids):
            padded[i, :len(s)] = s
        out = os.path.join(TESTS, "data", "finetune", "export_golden.npz")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        np.savez(out, ids=padded, lens=np.array([len(s) for s in ids], np.int32), hidden=ref, seed=np.int64(SEED),
                 layers=np.int32(1), max_len=np.int32(MAX_LEN))
        print("wrote", out)
        if a.minilm:
            ok &= check_model(a.tbert, a.minilm, 2, tmp, env)[2]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
