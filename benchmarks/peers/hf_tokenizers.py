#!/usr/bin/env python3
"""Peer of benchmarks/bench_tokenizer.c: Hugging Face `tokenizers` (Rust) encode_batch on the same corpus,
same max_len (truncation on, no padding), best of --rounds. RAYON_NUM_THREADS is read by tokenizers at
import time: the driver sets it (1 for the single-thread row).
Prints "RESULT hf_tokenizers <threads> <bytes> <tokens> <seconds> <MB/s> <Mtokens/s>"."""
import argparse
import os
import sys
import time

from tokenizers import Tokenizer
import tokenizers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-json", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tsv", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(a.max_len)
    with open(a.corpus, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if a.tsv:
        lines = [ln.split(b"\t", 1)[1] if b"\t" in ln else ln for ln in lines]
    nbytes = sum(len(x) for x in lines) * a.repeat
    texts = [x.decode("utf-8", errors="replace") for x in lines] * a.repeat
    best, tokens = 1e30, 0
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        encs = tok.encode_batch(texts)
        dt = time.perf_counter() - t0
        tokens = sum(len(e.ids) for e in encs)
        best = min(best, dt)
    threads = os.environ.get("RAYON_NUM_THREADS", "all")
    print("RESULT hf_tokenizers %s %d %d %.4f %.2f %.3f" % (threads, nbytes, tokens, best, nbytes / best / 1e6,
                                                           tokens / best / 1e6))
    print("hf_tokenizers: tokenizers %s, %d texts" % (tokenizers.__version__, len(texts)), file=sys.stderr)


if __name__ == "__main__":
    main()
