#!/usr/bin/env python3
"""Peer for `tbert train`: scikit-learn heads on the SAME tbert features (exported with
`tbert train --export-features F.npy`) and the SAME split (CKPT_DIR/split.tsv).
Prints one line per model: name, rows it trained on, test accuracy, positive-class F1, FP, FN.
  sklearn_head.py FEATURES.npy SPLIT.tsv [--positive spam]"""
import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("features")
    ap.add_argument("split")
    ap.add_argument("--positive", default="spam")
    ap.add_argument("--mlp", action="store_true", help="also an MLP(512) (slow on wide features)")
    a = ap.parse_args()
    X = np.load(a.features)
    rows = [l.rstrip("\n").split("\t") for l in open(a.split)][1:]
    sp = np.array([r[2] for r in rows])
    y = np.array([r[3] == a.positive for r in rows])
    assert len(rows) == X.shape[0], "split and features disagree"
    te = sp == "test"
    fits = [("train", sp == "train"), ("train+val", (sp == "train") | (sp == "val"))]
    models = [("logreg C=1", lambda: LogisticRegression(C=1.0, max_iter=5000))]
    if a.mlp:
        models.append(("MLP(512) relu adam", lambda: MLPClassifier((512,), random_state=0, max_iter=300)))
    for name, make in models:
        for fname, tr in fits:
            t0 = time.time()
            m = make().fit(X[tr], y[tr])
            p = m.predict(X[te])
            t = y[te]
            tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
            print("sklearn %-20s trained on %-9s (%5d rows): test acc %.4f  F1(%s) %.4f  FP %d  FN %d  (%.1f s)" %
                  (name, fname, int(tr.sum()), (p == t).mean(), a.positive, 2 * tp / (2 * tp + fp + fn), fp, fn,
                   time.time() - t0))


main()
