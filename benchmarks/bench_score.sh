#!/usr/bin/env bash
# End-to-end throughput of `tbert score` against bogofilter -B in the same run, on the shared SpamAssassin
# corpus (../shared/data/mail/spamassassin) and on a ~1 GB mbox made from it (peak RSS: memory must stay flat).
#
#   benchmarks/bench_score.sh BUILD_DIR [MINILM_MESSAGES (default 200)] [MBOX_COPIES (default 31; 0 = skip)]
#
# Heads are trained here on hard_ham + spam (bogofilter registers the same messages):
#   tiny    tests/models/bert_tiny_shape (random weights, L2/H128) with the default mail recipe (max_len 64)
#   minilm  the default model, default mail recipe (4 windows x 128 tokens + hashed WordPiece + evidence)
#   minilm-L2  the same with --layers 2
#   tiny-1w tests/models/bert_tiny_shape, 1 window of 32 tokens, 512 lexical buckets (for the 1 GB mbox, where
#           the point is flat memory: the default recipe on the tiny model would take ~30 min there)
# MiniLM on 2 CPU cores runs a few messages per second, so it scores an evenly spaced sample of the corpus.
set -euo pipefail
BUILD=${1:?usage: bench_score.sh BUILD_DIR [MINILM_MESSAGES] [MBOX_COPIES]}
NMINI=${2:-200}
COPIES=${3:-31}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$BUILD/tbert
S=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/mail/spamassassin
[ -d "$S/spam" ] || { echo "bench_score.sh: corpus not found at $S" >&2; exit 2; }
command -v bogofilter > /dev/null || { echo "bench_score.sh: bogofilter (the peer) is not installed" >&2; exit 2; }
MINILM=$("$ROOT/models/fetch.sh" minilm | tail -n 1)
W=$(mktemp -d /tmp/tbert_bench_score.XXXXXX)
trap 'rm -rf "$W"' EXIT
export TBERT_CACHE=$W/cache
DIRS=("$S/easy_ham" "$S/easy_ham_2" "$S/hard_ham" "$S/spam" "$S/spam_2")
BYTES=$(find "${DIRS[@]}" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
NMSG=$(find "${DIRS[@]}" -type f | wc -l)

echo "# bench_score.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread)' | sed 's/^/# /'
echo "# corpus: $NMSG messages, $BYTES bytes"

timed() { # timed LOGFILE CMD...: wall seconds and peak RSS (KiB) of CMD
    /usr/bin/time -f '%e %M' -o "$W/time.txt" "${@:2}" > /dev/null 2> "$1"
    cat "$W/time.txt" | tail -n 1
}
row() { # row SYSTEM INPUT MESSAGES BYTES "SECONDS RSS" NOTE
    read -r sec rss <<< "$5"
    awk -v sys="$1" -v inp="$2" -v n="$3" -v b="$4" -v s="$sec" -v r="$rss" -v note="$6" 'BEGIN {
        printf "| %s | %s | %d | %.1f | %.1f | %.2f | %.0f | %s |\n", sys, inp, n, s, n / s, b / 1e6 / s, r / 1024, note }'
}

# ---- training (not timed as part of scoring)
"$BIN" train --model "$ROOT/tests/models/bert_tiny_shape" --max-len 64 --ham "$S/hard_ham" --spam "$S/spam" \
    --out "$W/h-tiny" --quiet > /dev/null 2>&1
"$BIN" train --model "$ROOT/tests/models/bert_tiny_shape" --max-len 32 --windows 1 --lexical-dim 512 --ham "$S/hard_ham" \
    --spam "$S/spam" --out "$W/h-tiny1" --quiet > /dev/null 2>&1
mkdir -p "$W/sub-ham" "$W/sub-spam" "$W/sample"
ls "$S/hard_ham" | head -n 100 | while read -r f; do ln -s "$S/hard_ham/$f" "$W/sub-ham/$f"; done
ls "$S/spam" | head -n 100 | while read -r f; do ln -s "$S/spam/$f" "$W/sub-spam/$f"; done
"$BIN" train --model "$MINILM" --ham "$W/sub-ham" --spam "$W/sub-spam" --out "$W/h-minilm" --quiet > /dev/null 2>&1
"$BIN" train --model "$MINILM" --layers 2 --ham "$W/sub-ham" --spam "$W/sub-spam" --out "$W/h-minilm2" --quiet > /dev/null 2>&1
# bogofilter -B takes message files (a plain folder is not read), so the file names are listed
find "$S/hard_ham" -type f -print0 | xargs -0 bogofilter -d "$W/bogo" -n -B > /dev/null
find "$S/spam" -type f -print0 | xargs -0 bogofilter -d "$W/bogo" -s -B > /dev/null
bogo_files() { find -L "$@" -type f -print0 | xargs -0 bogofilter -d "$W/bogo" -B; }
export -f bogo_files
export W

# an evenly spaced sample for MiniLM
find "${DIRS[@]}" -type f | LC_ALL=C sort | awk -v n="$NMSG" -v k="$NMINI" 'NR % int(n / k) == 0' | head -n "$NMINI" |
    awk '{ printf "%05d %s\n", NR, $0 }' | while read -r i f; do ln -s "$f" "$W/sample/${i}_$(basename "$f")"; done
SBYTES=$(cat "$W"/sample/* | wc -c)
SN=$(ls "$W/sample" | wc -l)

echo
echo "| system | input | messages | seconds | messages/s | MB/s | peak RSS MiB | notes |"
echo "|---|---|---|---|---|---|---|---|"
row "bogofilter 1.2.5 -B" "SpamAssassin corpus" "$NMSG" "$BYTES" "$(timed "$W/bogo.log" bash -c 'bogo_files "$@"' _ "${DIRS[@]}")" "peer"
row "tbert score, tiny random model, mail recipe" "SpamAssassin corpus" "$NMSG" "$BYTES" \
    "$(timed "$W/tiny.log" "$BIN" score --model "$ROOT/tests/models/bert_tiny_shape" --head "$W/h-tiny" --out "$W/o.jsonl" "${DIRS[@]}")" \
    "$(grep 'time on the scoring thread' "$W/tiny.log" | sed 's/^tbert score: time on the scoring thread: //')"
row "bogofilter 1.2.5 -B" "sample" "$SN" "$SBYTES" "$(timed "$W/bogo2.log" bash -c 'bogo_files "$@"' _ "$W/sample"/)" "peer"
row "tbert score, MiniLM, mail recipe (CPU)" "sample" "$SN" "$SBYTES" \
    "$(timed "$W/mini.log" "$BIN" score --model "$MINILM" --head "$W/h-minilm" --out "$W/o.jsonl" "$W/sample")" \
    "$(grep 'time on the scoring thread' "$W/mini.log" | sed 's/^tbert score: time on the scoring thread: //')"
row "tbert score, MiniLM --layers 2, mail recipe (CPU)" "sample" "$SN" "$SBYTES" \
    "$(timed "$W/mini2.log" "$BIN" score --model "$MINILM" --head "$W/h-minilm2" --out "$W/o.jsonl" "$W/sample")" \
    "$(grep 'time on the scoring thread' "$W/mini2.log" | sed 's/^tbert score: time on the scoring thread: //')"

if [ "$COPIES" -gt 0 ]; then
    # ~1 GB mboxrd: the corpus $COPIES times (each message's own From line dropped, body From lines escaped)
    find "${DIRS[@]}" -type f | LC_ALL=C sort | while read -r f; do
        echo "From bench@example.org Mon Sep  2 10:00:00 2002"
        sed -e '1{/^From /d}' -e 's/^\(>*From \)/>\1/' "$f"
        echo
    done > "$W/one.mbox"
    for c in $(seq 1 "$COPIES"); do cat "$W/one.mbox"; done > "$W/big.mbox"
    rm -f "$W/one.mbox"
    MB=$(wc -c < "$W/big.mbox")
    MN=$(grep -c '^From bench@example.org Mon Sep  2 10:00:00 2002$' "$W/big.mbox")
    row "bogofilter 1.2.5 -M" "1 GB mbox" "$MN" "$MB" "$(timed "$W/bogo3.log" bogofilter -d "$W/bogo" -M -I "$W/big.mbox")" "peer"
    row "tbert score, tiny random model, 1 window of 32 tokens" "1 GB mbox" "$MN" "$MB" \
        "$(timed "$W/big.log" "$BIN" score --model "$ROOT/tests/models/bert_tiny_shape" --head "$W/h-tiny1" --out "$W/o.jsonl" "$W/big.mbox")" \
        "$(wc -l < "$W/o.jsonl") records; $(grep 'time on the scoring thread' "$W/big.log" | sed 's/^tbert score: time on the scoring thread: //')"
fi
