#!/usr/bin/env python3
"""PyTorch peer of `tbert train --finetune K` (issue 15; benchmarks/bench_finetune_cpu.sh runs both in one run).

The same work as tbert: the texts of a TSV (label TAB text) tokenized to max_len (WordPiece, [CLS]/[SEP], one
window), the frozen lower layers run once per text under no_grad and kept as bf16 (as tbert's cache), then
EPOCHS epochs of shuffled minibatches: the top K layers (train mode: dropout) + masked mean pooling + a linear
head (one logit, BCE), AdamW with the head's and the encoder's learning rates (no decay on biases and LayerNorm
weights), transformers.get_linear_schedule_with_warmup (10% warm-up), clip_grad_norm_ 1.0; then one pass over
every text with the trained layers (tbert computes the final metrics on them). torch.set_num_threads(THREADS).
Each minibatch is padded to its longest text (tbert packs tokens instead; tokens_padded in the JSON says how many
padded positions PyTorch computes per epoch).

--precision bf16: torch.autocast("cpu", bfloat16) over the trained part's forward (the top K layers, pooling,
head; the logit is cast to fp32 for the BCE loss), as tbert's `--precision bf16` (bf16 matrix products, fp32
master weights): the parameters, gradients and AdamW stay fp32. The frozen lower layers' pass runs under the same
autocast (tbert's `--precision bf16` computes its frozen layers with bf16 products too); the cache is bf16 in both
modes. The final pass over every text runs under the same autocast.

--compile: torch.compile (default inductor backend) of the trained part's function (top K layers, pooling, head,
loss; the backward is compiled with it by AOTAutograd; AdamW and clipping stay eager). The batches' T varies
(padded per batch), so the function is compiled with dynamic=True (symbolic batch and T: one graph for training
and one for the no_grad final pass, no recompiles per length; compile_graphs in the JSON counts them). The compile
is part of the measured seconds, and also reported alone: seconds_first_step (the first training step, compile
included) and seconds_first_eval (the first call of the final pass, the no_grad graph's compile included). A
compile error ends the run with a message and exit 1; a first step or first final-pass call that has not ended
after --compile-limit seconds (600) ends it with exit 3. Errors are never suppressed into an eager fallback.
The compile is cold: inductor's caches go to a fresh temporary TORCHINDUCTOR_CACHE_DIR (removed at the end)
unless that variable is set (then the JSON's compile_cache names it: a warm cache hides compile time).

Prints one JSON line: engine, precision, compile, tokens (real tokens of one epoch), tokens_padded (computed
positions of one epoch, padding included, mean over epochs), seconds (from after the imports to the end),
seconds_lower (the frozen layers), seconds_train (the epochs), seconds_first_step, seconds_first_eval,
cpu_seconds_train and cpu_seconds_first_step (time.process_time: this process's threads, so inductor's compile
workers are not in them, unlike /usr/bin/time's; cpu_seconds_train - cpu_seconds_first_step is the steady
steps' CPU time, comparable between eager and compile on a loaded machine), train loss (mean per epoch)."""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time

ME = "torch_finetune.py"


def watchdog(limit, what):
    """A timer that ends the process (exit 3) if `what` has not ended in `limit` seconds; cancel() it when done."""
    def fire():
        sys.stderr.write("%s: %s did not end within %d s (torch.compile too slow); no result\n" % (ME, what, limit))
        sys.stderr.flush()
        d = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
        if "tbert_peer_inductor." in d:  # our cold cache: os._exit skips main's cleanup
            shutil.rmtree(d, ignore_errors=True)
        os._exit(3)
    t = threading.Timer(limit, fire)
    t.daemon = True
    t.start()
    return t


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
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile (inductor, dynamic=True) the trained part")
    ap.add_argument("--compile-limit", type=int, default=600, help="seconds allowed for a call that compiles")
    a = ap.parse_args()
    cold = None
    if a.compile and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a cold compile: inductor's caches are fresh
        cold = tempfile.mkdtemp(prefix="tbert_peer_inductor.")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold
    try:
        run(a)
    finally:
        if cold:
            shutil.rmtree(cold, ignore_errors=True)


def run(a):
    import torch
    from transformers import BertModel, BertTokenizerFast, get_linear_schedule_with_warmup
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    bf16 = a.precision == "bf16"
    if bf16 and not torch.backends.mkldnn.is_available():
        sys.stderr.write("%s: --precision bf16 needs oneDNN (torch.backends.mkldnn), absent in this torch\n" % ME)
        sys.exit(2)
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

    # the frozen lower layers once per text (fp32, or under autocast with --precision bf16), kept as bf16 (no_grad)
    model.eval()
    cache = [None] * n
    order = sorted(range(n), key=lambda i: lens[i])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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

    def batch(idx):
        """The cached rows of idx as fp32, padded to the batch's longest text, and their 0/1 mask."""
        T = max(lens[i] for i in idx)
        h = torch.zeros(len(idx), T, H)
        m = torch.zeros(len(idx), T)
        for j, i in enumerate(idx):
            h[j, :lens[i]] = cache[i].float()
            m[j, :lens[i]] = 1
        return h, m

    def trained(h, m, yb):
        """The trained part: top K layers, masked mean pooling, head, BCE. Returns (fp32 logits, loss)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            e = ext(m, torch.float32)
            for layer in top:
                h = run_layer(layer, h, e)
            pooled = (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
            z = head(pooled).squeeze(1).float()
        return z, torch.nn.functional.binary_cross_entropy_with_logits(z, yb)

    fn = trained
    if a.compile:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = False       # a failed compile raises, never falls back to eager
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        fn = torch.compile(trained, dynamic=True)

    def first_call(what, call):
        """The first call of fn in a grad mode: where the compile happens, so it is guarded and timed."""
        w = watchdog(a.compile_limit, what) if a.compile else None
        t = time.perf_counter()
        try:
            call()
        except Exception as ex:  # noqa: BLE001 -- any compile failure ends the run with a message
            if not a.compile:
                raise
            sys.stderr.write("%s: torch.compile failed in %s: %s: %s\n" % (ME, what, type(ex).__name__,
                                                                            str(ex).splitlines()[0] if str(ex) else ""))
            sys.exit(1)
        finally:
            if w:
                w.cancel()
        return time.perf_counter() - t

    t1 = time.perf_counter()
    c1 = time.process_time()
    losses = []
    padded_positions = 0
    t_first = None
    g = torch.Generator().manual_seed(a.seed)
    for _ in range(a.epochs):
        top.train()
        perm = torch.randperm(n, generator=g).tolist()
        tot = 0.0
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            h, m = batch(idx)
            padded_positions += h.shape[0] * h.shape[1]

            def step():
                _, loss = fn(h, m, y[idx])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(top.parameters()) + list(head.parameters()), 1.0)
                opt.step()
                sched.step()
                return loss.item()
            if t_first is None:
                box = []
                c_first = time.process_time()
                t_first = first_call("the first training step", lambda: box.append(step()))
                c_first = time.process_time() - c_first
                tot += box[0] * len(idx)
            else:
                tot += step() * len(idx)
        losses.append(tot / n)
    t_train = time.perf_counter() - t1
    c_train = time.process_time() - c1
    top.eval()
    t_first_eval = None
    with torch.no_grad():
        for s in range(0, n, 64):
            idx = order[s:s + 64]
            h, m = batch(idx)
            if t_first_eval is None:
                t_first_eval = first_call("the first call of the final pass", lambda: fn(h, m, y[idx]))
            else:
                fn(h, m, y[idx])
    seconds = time.perf_counter() - t0
    res = {"engine": "pytorch", "precision": a.precision,
           "compile": "inductor dynamic=True" if a.compile else "eager", "docs": n, "tokens": sum(lens),
           "tokens_padded": padded_positions // a.epochs, "epochs": a.epochs, "seconds": seconds,
           "seconds_lower": t_lower, "seconds_train": t_train, "seconds_first_step": t_first,
           "seconds_first_eval": t_first_eval, "cpu_seconds_train": c_train, "cpu_seconds_first_step": c_first,
           "train_loss": losses, "torch": torch.__version__}
    if a.compile:
        from torch._dynamo.utils import counters
        res["compile_cache"] = "cold (a fresh TORCHINDUCTOR_CACHE_DIR)" if "tbert_peer_inductor." in \
            os.environ["TORCHINDUCTOR_CACHE_DIR"] else "TORCHINDUCTOR_CACHE_DIR=" + os.environ["TORCHINDUCTOR_CACHE_DIR"]
        res["compile_graphs"] = counters["stats"]["unique_graphs"]
        res["graph_breaks"] = sum(counters["graph_break"].values())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
