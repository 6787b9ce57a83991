"""Shared by the encoder peers (torch_encoder_cpu.py, onnx_encoder_cpu.py): the same workload as
`tbert bench --data`: texts of a table's text column, HF tokenizer ids truncated to max_len, sorted by
(length, input index), batches of `batch` consecutive sequences, each padded to its longest sequence
(dynamic) or to max_len (fixed). Timing covers forward + pooling, not tokenization, as in tbert.
FLOPs count the real tokens only, with the same formula as tbert_encoder_flops()."""
import argparse
import json
import resource
import sys
import time

import numpy as np


def add_args(ap: argparse.ArgumentParser):
    ap.add_argument("--model", required=True, help="HF model folder (config.json, vocab.txt, model.safetensors)")
    ap.add_argument("--data", required=True, help="TSV file, text in column 2 (SMSSpamCollection)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", choices=["mean", "flatten"], default="mean")
    ap.add_argument("--padding", choices=["dynamic", "fixed"], default="dynamic")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first")


def load_texts(path, limit):
    lines = open(path, "rb").read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [ln.split(b"\t", 1)[1] if b"\t" in ln else ln for ln in lines]
    texts = [t.decode("utf-8", errors="replace") for t in texts]
    return texts[:limit] if limit else texts


def tokenize(model_dir, texts, max_len):
    from tokenizers import Tokenizer
    import os
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    return [e.ids for e in tok.encode_batch(texts)]


def batches(ids, batch, max_len, padding):
    """Yields (input_ids [B,T] int64, attention_mask [B,T] int64, lengths) in tbert's order."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        lens = [len(ids[i]) for i in idx]
        T = max_len if padding == "fixed" else max(lens)
        inp = np.zeros((len(idx), T), dtype=np.int64)
        mask = np.zeros((len(idx), T), dtype=np.int64)
        for b, i in enumerate(idx):
            inp[b, :lens[b]] = ids[i]
            mask[b, :lens[b]] = 1
        yield inp, mask, lens


def flops(cfg, L):
    H, I, n = cfg["hidden_size"], cfg["intermediate_size"], L
    return cfg["num_hidden_layers"] * (2.0 * n * (4.0 * H * H + 2.0 * H * I) + 4.0 * n * n * H)


def pool_np(hidden, mask, pool):
    """mean: masked mean; flatten: [B, T*H] with zeros beyond each length (hidden is numpy)."""
    m = mask[:, :, None].astype(hidden.dtype)
    if pool == "mean":
        return (hidden * m).sum(1) / m.sum(1)
    return (hidden * m).reshape(hidden.shape[0], -1)


def run(engine, args, cfg, forward, extra=None):
    """forward(input_ids, attention_mask) -> pooled numpy array. Prints one JSON line."""
    texts = load_texts(args.data, args.limit)
    ids = tokenize(args.model, texts, args.max_len)
    all_batches = list(batches(ids, args.batch, args.max_len, args.padding))
    for inp, mask, _ in all_batches[:args.warmup]:
        forward(inp, mask)
    tokens = padded = fl = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for inp, mask, lens in all_batches:
        out = forward(inp, mask)
        assert out.shape[0] == inp.shape[0]
        tokens += sum(lens)
        padded += inp.size
        fl += sum(flops(cfg, L) for L in lens)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    res = {"engine": engine, "device": "cpu", "threads": args.threads, "model": args.model, "mode": "corpus",
           "pool": args.pool, "padding": args.padding, "batch": args.batch, "max_len": args.max_len,
           "sequences": len(ids), "batches": len(all_batches), "tokens": tokens, "padded_tokens": padded,
           "seconds": round(dt, 4), "cpu_seconds": round(cpu, 4), "sequences_per_s": round(len(ids) / dt, 2), "tokens_per_s": round(tokens / dt, 1),
           "gflops_per_s": round(fl / dt / 1e9, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if extra:
        res.update(extra)
    print(json.dumps(res))
    sys.stdout.flush()
