#!/usr/bin/env bash
# CPU encoder benchmark (issue 4): tbert vs PyTorch (transformers BertModel, eager) vs ONNX Runtime (model
# exported with torch.onnx, BERT fusions), all in one run, same thread count, on the SMS corpus: MiniLM,
# max_len 128, length-sorted batches of 32, (a) mean pooling with dynamic padding, (b) flatten with fixed
# padding (every batch padded to 128). Timing covers forward + pooling (tokenization excluded) in each engine.
# Engines alternate within each round; the table keeps each engine's best round (the 2 cores are shared).
# GFLOP/s counts the real tokens' matrix products and attention; the sgemm peak is measured in the same run.
# usage: benchmarks/bench_encoder_cpu.sh [--write] [BUILD_DIR]     (BUILD_DIR default: build)
#   env: THREADS (default nproc), ROUNDS (default 2), LIMIT (texts, default 0 = all 5574), BATCH (32)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
BUILD=${1:-$ROOT/build}
TBERT=$BUILD/tbert
PY=${TBERT_GOLDEN_PYTHON:-/opt/golden/bin/python}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=$CACHE/models/minilm
DATA=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/sms/SMSSpamCollection
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
LIMIT=${LIMIT:-0}
BATCH=${BATCH:-32}
for f in "$MODEL/model.safetensors" "$MODEL/tokenizer.json" "$DATA" "$TBERT"; do
    [ -e "$f" ] || { echo "bench_encoder_cpu.sh: $f not found (models/fetch.sh minilm / build first)" >&2; exit 2; }
done
"$PY" -c "import torch, transformers, onnxruntime, tokenizers" 2>/dev/null ||
    { echo "bench_encoder_cpu.sh: $PY lacks torch/transformers/onnxruntime/tokenizers: the peers cannot run" >&2; exit 2; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
COMMON=(--batch "$BATCH" --max-len 128 --threads "$THREADS")
LIM=()
[ "$LIMIT" != 0 ] && LIM=(--limit "$LIMIT")
export PYTHONPATH="$ROOT/benchmarks/peers${PYTHONPATH:+:$PYTHONPATH}"
# the sgemm reference of the same threads, once, first
"$TBERT" bench --model "$MODEL" --data "$DATA" --limit 64 "${COMMON[@]}" --json >> "$OUT"
run_engines() { # threads pool padding
    local th=$1 pool=$2 pad=$3 fixed=()
    [ "$pad" = fixed ] && fixed=(--fixed-padding)
    local args=(--batch "$BATCH" --max-len 128 --threads "$th" "${LIM[@]}")
    echo "round $r: $th thread(s), $pool/$pad: tbert, onnxruntime, pytorch" >&2
    "$TBERT" bench --model "$MODEL" --data "$DATA" "${args[@]}" --pool "$pool" "${fixed[@]}" --no-sgemm --json >> "$OUT"
    "$PY" "$ROOT/benchmarks/peers/onnx_encoder_cpu.py" --model "$MODEL" --data "$DATA" "${args[@]}" \
        --pool "$pool" --padding "$pad" 2>/dev/null >> "$OUT"
    "$PY" "$ROOT/benchmarks/peers/torch_encoder_cpu.py" --model "$MODEL" --data "$DATA" "${args[@]}" \
        --pool "$pool" --padding "$pad" 2>/dev/null >> "$OUT"
}
for r in $(seq 1 "$ROUNDS"); do
    run_engines "$THREADS" mean dynamic
    run_engines "$THREADS" flatten fixed
    [ "$THREADS" != 1 ] && run_engines 1 mean dynamic
done

TABLE=$("$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peak = rows[0]["sgemm_peak_gflops_per_s"]
ffn = rows[0]["sgemm_ffn_gflops_per_s"]
threads = rows[0]["threads"]
best, cpu1 = {}, {}
for r in rows[1:]:
    if r["threads"] == threads:
        k = (r["pool"], r["padding"], r["engine"])
        if k not in best or r["sequences_per_s"] > best[k]["sequences_per_s"]:
            best[k] = r
    if r["threads"] == 1 and r["pool"] == "mean":
        r["per_cpu_s"] = r["sequences"] / r["cpu_seconds"]
        if r["engine"] not in cpu1 or r["per_cpu_s"] > cpu1[r["engine"]]["per_cpu_s"]:
            cpu1[r["engine"]] = r
need = {(p, d, e) for p, d in [("mean", "dynamic"), ("flatten", "fixed")] for e in ["tbert", "onnxruntime", "pytorch"]}
missing = need - set(best)
if missing:
    sys.exit(f"missing results: {sorted(missing)}")
print("| pooling / padding | engine | sequences/s | tokens/s | GFLOP/s | % of sgemm peak | peak RSS MB | vs ONNX Runtime | vs PyTorch |")
print("|---|---|---|---|---|---|---|---|---|")
for p, d in [("mean", "dynamic"), ("flatten", "fixed")]:
    ort = best[(p, d, "onnxruntime")]["sequences_per_s"]
    pt = best[(p, d, "pytorch")]["sequences_per_s"]
    for e in ["tbert", "onnxruntime", "pytorch"]:
        r = best[(p, d, e)]
        print(f"| {p} / {d} | {e} | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['gflops_per_s']:.1f} | "
              f"{100 * r['gflops_per_s'] / peak:.0f}% | {r['peak_rss_mb']:.0f} | {r['sequences_per_s'] / ort:.2f}x | "
              f"{r['sequences_per_s'] / pt:.2f}x |")
r0 = best[("mean", "dynamic", "tbert")]
print()
print(f"sgemm reference, same {r0['threads']} threads, same run: 2048x2048x2048 {peak:.1f} GFLOP/s, "
      f"4096x1536x384 {ffn:.1f} GFLOP/s. {r0['sequences']} texts, {r0['tokens']:.0f} real tokens "
      f"(dynamic padding: {best[('mean', 'dynamic', 'onnxruntime')]['padded_tokens']:.0f} padded; fixed: "
      f"{best[('flatten', 'fixed', 'onnxruntime')]['padded_tokens']:.0f}).")
print()
if len(cpu1) == 3:
    print("One thread, mean pooling, dynamic padding, throughput per second of CPU time (getrusage / "
          "time.process_time: robust to other load on the shared cores; one thread, so no spin-waiting is counted):")
    print()
    print("| engine | sequences per CPU-second | tokens per CPU-second | GFLOP per CPU-second | wall sequences/s | vs ONNX Runtime |")
    print("|---|---|---|---|---|---|")
    o = cpu1["onnxruntime"]["per_cpu_s"]
    for e in ["tbert", "onnxruntime", "pytorch"]:
        r = cpu1[e]
        print(f"| {e} | {r['per_cpu_s']:.1f} | {r['tokens'] / r['cpu_seconds']:.0f} | "
              f"{r['gflops_per_s'] * r['seconds'] / r['cpu_seconds']:.1f} | {r['sequences_per_s']:.1f} | {r['per_cpu_s'] / o:.2f}x |")
    print()
print(f"peers: {best[('mean', 'dynamic', 'onnxruntime')]['versions']} ({best[('mean', 'dynamic', 'onnxruntime')]['graph']}); "
      f"{best[('mean', 'dynamic', 'pytorch')]['versions']} (attention: {best[('mean', 'dynamic', 'pytorch')]['attention']})")
EOF
)
echo "$TABLE"
if [ "$WRITE" = 1 ]; then
    mkdir -p "$ROOT/build"
    {
        echo "# CPU encoder benchmark (enc)"
        echo
        echo "- date: $(date -u)"
        echo "- machine: $(lscpu | grep -m1 'Model name' | sed 's/.*: *//'), $(nproc) cores ($(uname -m), KVM), shared with other work"
        echo "- command: \`benchmarks/bench_encoder_cpu.sh --write $BUILD\` (THREADS=$THREADS ROUNDS=$ROUNDS LIMIT=$LIMIT BATCH=$BATCH)"
        echo "- workload: all-MiniLM-L6-v2, SMSSpamCollection text column, max_len 128, sorted by length, batches of $BATCH; forward + pooling timed, tokenization not"
        echo "- best of $ROUNDS rounds per engine, engines alternating; load average before the run: $LOAD"
        echo
        echo "$TABLE"
    } > "${RESULTS_OUT:-$ROOT/build/RESULTS_enc.md}"
    echo "wrote ${RESULTS_OUT:-$ROOT/build/RESULTS_enc.md}; merge its table into benchmarks/RESULTS.md"
fi
