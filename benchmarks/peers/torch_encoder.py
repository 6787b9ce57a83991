#!/usr/bin/env python3
"""GPU peer of `tbert bench --device cuda --random-weights CONFIG`: transformers BertModel with random weights of
the same config, on the same GPU, same batch, same sequence length and precision, eager PyTorch or torch.compile.
Like tbert, each timed batch starts from host token ids and ends with mean-pooled float32 features on the host
(all sequences have seq_len real tokens, as in tbert bench's synthetic workload).
Prints one JSON line per batch size. Fails loudly (non-zero exit) when it cannot run."""
import argparse
import json
import sys
import time

import numpy as np
import torch
import transformers


def build(cfg, precision, mode):
    conf = transformers.BertConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
        max_position_embeddings=cfg["max_position_embeddings"], type_vocab_size=cfg.get("type_vocab_size", 2),
        hidden_act="gelu", layer_norm_eps=cfg.get("layer_norm_eps", 1e-12))
    torch.manual_seed(42)
    model = transformers.BertModel(conf, add_pooling_layer=False).eval().cuda()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"

    def forward(ids, mask):
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return ((h * m).sum(1) / m.sum(1)).float()

    if mode == "compile":
        forward = torch.compile(forward, dynamic=True)
    return model, forward


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="config.json of the model shape")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_encoder.py: no CUDA device visible to torch")
    cfg = json.load(open(args.config))
    t0 = time.perf_counter()
    model, forward = build(cfg, args.precision, args.mode)
    rng = np.random.default_rng(42)
    for B in args.batch:
        ids_host = torch.from_numpy(rng.integers(1, cfg["vocab_size"], size=(B, args.seq_len), dtype=np.int64))
        mask_host = torch.ones((B, args.seq_len), dtype=torch.int64)

        def one():
            with torch.inference_mode():
                return forward(ids_host.cuda(), mask_host.cuda()).cpu()

        tw = time.perf_counter()
        for _ in range(args.warmup):
            one()
        torch.cuda.synchronize()
        warm_s = time.perf_counter() - tw
        t = time.perf_counter()
        for _ in range(args.iters):
            out = one()
        torch.cuda.synchronize()
        secs = time.perf_counter() - t
        if not torch.isfinite(out).all():
            sys.exit("torch_encoder.py: non-finite output")
        print(json.dumps({
            "engine": f"torch-{args.mode}", "precision": args.precision, "batch": B, "seq_len": args.seq_len,
            "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "iters": args.iters,
            "seconds": round(secs, 4), "sequences_per_s": round(B * args.iters / secs, 1),
            "warmup_s": round(warm_s, 2), "device": torch.cuda.get_device_name(),
            "attention": model.config._attn_implementation,
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"}), flush=True)
    print(json.dumps({"engine": f"torch-{args.mode}", "total_s": round(time.perf_counter() - t0, 1)}), file=sys.stderr)


if __name__ == "__main__":
    main()
