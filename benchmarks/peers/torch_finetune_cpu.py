#!/opt/golden/bin/python
"""Peer of `tbert train --finetune K` on the CPU (issue 15's speed target): PyTorch eager doing the same work.

Reads the same TSV (label<TAB>text, one message per line) tbert trains on, tokenizes with Hugging Face
`tokenizers` (the tokenizer tbert is token-for-token identical to), runs the frozen lower layers once under
no_grad and caches their output per message in the same dtype as tbert's cache (bf16 by default, unpadded),
then trains the top K layers + a linear head on the L2-normalised mean pooling for E epochs: batches of B
messages in a seeded shuffle, each padded to its longest message, BCE-with-logits, AdamW with two learning rates
(encoder, head), linear warm-up over 10% of the steps then linear decay, gradient clipping at global norm 1.0,
hidden and attention dropout as given. Timed from process start (imports, tokenization and the cache
included), like tbert's whole process. Prints one JSON line: messages, tokens (per epoch), epochs, seconds
(wall, cpu), tokens_per_s = tokens * epochs / wall seconds, and the last epoch's mean loss.

Usage: torch_finetune_cpu.py --model DIR --data FILE.tsv [--k 2] [--epochs 4] [--batch 32] [--max-len 128]
       [--threads 2] [--encoder-lr 5e-5] [--head-lr 1e-3] [--dropout 0.1] [--cache-dtype bf16|fp32]
"""
import time

T0 = time.time()
C0 = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import BertWordPieceTokenizer  # noqa: E402


def read_tsv(path):
    labels, texts = [], []
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            lab, _, text = line.partition("\t")
            labels.append(1.0 if lab == "spam" else 0.0)
            texts.append(text)
    return labels, texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder-lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--cache-dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)

    labels, texts = read_tsv(args.data)
    tok = BertWordPieceTokenizer(os.path.join(args.model, "vocab.txt"), lowercase=True)
    tok.enable_truncation(args.max_len)
    ids = [torch.tensor(e.ids, dtype=torch.long) for e in tok.encode_batch(texts)]
    n = len(ids)
    n_tokens = sum(len(x) for x in ids)

    cfg = transformers.BertConfig.from_pretrained(args.model)
    cfg.hidden_dropout_prob = args.dropout
    cfg.attention_probs_dropout_prob = args.dropout
    model = transformers.BertModel.from_pretrained(args.model, config=cfg, add_pooling_layer=False).float()
    layers = model.encoder.layer
    L = len(layers)
    first = L - args.k
    cache_dtype = torch.bfloat16 if args.cache_dtype == "bf16" else torch.float32

    def ext_mask(mask):
        # additive mask [B, 1, 1, T] as BertModel builds it
        return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    def run_layer(layer, h, am):
        out = layer(h, attention_mask=am)
        return out[0] if isinstance(out, tuple) else out

    def pad(batch_ids):
        T = max(len(x) for x in batch_ids)
        inp = torch.zeros(len(batch_ids), T, dtype=torch.long)
        mask = torch.zeros(len(batch_ids), T, dtype=torch.long)
        for i, x in enumerate(batch_ids):
            inp[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return inp, mask

    # 1. the frozen lower layers, once per message (batches in length order, like an encoder pass)
    cache = [None] * n
    model.eval()
    order = sorted(range(n), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for s in range(0, n, args.batch):
            idx = order[s:s + args.batch]
            inp, mask = pad([ids[i] for i in idx])
            h = model.embeddings(input_ids=inp, token_type_ids=torch.zeros_like(inp))
            am = ext_mask(mask)
            for layer in layers[:first]:
                h = run_layer(layer, h, am)
            for j, i in enumerate(idx):
                cache[i] = h[j, : len(ids[i])].to(cache_dtype).clone()
    t_cache = time.time() - T0

    # 2. the top K layers + head, trained
    for p in model.parameters():
        p.requires_grad_(False)
    top = torch.nn.ModuleList(layers[first:])
    for p in top.parameters():
        p.requires_grad_(True)
    H = cfg.hidden_size
    head = torch.nn.Linear(H, 1)
    no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name  # noqa: E731
    groups = [
        {"params": [p for nm, p in top.named_parameters() if not no_decay(nm)], "lr": args.encoder_lr, "weight_decay": 0.01},
        {"params": [p for nm, p in top.named_parameters() if no_decay(nm)], "lr": args.encoder_lr, "weight_decay": 0.0},
        {"params": list(head.parameters()), "lr": args.head_lr, "weight_decay": 0.01},
    ]
    opt = torch.optim.AdamW(groups, foreach=False)
    steps_per_epoch = (n + args.batch - 1) // args.batch
    total = steps_per_epoch * args.epochs
    sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
    y_all = torch.tensor(labels)
    rng = random.Random(args.seed)
    top.train()
    last_loss = float("nan")
    for epoch in range(args.epochs):
        perm = list(range(n))
        rng.shuffle(perm)
        tot = 0.0
        for s in range(0, n, args.batch):
            idx = perm[s:s + args.batch]
            T = max(len(ids[i]) for i in idx)
            h = torch.zeros(len(idx), T, H)
            mask = torch.zeros(len(idx), T)
            for j, i in enumerate(idx):
                h[j, : len(ids[i])] = cache[i].float()
                mask[j, : len(ids[i])] = 1
            am = ext_mask(mask)
            for layer in top:
                h = run_layer(layer, h, am)
            pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
            pooled = torch.nn.functional.normalize(pooled, dim=1, eps=1e-12)
            logit = head(pooled).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(top.parameters()) + list(head.parameters()), 1.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        last_loss = tot / n
    wall = time.time() - T0
    cpu = time.process_time() - C0
    print(json.dumps({
        "system": "pytorch eager", "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "threads": args.threads, "messages": n, "tokens": n_tokens, "epochs": args.epochs, "k": args.k,
        "batch": args.batch, "max_len": args.max_len, "cache_dtype": args.cache_dtype, "dropout": args.dropout,
        "seconds_cache": round(t_cache, 2), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "tokens_per_s": round(n_tokens * args.epochs / wall, 1), "last_epoch_loss": round(last_loss, 5),
    }))


if __name__ == "__main__":
    main()
