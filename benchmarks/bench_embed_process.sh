#!/usr/bin/env bash
# Whole-process CPU encoder benchmark (issue 13, "CPU encoder"): `tbert embed --threads N` on the SMS corpus
# (one text per stdin line, MiniLM, max_len 128, default batching: chunks of 4096 texts sorted by length,
# batches of 32) against ONNX Runtime (benchmarks/peers/onnx_embed_process.py: the same texts, tokenizer
# output, chunking, sorting, batches, mean pooling and .npy output; MiniLM exported with torch.onnx and fused
# by onnxruntime.transformers, intra_op_num_threads=N, ORT_ENABLE_ALL, HF tokenizers). Both are timed from
# process start to exit, tokenization, model loading and output included.
#
# The measure is CPU-seconds (user + sys of the whole process, from wait4) per message: the 2 cores are
# shared with other work, so wall time measures the neighbours as much as the engine. Wall seconds are
# printed too. Engines alternate within each round; the table gives each engine's median and best round.
# Before the timed rounds one untimed run of each writes its features, and the script fails unless they agree
# (max |tbert - ORT| <= 1e-3: the same workload).
#
# usage: benchmarks/bench_embed_process.sh [--write] [BUILD_DIR]     (BUILD_DIR default: build/cpu)
#   env: THREADS (2), ROUNDS (5), PEER_PY (~/.cache/tbert-peers/bin/python: onnxruntime, tokenizers, numpy;
#        torch + transformers only for the one-time export), TBERT_EXTRA (extra tbert embed arguments),
#        LABEL (name of the tbert row, default "tbert"), PEER_EXTRA (extra peer arguments: --no-spin makes ORT's
#        idle pool threads sleep instead of spinning, which the default counts as CPU time)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
BUILD=${1:-$ROOT/build/cpu}
TBERT=$BUILD/tbert
PY=${PEER_PY:-$HOME/.cache/tbert-peers/bin/python}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=$CACHE/models/minilm
DATA=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/sms/SMSSpamCollection
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
LABEL=${LABEL:-tbert}
for f in "$MODEL/model.safetensors" "$MODEL/tokenizer.json" "$DATA" "$TBERT"; do
    [ -e "$f" ] || { echo "bench_embed_process.sh: $f not found (models/fetch.sh minilm / build first)" >&2; exit 2; }
done
"$PY" -c "import onnxruntime, tokenizers, numpy" 2>/dev/null ||
    { echo "bench_embed_process.sh: $PY lacks onnxruntime/tokenizers/numpy: the peer cannot run" >&2; exit 2; }
PEER=$ROOT/benchmarks/peers/onnx_embed_process.py
VERSIONS=$("$PY" "$PEER" --model "$MODEL" --prepare 2>/dev/null | tail -1) ||
    { echo "bench_embed_process.sh: the peer's one-time export failed (needs torch + transformers in $PY)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/bench_embed_process.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cut -f2- "$DATA" > "$TMP/texts.txt"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
read -r -a EXTRA <<< "${TBERT_EXTRA:-}"
TB=("$TBERT" embed --model "$MODEL" --threads "$THREADS" --quiet "${EXTRA[@]}")
read -r -a PEXTRA <<< "${PEER_EXTRA:-}"
OR=("$PY" "$PEER" --model "$MODEL" --threads "$THREADS" "${PEXTRA[@]}")

TABLE=$("$PY" - "$TMP" "$ROUNDS" "$LABEL" "$VERSIONS" "${#TB[@]}" "${TB[@]}" "${OR[@]}" <<'EOF'
import os, statistics, subprocess, sys, time
import numpy as np
tmp, rounds, label, versions, ntb = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
tb, orr = sys.argv[6:6 + ntb], sys.argv[6 + ntb:]
texts = os.path.join(tmp, "texts.txt")
n = sum(1 for _ in open(texts, "rb"))

def run(cmd, out):
    with open(texts, "rb") as fi, open(out, "wb") as fo:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=fi, stdout=fo)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_embed_process: {cmd[0]} failed with status {status}")
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss / 1024.0

# untimed check: the same features
run(tb, os.path.join(tmp, "tb.npy"))
run(orr, os.path.join(tmp, "or.npy"))
a, b = np.load(os.path.join(tmp, "tb.npy")), np.load(os.path.join(tmp, "or.npy"))
if a.shape != b.shape or a.shape[0] != n:
    sys.exit(f"bench_embed_process: shapes differ: tbert {a.shape}, ORT {b.shape}, {n} texts")
diff = float(np.abs(a - b).max())
if not diff <= 1e-3:
    sys.exit(f"bench_embed_process: features differ by {diff} (> 1e-3): not the same workload")
res = {label: [], "onnxruntime": []}
for r in range(rounds):
    for name, cmd in ((label, tb), ("onnxruntime", orr)):
        cpu, wall, rss = run(cmd, os.devnull)
        res[name].append((cpu, wall, rss))
        print(f"round {r + 1}: {name}: {cpu:.2f} CPU-s, {wall:.2f} s wall, {cpu / n * 1e3:.3f} CPU-ms/message",
              file=sys.stderr)
med = {k: statistics.median(c for c, _, _ in v) for k, v in res.items()}
best = {k: min(c for c, _, _ in v) for k, v in res.items()}
print(f"| engine | CPU-ms/message (median of {rounds}) | best | wall s (median) | peak RSS MiB | "
      f"ORT CPU-s / engine CPU-s (median) | rounds (CPU-s) |")
print("|---|---|---|---|---|---|---|")
for k in (label, "onnxruntime"):
    v = res[k]
    print(f"| {k} | {med[k] / n * 1e3:.3f} | {best[k] / n * 1e3:.3f} | {statistics.median(w for _, w, _ in v):.2f} | "
          f"{max(m for _, _, m in v):.0f} | {med['onnxruntime'] / med[k]:.2f}x | "
          f"{' '.join(f'{c:.2f}' for c, _, _ in v)} |")
ratios = [o[0] / t[0] for t, o in zip(res[label], res["onnxruntime"])]
print()
print(f"{n} messages; per-round ratio ORT/{label} (CPU-s): {' '.join(f'{x:.2f}' for x in ratios)}; "
      f"max |feature difference| {diff:.1e}; peer: {versions}")
EOF
)
echo "$TABLE"
if [ "$WRITE" = 1 ]; then
    mkdir -p "$ROOT/build"
    {
        echo "- date: $(date -u)"
        echo "- machine: $(lscpu | grep -m1 'Model name' | sed 's/.*: *//'), $(nproc) cores ($(uname -m), KVM), shared with other work; load average before the run: $LOAD"
        echo "- command: \`benchmarks/bench_embed_process.sh --write ${1:-build/cpu}\` (THREADS=$THREADS ROUNDS=$ROUNDS TBERT_EXTRA='${TBERT_EXTRA:-}' PEER_EXTRA='${PEER_EXTRA:-}' OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
        echo
        echo "$TABLE"
    } > "${RESULTS_OUT:-$ROOT/build/RESULTS_embed_process.md}"
    echo "wrote ${RESULTS_OUT:-$ROOT/build/RESULTS_embed_process.md}" >&2
fi
