#!/usr/bin/env python3
"""Development protocol for the mail recipe: choose features, threshold method and rule WITHOUT looking at the
benchmark's test part (issue 7). Everything here runs inside the half split's training part (even positions of
easy_ham, easy_ham_2, hard_ham, spam, spam_2, each folder sorted: 2,075 ham + 948 spam).

Protocol: an outer stratified 4-fold cross-validation of those 3,023 messages, repeated with 2 seeds (so every
training-half ham is tested twice: 4,150 ham tests). In each outer fold the method under test sees only the
other three quarters, trains a head the way src/train.c does (linear, AdamW lr 1e-2, batch 32, 30 epochs, BCE,
best epoch by held-out loss; a PyTorch replica) and picks its threshold; the outer quarter is then scored.
Reported: false positives and negatives summed over the 8 outer folds, spam F1, and the spam recall at zero
false positives with an oracle cut (how well the features rank, whatever the threshold rule).

Methods:
  M0  20% stratified validation split: best epoch and threshold on it (tbert before cross-fitting).
  M2  5-fold cross-fitting (tbert's --cv 5): threshold on every example's out-of-fold score, epoch count the
      median of the folds' best epochs, the kept head trained on all of the method's data.
  M3  as M2 but the kept head is the average of the 5 fold heads (no refit).

Input: the feature matrix of all 6,046 messages in the order above, as `tbert train --export-features` writes
it (any recipe), e.g.
  ls -d SA/easy_ham/* SA/easy_ham_2/* SA/hard_ham/* | sort-by-folder > ham.txt; (same for spam, spam_2)
  tbert train --model minilm --ham $(cat ham.txt) --spam $(cat spam.txt) --out /tmp/x --epochs 1 \\
      --export-features feats.npy
and the block layout (`--blocks dense:384,lex:30522,ev:1024,hdr:16384`). Variants reweight blocks
(`--variant "hdr=4"`, `"hdr=0"`, `"dense=0;lex=1;ev=2"`: a factor per block; 0 drops it).

Usage: mail_dev_cv.py --features feats.npy --blocks dense:384,lex:30522,ev:1024,hdr:16384 \\
          [--method M0|M2|M3] [--variant V]... [--seeds 0,1]
Needs numpy and torch (a peer/research script; never part of the product).
"""
import argparse
import time

import numpy as np
import torch

N_HAM, N_SPAM = 4150, 1896
RULES = [(0.0, 0.9, None), (0.003, 0.9, None), (0.003, 0.8, None), (0.003, 0.8, 4.0), (0.003, 0.8, 5.0)]


def stratified_split(idx, y, frac, rng):
    va = []
    for c in (0, 1):
        ic = idx[y[idx] == c].copy()
        rng.shuffle(ic)
        va.extend(ic[:int(round(len(ic) * frac))])
    va = np.array(sorted(va))
    return np.setdiff1d(idx, va), va


def kfold(idx, y, k, rng):
    folds = [[] for _ in range(k)]
    for c in (0, 1):
        ic = idx[y[idx] == c].copy()
        rng.shuffle(ic)
        for j, i in enumerate(ic):
            folds[j % k].append(i)
    return [np.array(sorted(f)) for f in folds]


def fit(X, y, tr, va, epochs, lr, seed):
    """src/train.c's linear head: uniform(+-1/sqrt(D)) init, AdamW (wd 0), batch 32, BCE, best epoch by val loss."""
    g = torch.Generator().manual_seed(seed)
    D = X.shape[1]
    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr].astype(np.float32))
    w = ((torch.rand(D, generator=g) * 2 - 1) / D ** 0.5).requires_grad_()
    b = ((torch.rand(1, generator=g) * 2 - 1) / D ** 0.5).requires_grad_()
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=0.0)
    Xva = torch.from_numpy(X[va]) if va is not None else None
    yva = torch.from_numpy(y[va].astype(np.float32)) if va is not None else None
    best = (np.inf, None, None, 0)
    for e in range(epochs):
        perm = torch.randperm(len(tr), generator=g)
        for i in range(0, len(tr), 32):
            j = perm[i:i + 32]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(Xtr[j] @ w + b, ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if Xva is not None:
            with torch.no_grad():
                vl = torch.nn.functional.binary_cross_entropy_with_logits(Xva @ w + b, yva).item()
            if vl < best[0]:
                best = (vl, w.detach().clone(), b.detach().clone(), e + 1)
    if Xva is None:
        best = (0.0, w.detach().clone(), b.detach().clone(), epochs)
    return best[1], best[2], best[3]


def score(X, idx, w, b):
    with torch.no_grad():
        return (torch.from_numpy(X[idx]) @ w + b).numpy()


def threshold(s, yy, max_fpr, max_recall, margin=None):
    """tbert_threshold_choose("fpr=X,recall=R[,margin=M]") on logits: the lowest cut with at most X of the
    negatives above it, raised to the (1 - R) quantile of the positives' scores, that raise capped at M
    above the cut itself."""
    o = np.argsort(-s, kind="stable")
    s2, p = s[o], yy[o]
    N = len(p) - p.sum()
    fp, t, i, n = 0, None, 0, len(s2)
    while i < n:
        j = i
        while j < n and s2[j] == s2[i]:
            fp += p[j] == 0
            j += 1
        if fp / N > max_fpr:
            break
        t = s2[j] if j < n else s2[-1] - 1e-6
        i = j
    if t is None:
        t = s2[0] + 1e-6
    q = np.quantile(s[yy == 1], 1 - max_recall)
    if margin is not None:
        q = min(q, t + margin)
    return max(t, q)


def method(name, X, y, idx, seed, lr=1e-2, epochs=30):
    """returns (w, b, held-out scores, their labels) for the method's data idx"""
    rng = np.random.default_rng(seed)
    if name == "M0":
        tr, va = stratified_split(idx, y, 0.2, rng)
        w, b, _ = fit(X, y, tr, va, epochs, lr, seed)
        return w, b, score(X, va, w, b), y[va]
    folds = kfold(idx, y, 5, rng)
    oof = np.zeros(len(y), np.float32)
    bes, ws, bs = [], [], []
    for k, f in enumerate(folds):
        w, b, be = fit(X, y, np.setdiff1d(idx, f), f, epochs, lr, seed + 100 * (k + 1))
        oof[f] = score(X, f, w, b)
        bes.append(be)
        ws.append(w)
        bs.append(b)
    if name == "M2":
        w, b, _ = fit(X, y, idx, None, int(np.median(bes)), lr, seed)
    else:
        w, b = sum(ws) / len(ws), sum(bs) / len(bs)
    return w, b, oof[idx], y[idx]


def variant_matrix(F, blocks, spec):
    opts = dict(kv.split("=") for kv in spec.split(";") if "=" in kv)
    parts, at = [], 0
    for name, dim in blocks:
        f = float(opts.get(name, 1))
        if f:
            parts.append(F[:, at:at + dim] * f)
        at += dim
    return np.ascontiguousarray(np.hstack(parts).astype(np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True)
    ap.add_argument("--blocks", required=True, help="name:dim,... in column order")
    ap.add_argument("--method", default="M2", choices=["M0", "M2", "M3"])
    ap.add_argument("--variant", action="append", default=[], help="block factors, e.g. hdr=4;dense=0")
    ap.add_argument("--seeds", default="0,1")
    a = ap.parse_args()
    torch.set_num_threads(2)
    F = np.load(a.features, mmap_mode="r")
    assert F.shape[0] == N_HAM + N_SPAM, F.shape
    blocks = [(n, int(d)) for n, d in (x.split(":") for x in a.blocks.split(","))]
    assert sum(d for _, d in blocks) == F.shape[1], (blocks, F.shape)
    y = np.array([0] * N_HAM + [1] * N_SPAM)
    idx = np.arange(0, len(y), 2)  # the half split's training part
    seeds = [int(s) for s in a.seeds.split(",")]
    print(f"| method | variant | recall at 0 FP (oracle), mean / min | rule | FP / ham tests | FN | spam F1 |")
    print("|---|---|---|---|---|---|---|")
    for v in a.variant or [""]:
        X = variant_matrix(F, blocks, v)
        t0 = time.time()
        res = {r: [0, 0, 0] for r in RULES}
        r0, nham = [], 0
        for s in seeds:
            for f, te in enumerate(kfold(idx, y, 4, np.random.default_rng(1000 + s))):
                w, b, sv, yv = method(a.method, X, y, np.setdiff1d(idx, te), s * 10 + f)
                st, yt = score(X, te, w, b), y[te]
                nham += int((yt == 0).sum())
                r0.append(float((st[yt == 1] > st[yt == 0].max()).mean()))
                for r in RULES:
                    pred = st > threshold(sv, yv, *r)
                    res[r][0] += int((pred & (yt == 0)).sum())
                    res[r][1] += int((~pred & (yt == 1)).sum())
                    res[r][2] += int((pred & (yt == 1)).sum())
        for r in RULES:
            fp, fn, tp = res[r]
            rule = f"fpr={r[0]},recall={r[1]}" + (f",margin={r[2]:g}" if r[2] is not None else "")
            print(f"| {a.method} | {v or 'as exported'} | {np.mean(r0):.3f} / {np.min(r0):.3f} | {rule} "
                  f"| {fp} / {nham} | {fn} | {2 * tp / (2 * tp + fp + fn):.4f} |", flush=True)
        print(f"<!-- {v or 'as exported'}: {time.time() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
