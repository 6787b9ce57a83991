#!/usr/bin/env python3
"""The sparse row format keeps what the dense layout gave (tests/data/compat, made by the parent 63e3c82):
1. a head trained before the change loads and scores the committed messages exactly as it did (the score
   records, text for text);
2. the same training run today builds the same feature rows (sparse blocks bit for bit; dense block within
   the encoder tolerance atol 1e-4 + rtol 1e-4 of CONVENTIONS, bit for bit unless the encoder changed) and
   trains a head whose weights equal the parent's within ||new - old|| / ||old|| < 1e-4 (the sparse head
   sums in another order than the dense GEMM: float rounding only);
3. one message gives the same rows through train and through score --export-features: the sparse blocks
   byte for byte and the dense block byte for byte (CPU, the same batch: the CPU encoder's bits depend on
   which documents share a batch, so score runs the training documents in one batch as train does);
4. the row store: a second training run with one more message encodes that one message only.
Needs numpy + safetensors (scripts/python-env.sh; a failure without them, not a skip)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:  # a test dependency (scripts/python-env.sh), not an external prerequisite: a failure
    print("FAIL: %s (run scripts/python-env.sh; ctest uses TBERT_PYTHON)" % e)
    sys.exit(1)

TESTS = os.environ.get("TBERT_TESTS_DIR", os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TBERT_BIN")
if not BIN or not os.path.exists(BIN):
    print("FAIL: TBERT_BIN not set")
    sys.exit(1)
MODEL = os.path.join(TESTS, "models", "bert_tiny_shape")
COMPAT = os.path.join(TESTS, "data", "compat")
M = os.path.join(TESTS, "data", "mail")
HAM = [os.path.join(M, f) for f in ("alternative.eml", "nested.eml", "crlf.eml")]
SPAM = [os.path.join(M, f) for f in ("html_only.eml", "qp_latin1.eml", "rfc2047.eml")]
SCORED = HAM + SPAM + [os.path.join(M, "utf8_base64.eml"), os.path.join(M, "three.mbox")]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(args, env):
    p = subprocess.run([BIN] + args, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        print("FAIL: tbert", " ".join(args), "->", p.returncode, p.stderr)
        sys.exit(1)
    return p


def csr_dense(z):
    n, w = (int(v) for v in z["shape"])
    s = np.zeros((n, w), np.float32)
    for i in range(n):
        a, b = z["indptr"][i], z["indptr"][i + 1]
        s[i, z["indices"][a:b]] = z["data"][a:b]
    return s


tmp = tempfile.mkdtemp(prefix="tbert_compat_")
env = dict(os.environ, TBERT_CACHE=os.path.join(tmp, "cache"))
try:
    # 1. the parent's head scores as it did
    out = run(["score", "--model", MODEL, "--head", os.path.join(COMPAT, "head_v1"), "--threads", "1", "--quiet"] + SCORED, env).stdout
    want = open(os.path.join(COMPAT, "scores_v1.jsonl")).read().replace("MAIL/", M + "/")
    check(out.strip() == want.strip(), "score with the parent's head differs:\n%s\nwant\n%s" % (out, want))

    # 2. the parent's training run, today
    feats = os.path.join(tmp, "train.npz")
    run(["train", "--model", MODEL, "--out", os.path.join(tmp, "head"), "--max-len", "32", "--epochs", "3", "--val-fraction", "0",
         "--quiet", "--threads", "1", "--ham"] + HAM + ["--spam"] + SPAM + ["--export-features", feats], env)
    old = np.load(os.path.join(COMPAT, "features_v1.npz"))
    new = np.load(feats)
    check(bytes(new["format"]) == b"csr" and list(new["shape"]) == list(old["shape"]), "shape/format %s" % new["shape"])
    check(list(new["block_start"]) == [0, 30522, 30522 + 1024, 30522 + 1024 + 16384], "blocks %s" % new["block_start"])
    check(list(new["labels"]) == [0, 0, 0, 1, 1, 1], "labels %s" % new["labels"])
    for k in ("indptr", "indices", "data"):
        check(new[k].tobytes() == old[k].astype(new[k].dtype).tobytes(), "sparse %s differs from the parent's" % k)
    d_old, d_new = old["dense"], new["dense"]
    check(d_new.shape == d_old.shape, "dense shape")
    bad = np.abs(d_new - d_old) > 1e-4 + 1e-4 * np.abs(d_old)
    check(not bad.any() and np.isfinite(d_new).all(), "dense block vs parent: %d elements out of tolerance" % bad.sum())
    print("dense block vs parent: bit-identical" if d_new.tobytes() == d_old.tobytes()
          else "dense block vs parent: max |diff| %.3g" % np.abs(d_new - d_old).max())
    w_old = load_file(os.path.join(COMPAT, "head_v1", "best.safetensors"))
    w_new = load_file(os.path.join(tmp, "head", "best.safetensors"))
    for k in w_old:
        a, b = w_old[k].astype(np.float64), w_new[k].astype(np.float64)
        rel = np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)
        print("head %s: ||new - parent|| / ||parent|| = %.2e" % (k, rel))
        check(rel < 1e-4, "head tensor %s: relative difference %.3g" % (k, rel))

    # 3. train and score give the same rows (same batch: all six in one)
    sfeats = os.path.join(tmp, "score.npz")
    run(["score", "--model", MODEL, "--head",
         os.path.join(tmp, "head"), "--threads", "1", "--quiet", "--out", os.path.join(tmp, "s.jsonl"), "--export-features",
         sfeats] + HAM + SPAM, env)
    s = np.load(sfeats)
    for k in ("indptr", "indices", "data", "dense", "shape", "block_start"):
        check(s[k].tobytes() == new[k].tobytes(), "train and score rows differ in %s" % k)
    check("labels" not in s.files, "score's rows have no labels")
    # and one message alone, at batch 1: its sparse row equals its row in the batch, bit for bit
    one = os.path.join(tmp, "one.npz")
    run(["score", "--model", MODEL, "--head", os.path.join(tmp, "head"), "--threads", "1", "--batch", "1", "--quiet", "--out",
         os.path.join(tmp, "o.jsonl"), "--export-features", one, SPAM[1]], env)
    o = np.load(one)
    check(np.array_equal(csr_dense(o)[0].view(np.uint32), csr_dense(new)[4].view(np.uint32)), "one message: sparse row differs")
    check(np.allclose(o["dense"][0], new["dense"][4], atol=1e-6, rtol=1e-5), "one message: dense row out of tolerance")
    # --export-features is refused with --resume, and wants .npz
    for extra in (["--resume", "--export-features", one], ["--export-features", os.path.join(tmp, "x.npy")]):
        p = subprocess.run([BIN, "score", "--model", MODEL, "--head", os.path.join(tmp, "head"), "--out",
                            os.path.join(tmp, "r.jsonl")] + extra + [SPAM[1]], env=env, capture_output=True, text=True)
        check(p.returncode == 2 and p.stderr.count("\n") == 1, "score %s: exit %d, %r" % (extra, p.returncode, p.stderr))

    # 4. the store: one more message, one encoding
    env4 = dict(env, TBERT_CACHE=os.path.join(tmp, "cache4"))
    a = run(["train", "--model", MODEL, "--out", os.path.join(tmp, "h5"), "--max-len", "32", "--epochs", "1", "--val-fraction",
             "0", "--threads", "1", "--ham"] + HAM + ["--spam"] + SPAM[:2], env4).stderr
    p6 = run(["train", "--model", MODEL, "--out", os.path.join(tmp, "h6"), "--max-len", "32", "--epochs", "1", "--val-fraction",
              "0", "--threads", "1", "--json", "--ham"] + HAM + ["--spam"] + SPAM, env4)
    b = p6.stderr
    check(json.loads(p6.stdout)["docs_encoded"] == 1, "--json docs_encoded: %s" % p6.stdout)
    check("features: 5 documents, 5 encoded, 0 from the store" in a, "first run: %s" % a)
    check("features: 6 documents, 1 encoded, 5 from the store" in b, "second run: %s" % b)
    store = os.path.join(tmp, "cache4", "store")
    modes = set()
    for root, dirs, files in os.walk(store):
        modes |= {oct(os.stat(os.path.join(root, d)).st_mode & 0o777) for d in dirs}
        modes |= {oct(os.stat(os.path.join(root, f)).st_mode & 0o777) for f in files}
    check(modes == {"0o700", "0o600"}, "store modes %s" % modes)
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("ok")
