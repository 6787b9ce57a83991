#!/usr/bin/env bash
# Tokenizer benchmark (issue 3): tbert vs Hugging Face `tokenizers` in one run, on the SMS corpus's text
# column repeated 20 times, max_len 128: single thread (HF with RAYON_NUM_THREADS=1, encode_batch), then tbert
# with 2 threads (texts split over threads, and one padded tbert_encode_batch). Prints a markdown table; with --write also writes build/RESULTS_tok.md (to merge into benchmarks/RESULTS.md).
# usage: benchmarks/bench_tokenizer.sh [--write] [BUILD_DIR]   (BUILD_DIR default: build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
BUILD=${1:-$ROOT/build}
PY=${TBERT_GOLDEN_PYTHON:-/opt/golden/bin/python}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=$CACHE/models/minilm
CORPUS=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/sms/SMSSpamCollection
REPEAT=${REPEAT:-20}
MAXLEN=${MAXLEN:-128}
for f in "$MODEL/vocab.txt" "$MODEL/tokenizer.json" "$CORPUS" "$BUILD/benchmarks/bench_tokenizer"; do
    [ -e "$f" ] || { echo "bench_tokenizer.sh: $f not found (fetch the model / build first)" >&2; exit 2; }
done
"$PY" -c "import tokenizers" 2>/dev/null || { echo "bench_tokenizer.sh: $PY has no tokenizers; the peer cannot run" >&2; exit 2; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
"$BUILD/benchmarks/bench_tokenizer" --vocab "$MODEL/vocab.txt" --corpus "$CORPUS" --tsv --repeat "$REPEAT" \
    --max-len "$MAXLEN" --threads 1,2 >> "$OUT"
RAYON_NUM_THREADS=1 "$PY" "$ROOT/benchmarks/peers/hf_tokenizers.py" --tokenizer-json "$MODEL/tokenizer.json" \
    --corpus "$CORPUS" --tsv --repeat "$REPEAT" --max-len "$MAXLEN" >> "$OUT"

TABLE=$(awk '
/^RESULT/ { name[NR] = $2; th[NR] = $3; tok[NR] = $5; sec[NR] = $6; mbs[NR] = $7; mts[NR] = $8; order[++n] = NR
            if ($2 == "hf_tokenizers" && $3 == "1") hf = $7; if ($2 == "hf_tokenizers") hftok = $5 }
END {
    if (hf == "") { print "hf peer missing" > "/dev/stderr"; exit 1 }
    print "| tokenizer | threads | seconds | MB/s | M tokens/s | vs HF 1 thread |"
    print "|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) { r = order[i]
        if (tok[r] != hftok) { printf "token count differs: %s %s vs hf %s\n", name[r], tok[r], hftok > "/dev/stderr"; bad = 1 }
        printf "| %s | %s | %.3f | %.2f | %.3f | %.1fx |\n", name[r], th[r], sec[r], mbs[r], mts[r], mbs[r] / hf }
    exit bad
}' "$OUT")
echo "$TABLE"
if [ "$WRITE" = 1 ]; then
    mkdir -p "$ROOT/build"
    {
        echo "# Tokenizer benchmark (tok)"
        echo
        echo "- date: $(date -u)"
        echo "- machine: $(lscpu | grep -m1 'Model name' | sed 's/.*: *//'), $(nproc) cores ($(uname -m), KVM)"
        echo "- command: \`benchmarks/bench_tokenizer.sh --write $BUILD\`"
        echo "- corpus: SMSSpamCollection text column x$REPEAT ($(awk '/^RESULT hf/ {printf "%.1f MB", $4/1e6; exit}' "$OUT")), max_len $MAXLEN, truncation on, no padding"
        echo "- peer: tokenizers $("$PY" -c 'import tokenizers; print(tokenizers.__version__)') (tokenizer.json of minilm), encode_batch, RAYON_NUM_THREADS as listed; best of 3 rounds each"
        echo '- tbert_encode: one call per text, texts split over the threads (as `tbert tokenize` does); tbert_encode_batch: one padded batch of all texts (allocates texts x max_len ids)'
        echo "- load average before the run: $LOAD (the 2 cores are shared with other work; rerun on a quiet machine for clean numbers)"
        echo
        echo "$TABLE"
    } > "${RESULTS_OUT:-$ROOT/build/RESULTS_tok.md}"
    echo "wrote ${RESULTS_OUT:-$ROOT/build/RESULTS_tok.md}; merge its table into benchmarks/RESULTS.md"
fi
