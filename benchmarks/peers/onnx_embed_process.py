#!/usr/bin/env python3
"""Whole-process peer of `tbert embed --threads N < texts > out.npy` (benchmarks/bench_embed_process.sh):
ONNX Runtime on the CPU running MiniLM exported with torch.onnx and fused by onnxruntime.transformers'
BERT optimizer (fused attention, layernorm, GELU), intra_op_num_threads=N, ORT_ENABLE_ALL, HF tokenizers.

It does what `tbert embed` does, from process start: reads one text per stdin line, tokenizes (truncated to
--max-len, [CLS]/[SEP] included), takes the texts in chunks of 4096 in input order, sorts each chunk by
(length, input index), runs batches of --batch consecutive sequences padded to their longest one, mean-pools
the real tokens and writes a float32 .npy (rows in input order) to stdout.

  --prepare   export + fuse the model once (needs torch and transformers; cached outside the repository),
              then exit. The timed runs import neither torch nor transformers.
"""
import argparse
import json
import os
import sys


def cached_paths(cache):
    return os.path.join(cache, "minilm.onnx"), os.path.join(cache, "minilm_fused.onnx")


def prepare(model_dir, cache):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import onnx_encoder_cpu as oec  # imports torch + transformers; only here

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    plain, fused = cached_paths(cache)
    os.makedirs(cache, exist_ok=True)
    if not os.path.exists(plain):
        oec.export(model_dir, plain)
    if not os.path.exists(fused):
        stats = oec.fuse(plain, fused, cfg)
        print(f"onnx_embed_process: fusions {stats}", file=sys.stderr)
    import onnxruntime
    import torch
    import transformers
    print(f"onnxruntime {onnxruntime.__version__}, exported with torch {torch.__version__}, "
          f"transformers {transformers.__version__}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF model folder (config.json, tokenizer.json)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tbert-peers"), help="where the .onnx files live")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--no-spin", action="store_true",
                    help="session.intra_op.allow_spinning=0: idle pool threads sleep instead of spinning (the "
                         "default spins, which counts as CPU time)")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.model, args.cache)
        return
    _, fused = cached_paths(args.cache)
    if not os.path.exists(fused):
        sys.exit(f"onnx_embed_process: {fused} missing: run with --prepare first")
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(fused, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(args.max_len)

    data = sys.stdin.buffer.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [ln.decode("utf-8", errors="replace") for ln in lines]
    n, H = len(texts), None
    out = None
    for c0 in range(0, n, args.chunk):
        chunk = texts[c0:c0 + args.chunk]
        ids = [e.ids for e in tok.encode_batch(chunk)]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        for s in range(0, len(order), args.batch):
            idx = order[s:s + args.batch]
            T = max(len(ids[i]) for i in idx)
            inp = np.zeros((len(idx), T), dtype=np.int64)
            mask = np.zeros((len(idx), T), dtype=np.int64)
            for b, i in enumerate(idx):
                inp[b, :len(ids[i])] = ids[i]
                mask[b, :len(ids[i])] = 1
            feeds = {"input_ids": inp, "attention_mask": mask, "token_type_ids": np.zeros_like(inp)}
            h = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (h * m).sum(1) / m.sum(1)
            if out is None:
                H = pooled.shape[1]
                out = np.zeros((n, H), dtype=np.float32)
            out[[c0 + i for i in idx]] = pooled
    if out is None:
        out = np.zeros((0, 0), dtype=np.float32)
    np.save(sys.stdout.buffer, out)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
