#!/usr/bin/env python3
"""Loads best/last.safetensors written by a tiny `tbert train` run (committed random model
tests/models/bert_tiny_shape, tiny TSV tests/data/head/tiny.tsv) with numpy + safetensors only and checks
tensor names, shapes, dtypes and metadata values; then recomputes the head's predictions in float64 numpy
from the exported features and the stored weights and compares them with metrics.json."""
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file
    from safetensors import safe_open
except ImportError as e:  # a test dependency (scripts/python-env.sh), not an external prerequisite: a failure
    print("FAIL: %s (run scripts/python-env.sh; ctest uses TBERT_PYTHON)" % e)
    sys.exit(1)

TESTS = os.environ.get("TBERT_TESTS_DIR", os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TBERT_BIN")
if not BIN or not os.path.exists(BIN):
    print("FAIL: TBERT_BIN (%s) is not a built tbert (run through ctest)" % BIN)
    sys.exit(1)
MODEL = os.path.join(TESTS, "models", "bert_tiny_shape")
DATA = os.path.join(TESTS, "data", "head", "tiny.tsv")
for fixture in (os.path.join(MODEL, "model.safetensors"), DATA):  # committed fixtures: missing is a failure
    if not os.path.exists(fixture):
        print("FAIL: committed fixture %s is missing" % fixture)
        sys.exit(1)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def gelu(a):
    erf = np.vectorize(math.erf)
    return 0.5 * a * (1.0 + erf(a / math.sqrt(2.0)))


def run(out, cache, *extra):
    env = dict(os.environ, TBERT_CACHE=cache)
    cmd = [BIN, "train", "--model", MODEL, "--data", DATA, "--out", out, "--max-len", "32", "--epochs", "5",
           "--batch", "8", "--seed", "7", "--quiet", "--json"] + list(extra)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr)
        sys.exit(1)
    return json.loads(p.stdout)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in (16, 0):
            out = os.path.join(tmp, "ck%d" % hidden)
            npy = os.path.join(tmp, "f%d.npy" % hidden)
            summary = run(out, os.path.join(tmp, "cache"), "--hidden", str(hidden), "--export-features", npy)
            best = load_file(os.path.join(out, "best.safetensors"))
            last = load_file(os.path.join(out, "last.safetensors"))
            with safe_open(os.path.join(out, "best.safetensors"), "np") as f:
                meta = f.metadata()
            with safe_open(os.path.join(out, "last.safetensors"), "np") as f:
                meta_last = f.metadata()
            recipe = json.loads(meta["recipe"])
            check(recipe["lexical_dim"] == 1024 and recipe["evidence"] == "none", "text recipe: lexical 1024, no evidence")
            D, O = 128 + recipe["lexical_dim"], 1
            names = ({"fc1.weight": (hidden, D), "fc1.bias": (hidden,), "fc2.weight": (O, hidden), "fc2.bias": (O,)}
                     if hidden else {"fc2.weight": (O, D), "fc2.bias": (O,)})
            check(set(best) == set(names), "best tensors %s" % sorted(best))
            for k, shp in names.items():
                check(best[k].shape == shp and best[k].dtype == np.float32, "best %s shape %s" % (k, best[k].shape))
                check(last["adam.m." + k].shape == shp and last["adam.v." + k].shape == shp, "adam moments of " + k)
                check(np.all(last["adam.v." + k] >= 0), "adam.v >= 0 for " + k)
            extra = {"adam.step", "train.rng"} | {"adam.%s.%s" % (mv, k) for mv in "mv" for k in names}
            check(set(last) == set(names) | extra, "last tensors %s" % sorted(last))
            split = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "split.tsv"))][1:]
            n_train = sum(1 for s in split if s[2] == "train")
            steps = 5 * math.ceil(n_train / 8)
            check(last["adam.step"].dtype == np.int64 and last["adam.step"].tolist() == [steps],
                  "adam.step %s, expected %d" % (last["adam.step"], steps))
            check(last["train.rng"].shape == (4,), "rng state shape")
            # metadata
            check(meta["format"] == "tbert-head" and meta["format_version"] == "1", "format")
            ver = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.split()[1]
            check(meta["tbert_version"] == ver, "tbert_version %s vs %s" % (meta["tbert_version"], ver))
            recipe = json.loads(meta["recipe"])
            check(recipe["recipe_version"] == 2 and "finetune" not in recipe and recipe["pooling"] == "mean" and recipe["max_len"] == 32, "recipe basics")
            check(recipe["model_hidden"] == 128 and recipe["layers"] == 2 and recipe["model_layers"] == 2, "recipe model fields")
            import hashlib
            vh = hashlib.sha256(open(os.path.join(MODEL, "vocab.txt"), "rb").read()).hexdigest()
            mh = hashlib.sha256(open(os.path.join(MODEL, "model.safetensors"), "rb").read()).hexdigest()
            check(recipe["vocab_hash"] == vh, "vocab hash")
            check(recipe["model_hash"] == mh, "model hash")
            check(json.loads(meta["labels"]) == ["ham", "spam"] and recipe["labels"] == ["ham", "spam"], "labels")
            check(meta["positive"] == "spam" and recipe["positive"] == "spam", "positive")
            check(meta["seed"] == "7", "seed")
            check(len(meta["data_hash"]) == 64, "data hash")
            check(meta["epoch"] == "5" and meta_last["epoch"] == "5", "epoch")
            thr = float(meta["threshold"])
            check(abs(thr - recipe["threshold"]) < 1e-7 and abs(thr - summary["threshold"]) < 1e-6, "threshold agrees")
            head = json.loads(meta["head"])
            check(head == {"in_dim": D, "hidden": hidden, "n_classes": 2, "binary": True, "dropout": head["dropout"]},
                  "head meta %s" % head)
            metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
            check(json.loads(meta["metrics"])["test"]["accuracy"] == metrics["test"]["accuracy"], "metrics in metadata")
            # recompute predictions from the features and the stored weights
            X = np.load(npy).astype(np.float64)
            check(X.shape == (40, D), "features shape %s" % (X.shape,))
            # the lexical block is log1p counts, L2-normalised per row
            lex = X[:, 128:]
            check(np.all(lex >= 0) and np.allclose(np.linalg.norm(lex, axis=1), 1.0, atol=1e-6), "lexical block L2 rows")
            h = X
            if hidden:
                h = gelu(X @ best["fc1.weight"].astype(np.float64).T + best["fc1.bias"])
            z = (h @ best["fc2.weight"].astype(np.float64).T + best["fc2.bias"])[:, 0]
            p = 1 / (1 + np.exp(-z))
            labels = np.array([s[3] == "spam" for s in split])
            test = np.array([s[2] == "test" for s in split])
            acc = np.mean((p[test] >= thr) == labels[test])
            check(abs(acc - metrics["test"]["accuracy"]) < 1e-9, "test accuracy numpy %.4f vs tbert %.4f" %
                  (acc, metrics["test"]["accuracy"]))
            # the test loss (mean BCE) at float64 agrees with tbert's to float32 precision
            pt, yt = p[test], labels[test]
            loss = -np.mean(yt * np.log(pt) + (1 - yt) * np.log(1 - pt))
            check(abs(loss - metrics["test"]["loss"]) < 1e-5, "test loss numpy %.6f vs tbert %.6f" % (loss, metrics["test"]["loss"]))
    if failures:
        print("%d failure(s)" % len(failures))
        sys.exit(1)
    print("ok")


main()
