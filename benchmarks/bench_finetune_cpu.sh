#!/usr/bin/env bash
# CPU fine-tuning benchmark (issue 15): `tbert train --finetune 2` against PyTorch doing the same work
# (benchmarks/peers/torch_finetune.py: the frozen lower layers once per text under no_grad, kept as bf16, then the
# top 2 layers + mean pooling + linear head trained with AdamW, 10% warm-up + linear decay, clipping 1.0, dropout
# 0.1), in one run, same thread count, same texts, batch, max_len and epochs.
# Texts: the SpamAssassin half split's training part (even positions of easy_ham, easy_ham_2, hard_ham, spam,
# spam_2, as benchmarks/bench_mail.py), each message as Subject + "\n" + its first text part (Python's email
# module, whitespace runs made one space), written once to a TSV that both engines read (tbert: --data, text
# recipe without the lexical block, so the work is the encoder's and the head's only).
# Each engine runs end to end in its own process, from a cold lower-layer cache (tbert: a fresh TBERT_CACHE
# store; PyTorch computes its own), so the frozen layers' pass is included in both; tokens/s = real tokens of
# one epoch x epochs / wall seconds (tbert: the whole process; PyTorch: after its imports), CPU seconds from
# /usr/bin/time (user + sys, the machine is shared). Prints a Markdown table with both measured numbers.
# PRECISION=fp32|bf16: tbert gets --precision PRECISION, the peer the same (bf16: torch.autocast over the trained
# part; both keep the frozen pass fp32, master weights and AdamW fp32). PEERS: the PyTorch rows, each its own
# run and row, and a ratio against each: eager, compile (torch.compile, inductor, dynamic shapes, cold cache: its
# compile is in its time, and its first step's seconds, compile included, are printed beside).
# usage: benchmarks/bench_finetune_cpu.sh [BUILD_DIR]   env: THREADS (2), EPOCHS (4), BATCH (32), LIMIT (0 = all),
#        PRECISION (fp32), PEERS ("eager"; "eager compile" for both)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build/cpu}
TBERT=$BUILD/tbert
PY=${TBERT_GOLDEN_PYTHON:-/opt/golden/bin/python}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=$CACHE/models/minilm
CORPUS=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/mail/spamassassin
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-32}
LIMIT=${LIMIT:-0}
PRECISION=${PRECISION:-fp32}
PEERS=${PEERS:-eager}
case $PRECISION in fp32|bf16) ;; *) echo "bench_finetune_cpu.sh: PRECISION must be fp32 or bf16, got '$PRECISION'" >&2; exit 2 ;; esac
[ -n "${PEERS// /}" ] || { echo "bench_finetune_cpu.sh: PEERS is empty (eager, compile or both)" >&2; exit 2; }
for p in $PEERS; do
    case $p in eager|compile) ;; *) echo "bench_finetune_cpu.sh: PEERS: unknown peer '$p' (eager, compile)" >&2; exit 2 ;; esac
done
for f in "$MODEL/model.safetensors" "$MODEL/tokenizer.json" "$CORPUS/easy_ham" "$TBERT"; do
    [ -e "$f" ] || { echo "bench_finetune_cpu.sh: $f not found (models/fetch.sh minilm, the shared corpus, a build)" >&2; exit 2; }
done
"$PY" -c "import torch, transformers" 2>/dev/null ||
    { echo "bench_finetune_cpu.sh: $PY lacks torch/transformers: the peer cannot run" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_finetune_cpu.sh: /usr/bin/time is needed" >&2; exit 2; }
WORK=$(mktemp -d /tmp/tbert_bench_ft.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$CORPUS" "$WORK/train.tsv" "$LIMIT" <<'EOF'
import email, email.policy, os, re, sys
root, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
def files(names):
    r = []
    for n in names:
        d = os.path.join(root, n)
        r += [os.path.join(d, f) for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f))]
    return r
allf = [(f, "ham") for f in files(["easy_ham", "easy_ham_2", "hard_ham"])] + [(f, "spam") for f in files(["spam", "spam_2"])]
train = allf[0::2]
if limit:
    train = [train[i * len(train) // limit] for i in range(min(limit, len(train)))]  # evenly over ham and spam
with open(out, "w", encoding="utf-8") as o:
    for path, lab in train:
        msg = email.message_from_bytes(open(path, "rb").read(), policy=email.policy.compat32)
        subj = str(msg.get("Subject", "") or "")
        body = ""
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                p = part.get_payload(decode=True) or b""
                try:
                    body = p.decode(part.get_content_charset() or "latin-1", errors="replace")
                except LookupError:  # a charset Python does not know ("unknown-8bit")
                    body = p.decode("latin-1")
                break
        text = re.sub(r"\s+", " ", subj + "\n" + body).strip()
        o.write(lab + "\t" + text + "\n")
EOF
N=$(wc -l <"$WORK/train.tsv")
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
# tbert: a fresh store, so the frozen layers run in this process
mkdir -p "$WORK/cache/models"
ln -s "$MODEL" "$WORK/cache/models/minilm"
TB=(train --model minilm --data "$WORK/train.tsv" --header no --out "$WORK/head" --recipe text --lexical-dim 0 --hidden 0
    --dropout 0 --lr 1e-3 --weight-decay 0.01 --batch "$BATCH" --max-len 128 --val-fraction 0 --test-fraction 0 --cv 0
    --finetune 2 --finetune-epochs "$EPOCHS" --encoder-lr 5e-5 --threads "$THREADS" --precision "$PRECISION" --json)
start=$(date +%s.%N)
TBERT_CACHE=$WORK/cache /usr/bin/time -f "%e %U %S" -o "$WORK/tbert.time" "$TBERT" "${TB[@]}" >"$WORK/tbert.json" 2>"$WORK/tbert.err" ||
    { echo "bench_finetune_cpu.sh: tbert failed: $(tail -3 "$WORK/tbert.err")" >&2; exit 1; }
TOK_TBERT=$(sed -n 's/.* windows (\([0-9]*\) tokens.*/\1/p' "$WORK/tbert.err" | head -1)
[ -n "$TOK_TBERT" ] || { echo "bench_finetune_cpu.sh: tbert did not report its token count" >&2; exit 1; }
for p in $PEERS; do
    PF=(--precision "$PRECISION"); [ "$p" = compile ] && PF+=(--compile)
    /usr/bin/time -f "%e %U %S" -o "$WORK/torch-$p.time" "$PY" "$ROOT/benchmarks/peers/torch_finetune.py" --data "$WORK/train.tsv" \
        --model "$MODEL" --k 2 --epochs "$EPOCHS" --batch "$BATCH" --max-len 128 --threads "$THREADS" --lr 1e-3 \
        --encoder-lr 5e-5 --weight-decay 0.01 "${PF[@]}" >"$WORK/torch-$p.json" 2>"$WORK/torch-$p.err" ||
        { echo "bench_finetune_cpu.sh: the PyTorch peer ($p) failed: $(tail -3 "$WORK/torch-$p.err")" >&2; exit 1; }
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
"$PY" - "$WORK" "$TOK_TBERT" "$EPOCHS" "$N" "$THREADS" "$BATCH" "$LOAD0" "$LOAD1" "$PRECISION" $PEERS <<'EOF'
import json, sys
w, tok_t, E, n, th, batch, l0, l1, prec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
peers = sys.argv[10:]
def tm(f):
    e, u, s = open(f).read().split()[-3:]
    return float(e), float(u) + float(s)
tw, tc = tm(w + "/tbert.time")
tj = json.loads(open(w + "/tbert.json").read().strip().splitlines()[-1])
print("| engine | docs | tokens/epoch | wall s | CPU s | tokens/s (wall) | tokens per CPU s | train loss (epochs) |")
print("|---|---|---|---|---|---|---|---|")
print("| tbert --finetune 2 %s | %s | %d | %.1f | %.1f | %.0f | %.0f | train acc %.4f |" % (prec, n, tok_t, tw, tc, tok_t * E / tw,
      tok_t * E / tc, tj.get("accuracy", float("nan"))))
notes = []
for p in peers:
    pw, pc = tm(w + "/torch-%s.time" % p)
    pj = json.loads(open(w + "/torch-%s.json" % p).read().strip().splitlines()[-1])
    assert pj["precision"] == prec and (pj["compile"] != "eager") == (p == "compile"), pj
    tok_p = pj["tokens"]
    how = "eager" if p == "eager" else "torch.compile (inductor, dynamic shapes, cold cache)"
    print("| PyTorch %s %s %s%s | %s | %d | %.1f (%.1f after imports) | %.1f | %.0f | %.0f | %s |" % (pj["torch"], how, prec,
          " (autocast)" if prec == "bf16" else "", n, tok_p, pw, pj["seconds"], pc, tok_p * E / pj["seconds"], tok_p * E / pc,
          " ".join("%.4f" % x for x in pj["train_loss"])))
    notes.append("ratio tbert / PyTorch %s, tokens per wall second: %.2f; per CPU second: %.2f" % (p,
                 (tok_t * E / tw) / (tok_p * E / pj["seconds"]), (tok_t * E / tc) / (tok_p * E / pc)))
    if p == "compile":
        notes.append("PyTorch compile: first training step %.1f s and first final-pass call %.1f s, compiles included (in its "
                     "time above); %d graphs, %d graph breaks" % (pj["seconds_first_step"], pj["seconds_first_eval"],
                     pj["compile_graphs"], pj["graph_breaks"]))
notes.append("PyTorch pads each batch to its longest text: %d computed positions per epoch for %d real tokens (+%.0f%%)" % (
             pj["tokens_padded"], pj["tokens"], 100.0 * (pj["tokens_padded"] / pj["tokens"] - 1)))
print("\n" + "\n".join(notes))
print("%s threads, batch %s, max_len 128, %d epochs, MiniLM (top 2 of 6 layers trained), precision %s; load average before %s, after %s"
      % (th, batch, E, prec, l0, l1))
EOF
