#!/usr/bin/env python3
"""Mail accuracy and throughput: tbert (train --ham/--spam, score) against bogofilter, in the same run.

Splits (as ../shared/notes/mail-baselines.md defines them):
  half  files of easy_ham, easy_ham_2, hard_ham (ham) then spam, spam_2 (spam), each folder sorted by name,
        concatenated; even positions train, odd positions test.
  time  train on easy_ham + spam, test on easy_ham_2 + spam_2 (a stand-in for mail from another year).
Spam is the positive class; F1 and false-positive rate on the test part. bogofilter is measured at its two
operating points (its own Spam verdict with Unsure counted as ham; spamicity >= 0.5).

Usage: benchmarks/bench_mail.py --tbert build/cpu/tbert [--split half|time|both] [--model minilm]
       [--train-args "..."] [--score-args "..."] [--work DIR]
--train-args may be repeated: each set is one tbert row (e.g. the default recipe and "--finetune 2" side by side).
Prints one line per split on stderr as it goes, then a Markdown table (F1, FPR, FP and FN counts, times) and
the spam recall read off each system's test ROC at 0, 2 and 10 false positives (bogofilter by spamicity).
The tbert head and scores of each split stay in the work folder (head-SPLIT/, scores-SPLIT.jsonl).
Throughput (messages/s, MB/s beside bogofilter -B): benchmarks/bench_mail_throughput.sh.
Standard library only; needs bogofilter (Debian) on PATH. Fails loudly when a peer cannot run.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HAM = ["easy_ham", "easy_ham_2", "hard_ham"]
SPAM = ["spam", "spam_2"]


def corpus_root(args):
    root = args.corpus or os.environ.get("TBERT_SHARED_DATA", "")
    root = os.path.join(root, "mail", "spamassassin") if root else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mail", "spamassassin")
    if not os.path.isdir(root):
        sys.exit(f"bench_mail: corpus not found at {root}")
    return os.path.abspath(root)


def folder_files(root, name):
    d = os.path.join(root, name)
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f))]


def make_split(root, split):
    if split == "half":
        ham = [f for n in HAM for f in folder_files(root, n)]
        spam = [f for n in SPAM for f in folder_files(root, n)]
        allf = [(f, 0) for f in ham] + [(f, 1) for f in spam]
        train = allf[0::2]
        test = allf[1::2]
    else:
        train = [(f, 0) for f in folder_files(root, "easy_ham")] + [(f, 1) for f in folder_files(root, "spam")]
        test = [(f, 0) for f in folder_files(root, "easy_ham_2")] + [(f, 1) for f in folder_files(root, "spam_2")]
    return train, test


def f1_fpr(labels, preds):
    tp = sum(1 for y, p in zip(labels, preds) if y and p)
    fp = sum(1 for y, p in zip(labels, preds) if not y and p)
    fn = sum(1 for y, p in zip(labels, preds) if y and not p)
    neg = sum(1 for y in labels if not y)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return f1, fp / neg if neg else 0.0, fp, fn


def bogofilter(train, test, work):
    if not shutil.which("bogofilter"):
        sys.exit("bench_mail: bogofilter is not installed (apt-get install bogofilter); refusing to report without the peer")
    db = os.path.join(work, "bogodb")
    shutil.rmtree(db, ignore_errors=True)
    os.makedirs(db)
    t0 = time.time()
    for label, flag in ((0, "-n"), (1, "-s")):
        files = [f for f, y in train if y == label]
        for i in range(0, len(files), 500):
            subprocess.run(["bogofilter", "-d", db, flag, "-B"] + files[i:i + 500], check=True)
    t_train = time.time() - t0
    verdict, spamicity = {}, {}
    t0 = time.time()
    files = [f for f, _ in test]
    for i in range(0, len(files), 500):
        r = subprocess.run(["bogofilter", "-d", db, "-v", "-B"] + files[i:i + 500], capture_output=True, text=True)
        if r.returncode not in (0, 1, 2):
            sys.exit(f"bench_mail: bogofilter failed: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            path, _, rest = line.partition(" X-Bogosity: ")
            v = rest.split(",")[0].strip()
            s = float(rest.split("spamicity=")[1].split(",")[0])
            verdict[path], spamicity[path] = v, s
    labels = [y for _, y in test]
    t_test = time.time() - t0
    own = f1_fpr(labels, [verdict[f] == "Spam" for f, _ in test])
    half = f1_fpr(labels, [spamicity[f] >= 0.5 for f, _ in test])
    return own, half, t_train, t_test, [spamicity[f] for f, _ in test]


def roc_recall(labels, scores, k):
    """Spam recall read off the test ROC with at most k false positives: the cut is the (k+1)-th highest ham
    score and spam counts only strictly above it (ties go against the system)."""
    ham = sorted((s for s, y in zip(scores, labels) if not y), reverse=True)
    cut = ham[k] if k < len(ham) else float("-inf")
    spam = [s for s, y in zip(scores, labels) if y]
    return sum(1 for s in spam if s > cut) / len(spam)


def tbert(args, train_args, train, test, work, split, tag):
    out = os.path.join(work, "head-" + split + tag)
    shutil.rmtree(out, ignore_errors=True)
    ham = [f for f, y in train if y == 0]
    spam = [f for f, y in train if y == 1]
    cmd = [args.tbert, "train", "--model", args.model, "--out", out, "--ham"] + ham + ["--spam"] + spam
    cmd += shlex.split(train_args)
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_train = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"bench_mail: tbert train failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    scores = os.path.join(work, "scores-" + split + tag + ".jsonl")
    if os.path.exists(scores):
        os.unlink(scores)
    cmd = [args.tbert, "score", "--model", args.model, "--head", out, "--out", scores] + [f for f, _ in test]
    cmd += shlex.split(args.score_args)
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_test = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"bench_mail: tbert score failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    pred, score = {}, {}
    with open(scores) as fh:
        for line in fh:
            rec = json.loads(line)
            pred[rec["source"]] = rec.get("label") == "spam"
            score[rec["source"]] = rec.get("score")
    missing = [f for f, _ in test if f not in pred]
    if missing:
        sys.exit(f"bench_mail: tbert score gave no record for {len(missing)} messages, e.g. {missing[0]}")
    labels = [y for _, y in test]
    return f1_fpr(labels, [pred[f] for f, _ in test]), t_train, t_test, [score[f] for f, _ in test]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tbert", required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--split", default="both", choices=["half", "time", "both"])
    ap.add_argument("--train-args", action="append", default=None,
                    help="tbert train options; repeat to compare several tbert configurations in one run")
    ap.add_argument("--score-args", default="")
    ap.add_argument("--corpus", default="")
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    root = corpus_root(args)
    work = args.work or tempfile.mkdtemp(prefix="tbert_bench_mail_")
    os.makedirs(work, exist_ok=True)
    train_args = args.train_args or [""]
    rows, roc = [], []
    for split in (["half", "time"] if args.split == "both" else [args.split]):
        train, test = make_split(root, split)
        labels = [y for _, y in test]
        own, half, bt, bs, bscores = bogofilter(train, test, work)
        n = len(test)
        rows.append((split, "bogofilter 1.2.5, own Spam verdict", own, bt, bs, n))
        rows.append((split, "bogofilter 1.2.5, spamicity >= 0.5", half, bt, bs, n))
        roc.append((split, "bogofilter 1.2.5 (spamicity)", [roc_recall(labels, bscores, k) for k in (0, 2, 10)]))
        for i, ta in enumerate(train_args):
            tm, tt, ts, tscores = tbert(args, ta, train, test, work, split, "" if i == 0 else f"-{i}")
            name = f"tbert ({args.model} {ta or 'default mail recipe'})"
            rows.append((split, name, tm, tt, ts, n))
            roc.append((split, name, [roc_recall(labels, tscores, k) for k in (0, 2, 10)]))
            print(f"bench_mail: {split}: bogofilter own {own[0]:.3f}/{own[2]} FP, >=0.5 {half[0]:.3f}/{half[2]} FP; "
                  f"{name} {tm[0]:.4f} F1, {tm[2]} FP, {tm[3]} FN", file=sys.stderr, flush=True)
    print(f"\n| split | system | spam F1 | FPR | FP | FN | train s | test s | test msgs/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split, name, m, t1, t2, n in rows:
        print(f"| {split} | {name} | {m[0]:.3f} | {100 * m[1]:.2f}% | {m[2]} | {m[3]} | {t1:.1f} | {t2:.1f} | {n / t2:.0f} |")
    print("\nSpam recall read off each system's test ROC (the cut chosen on the test scores: an upper bound of each"
          " curve, not an operating point):\n")
    print("| split | system | recall @ 0 FP | @ 2 FP | @ 10 FP |")
    print("|---|---|---|---|---|")
    for split, name, r in roc:
        print(f"| {split} | {name} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} |")


if __name__ == "__main__":
    main()
