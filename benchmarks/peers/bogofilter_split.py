#!/usr/bin/env python3
"""Peer for `tbert train`: bogofilter (Debian) trained and tested on the SAME split as a tbert run
(CKPT_DIR/split.tsv, whose 'line' column names the data file's lines). Trains on train+val, classifies the
test rows; reports accuracy and spam F1 with bogofilter's own verdict (Unsure counted as ham) and with
spamicity >= 0.5.  bogofilter_split.py DATA.tsv SPLIT.tsv [--csv-header]"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time


def read_table(path):
    lines = {}
    with open(path, "rb") as f:
        tabbed = b"\t" in f.readline()
    if not tabbed:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            r = csv.reader(f)
            for i, row in enumerate(r, 1):
                lines[r.line_num] = row[1] if len(row) > 1 else ""
    else:
        with open(path, "rb") as f:
            for i, l in enumerate(f, 1):
                l = l.rstrip(b"\n").rstrip(b"\r")
                lines[i] = l.split(b"\t", 1)[1].decode("utf-8", "replace") if b"\t" in l else ""
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("split")
    a = ap.parse_args()
    texts = read_table(a.data)
    rows = [l.rstrip("\n").split("\t") for l in open(a.split)][1:]
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "db")
        os.mkdir(db)
        files = {}
        for r in rows:
            p = os.path.join(tmp, "m%s" % r[0])
            with open(p, "w") as f:  # a minimal message: the text as the body (bogofilter reads headers + body)
                f.write("Subject: \n\n" + texts[int(r[1])] + "\n")
            files[r[0]] = p
        t0 = time.time()
        for lab, flag in (("spam", "-s"), ("ham", "-n")):
            fl = [files[r[0]] for r in rows if r[2] != "test" and r[3] == lab]
            for i in range(0, len(fl), 500):
                subprocess.run(["bogofilter", "-d", db, flag, "-B"] + fl[i:i + 500], check=True)
        test = [r for r in rows if r[2] == "test"]
        out = {}
        for i in range(0, len(test), 500):
            chunk = test[i:i + 500]
            res = subprocess.run(["bogofilter", "-d", db, "-T", "-B"] + [files[r[0]] for r in chunk],
                                 capture_output=True, text=True)
            for r, line in zip(chunk, res.stdout.splitlines()):
                parts = line.split()
                out[r[0]] = (parts[-2], float(parts[-1]))
        dt = time.time() - t0
        for name, pred in (("own verdict (Unsure=ham)", lambda v: v[0] == "S"), ("spamicity>=0.5", lambda v: v[1] >= 0.5)):
            tp = fp = fn = tn = 0
            for r in test:
                p, t = pred(out[r[0]]), r[3] == "spam"
                tp += p and t
                fp += p and not t
                fn += (not p) and t
                tn += (not p) and not t
            print("bogofilter %-26s trained on train+val (%5d rows): test acc %.4f  F1(spam) %.4f  FP %d  FN %d  (%.1f s)" %
                  (name, len(rows) - len(test), (tp + tn) / len(test), 2 * tp / (2 * tp + fp + fn), fp, fn, dt))


main()
