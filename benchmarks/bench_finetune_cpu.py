#!/usr/bin/env python3
"""Fine-tuning speed on the CPU (issue 15): `tbert train --finetune K` against PyTorch eager doing the same work,
in one run, alternating rounds.

The work: the half split's training part (benchmarks/bench_mail.py: 3,023 SpamAssassin messages), each message's
text = decoded Subject + first text/plain part (Python's email package, whitespace runs folded to one space), the
same TSV for both systems; first max_len tokens; the frozen lower layers run once per message and are cached
(bf16); then the top K layers + a linear head on the L2-normalised mean pooling train for E epochs, batch B,
AdamW, warm-up + linear decay, clipping. tbert runs with the text recipe stripped to the same function
(`--lexical-dim 0 --hidden 0 --normalize`), one fit (`--cv 0 --val-fraction 0 --test-fraction 0`), a fresh
TBERT_CACHE each round (so its row store does not skip the frozen pass). Both are timed from process start to
exit (tokenization, the cached pass and the epochs included). tokens per second = tokens of the training set
x epochs / wall seconds; the token count is measured on each side (`tbert tokenize` and the peer's tokenizer;
they must agree, as the tokenizers are identical).

Usage: benchmarks/bench_finetune_cpu.py --tbert build/cpu/tbert [--model DIR] [--rounds 1] [--k 2] [--epochs 4]
       [--batch 32] [--max-len 128] [--threads 2] [--limit N] [--tbert-args "..."] [--peer-python PY]
Prints a line per run on stderr and a Markdown table on stdout. Fails loudly when a peer cannot run.
"""
import argparse
import email
import email.policy
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_mail  # noqa: E402


def message_text(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.compat32)
    subject = str(msg.get("Subject", "") or "")
    body = ""
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True) or b""
            body = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
            break
    text = re.sub(r"\s+", " ", (subject + " " + body)).strip()
    return text or "(empty)"


def timed(cmd, env=None):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if r.returncode != 0:
        sys.exit(f"bench_finetune_cpu: {cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r, wall, cpu, r1.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tbert", required=True)
    ap.add_argument("--model", default=os.path.join(os.environ.get("TBERT_CACHE", os.path.expanduser("~/.cache/tbert")),
                                                    "models", "minilm"))
    ap.add_argument("--corpus", default="")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N training messages only (a quick check)")
    ap.add_argument("--tbert-args", default="")
    ap.add_argument("--peer-python", default=os.environ.get("TBERT_GOLDEN_PYTHON", "/opt/golden/bin/python"))
    args = ap.parse_args()
    if not os.path.exists(args.peer_python):
        sys.exit(f"bench_finetune_cpu: peer python {args.peer_python} not found (torch + transformers needed); "
                 "refusing to report without the peer")
    args.corpus = args.corpus or os.environ.get("TBERT_SHARED_DATA", "")
    train, _ = bench_mail.make_split(bench_mail.corpus_root(args), "half")
    if args.limit:
        train = train[: args.limit]
    work = tempfile.mkdtemp(prefix="bench_ft_")
    tsv = os.path.join(work, "train.tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        for path, y in train:
            f.write(("spam" if y else "ham") + "\t" + message_text(path) + "\n")
    texts = [line.split("\t", 1)[1] for line in open(tsv, encoding="utf-8").read().splitlines()]
    tok = subprocess.run([args.tbert, "tokenize", "--model", args.model, "--max-len", str(args.max_len)],
                         input="\n".join(texts) + "\n", capture_output=True, text=True, check=True)
    tbert_tokens = sum(len(line.split()) for line in tok.stdout.splitlines())

    rows = []
    for rnd in range(args.rounds):
        for system in ("tbert", "pytorch"):
            if system == "tbert":
                cache = tempfile.mkdtemp(prefix="cache_", dir=work)
                os.symlink(os.path.dirname(os.path.abspath(args.model)), os.path.join(cache, "models"))
                env = dict(os.environ, TBERT_CACHE=cache)
                out = os.path.join(work, f"head{rnd}")
                cmd = [args.tbert, "train", "--data", tsv, "--input-format", "tsv", "--header", "no",
                       "--text-col", "2", "--label-col", "1", "--model", args.model, "--out", out,
                       "--recipe", "text", "--lexical-dim", "0", "--hidden", "0", "--normalize",
                       "--max-len", str(args.max_len), "--batch", str(args.batch), "--finetune", str(args.k),
                       "--finetune-epochs", str(args.epochs), "--cv", "0", "--val-fraction", "0",
                       "--test-fraction", "0", "--threads", str(args.threads), "--device", "cpu", "--json",
                       "--quiet"] + shlex.split(args.tbert_args)
                r, wall, cpu, _ = timed(cmd, env)
                tokens = tbert_tokens
                info = "tbert " + " ".join(shlex.quote(c) for c in cmd[2:] if not c.startswith(work))
            else:
                cmd = [args.peer_python, os.path.join(HERE, "peers", "torch_finetune_cpu.py"), "--model", args.model,
                       "--data", tsv, "--k", str(args.k), "--epochs", str(args.epochs), "--batch", str(args.batch),
                       "--max-len", str(args.max_len), "--threads", str(args.threads)]
                r, wall, cpu, _ = timed(cmd)
                peer = json.loads(r.stdout.strip().splitlines()[-1])
                tokens = peer["tokens"]
                if tokens != tbert_tokens:
                    sys.exit(f"bench_finetune_cpu: token counts differ (tbert {tbert_tokens}, peer {tokens}): not the same work")
                info = peer["versions"]
            tps = tokens * args.epochs / wall
            rows.append((system, rnd, wall, cpu, tps, info))
            print(f"round {rnd} {system}: {wall:.1f} s wall, {cpu:.1f} s cpu, {tps:.0f} tokens/s", file=sys.stderr)

    n = len(train)
    print(f"{n} messages, {tbert_tokens} tokens per epoch, K={args.k}, {args.epochs} epochs, batch {args.batch}, "
          f"max_len {args.max_len}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print("| system | round | wall s | CPU s | tokens/s (wall) | tokens/CPU-s |")
    print("|---|---|---|---|---|---|")
    for system, rnd, wall, cpu, tps, _ in rows:
        print(f"| {system} | {rnd} | {wall:.1f} | {cpu:.1f} | {tps:.0f} | {tbert_tokens * args.epochs / cpu:.0f} |")
    for system in ("tbert", "pytorch"):
        w = [r[2] for r in rows if r[0] == system]
        c = [r[3] for r in rows if r[0] == system]
        rows_s = [r for r in rows if r[0] == system]
        print(f"\n{system}: mean wall {sum(w) / len(w):.1f} s, mean CPU {sum(c) / len(c):.1f} s ({rows_s[0][5]})")
    tw = sum(r[2] for r in rows if r[0] == "tbert")
    pw = sum(r[2] for r in rows if r[0] == "pytorch")
    tc = sum(r[3] for r in rows if r[0] == "tbert")
    pc = sum(r[3] for r in rows if r[0] == "pytorch")
    print(f"\ntbert / PyTorch tokens per second: {pw / tw:.2f}x (wall), {pc / tc:.2f}x (per CPU-second)")


if __name__ == "__main__":
    main()
