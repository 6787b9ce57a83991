#!/usr/bin/env python3
"""PyTorch peer of `tbert train --finetune K` (issue 15; benchmarks/bench_finetune_cpu.sh runs both in one run).

The same work as tbert: the texts of a TSV (label TAB text) tokenized to max_len (WordPiece, [CLS]/[SEP], one
window), the frozen lower layers run once per text under no_grad and kept as bf16 (as tbert's cache), then
EPOCHS epochs of shuffled minibatches: the top K layers (train mode: dropout) + masked mean pooling + a linear
head (one logit, BCE), AdamW with the head's and the encoder's learning rates (no decay on biases and LayerNorm
weights), transformers.get_linear_schedule_with_warmup (10% warm-up), clip_grad_norm_ 1.0; then one pass over
every text with the trained layers (tbert computes the final metrics on them). torch.set_num_threads(THREADS).

Prints one JSON line: tokens (real tokens of one epoch), seconds (from after the imports to the end),
seconds_lower (the frozen layers), seconds_train (the epochs), final loss per epoch."""
import argparse
import json
import math
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--encoder-lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    import torch
    from transformers import BertModel, BertTokenizerFast, get_linear_schedule_with_warmup
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    texts, labels = [], []
    with open(a.data, encoding="utf-8", errors="replace") as f:
        for line in f:
            lab, _, txt = line.rstrip("\n").partition("\t")
            texts.append(txt)
            labels.append(1.0 if lab == "spam" else 0.0)
    tok = BertTokenizerFast.from_pretrained(a.model)
    ids = tok(texts, truncation=True, max_length=a.max_len)["input_ids"]
    model = BertModel.from_pretrained(a.model, hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout,
                                      attn_implementation="eager")
    L = model.config.num_hidden_layers
    first = L - a.k
    H = model.config.hidden_size
    lens = [len(x) for x in ids]
    n = len(ids)

    def padded(idx):
        T = max(lens[i] for i in idx)
        x = torch.zeros(len(idx), T, dtype=torch.long)
        m = torch.zeros(len(idx), T, dtype=torch.long)
        for j, i in enumerate(idx):
            x[j, :lens[i]] = torch.tensor(ids[i])
            m[j, :lens[i]] = 1
        return x, m

    def run_layer(layer, h, e):  # transformers < 5 returns a tuple, 5 the tensor
        out = layer(h, attention_mask=e)
        return out[0] if isinstance(out, tuple) else out

    def ext(m, dtype):
        return (1.0 - m[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    # the frozen lower layers once per text, kept as bf16 (no_grad)
    model.eval()
    cache = [None] * n
    order = sorted(range(n), key=lambda i: lens[i])
    with torch.no_grad():
        for s in range(0, n, 32):
            idx = order[s:s + 32]
            x, m = padded(idx)
            h = model.embeddings(input_ids=x)
            e = ext(m, h.dtype)
            for layer in model.encoder.layer[:first]:
                h = run_layer(layer, h, e)
            for j, i in enumerate(idx):
                cache[i] = h[j, :lens[i]].to(torch.bfloat16).clone()
    t_lower = time.perf_counter() - t0
    top = model.encoder.layer[first:]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in top.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(H, 1)
    dec, nodec = [], []
    for name, p in top.named_parameters():
        (nodec if name.endswith("bias") or "LayerNorm" in name else dec).append(p)
    opt = torch.optim.AdamW([
        {"params": dec, "lr": a.encoder_lr, "weight_decay": a.weight_decay},
        {"params": nodec, "lr": a.encoder_lr, "weight_decay": 0.0},
        {"params": [head.weight], "lr": a.lr, "weight_decay": a.weight_decay},
        {"params": [head.bias], "lr": a.lr, "weight_decay": 0.0}])
    steps = a.epochs * math.ceil(n / a.batch)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    y = torch.tensor(labels)

    def dense(idx, train):
        T = max(lens[i] for i in idx)
        h = torch.zeros(len(idx), T, H)
        m = torch.zeros(len(idx), T)
        for j, i in enumerate(idx):
            h[j, :lens[i]] = cache[i].float()
            m[j, :lens[i]] = 1
        e = ext(m, h.dtype)
        for layer in top:
            h = run_layer(layer, h, e)
        return (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)

    t1 = time.perf_counter()
    losses = []
    g = torch.Generator().manual_seed(a.seed)
    for _ in range(a.epochs):
        top.train()
        perm = torch.randperm(n, generator=g).tolist()
        tot = 0.0
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            z = head(dense(idx, True)).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(top.parameters()) + list(head.parameters()), 1.0)
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        losses.append(tot / n)
    t_train = time.perf_counter() - t1
    top.eval()
    with torch.no_grad():
        for s in range(0, n, 64):
            head(dense(order[s:s + 64], False))
    print(json.dumps({"engine": "pytorch", "docs": n, "tokens": sum(lens), "epochs": a.epochs,
                      "seconds": time.perf_counter() - t0, "seconds_lower": t_lower, "seconds_train": t_train,
                      "train_loss": losses, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
