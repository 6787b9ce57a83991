#!/usr/bin/env bash
# Where tokenization runs in `tbert score` (issue 13): two tbert binaries (BEFORE: tokenization on the scoring
# thread inside the featurizer; AFTER: tokenization in the parse workers) score the same messages with a head
# whose recipe uses MiniLM with --layers 1, so that the encoder is cheap and the stages around it show.
# Rounds alternate BEFORE / AFTER (this machine is shared: its noise is larger than the effect); each run's
# wall seconds and CPU seconds (user + sys, /usr/bin/time) are printed, then the medians. The outputs of the two
# binaries must be byte-identical (checked every round). The peer, bogofilter -B, classifies the same files in
# every round.
#
#   benchmarks/bench_score_workers.sh BEFORE_TBERT AFTER_TBERT [MESSAGES (default 2000; 0 = all 6,046)] [ROUNDS (default 3)]
#                                     [MODEL (default minilm; e.g. tests/models/bert_tiny_shape, where the encoder
#                                      costs least and the stages around it show most)]
# TRAIN_ARGS (environment) adds options to the head's training, e.g. TRAIN_ARGS="--max-len 64" for a model of 64
# positions.
#
# Needs the shared corpus (../shared/data/mail/spamassassin or $TBERT_SHARED_DATA), the MiniLM model
# (models/fetch.sh minilm) and bogofilter.
set -euo pipefail
BEFORE=${1:?usage: bench_score_workers.sh BEFORE_TBERT AFTER_TBERT [MESSAGES] [ROUNDS]}
AFTER=${2:?usage: bench_score_workers.sh BEFORE_TBERT AFTER_TBERT [MESSAGES] [ROUNDS]}
N=${3:-2000}
ROUNDS=${4:-3}
MODEL=${5:-minilm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${TBERT_SHARED_DATA:-$ROOT/../shared/data}/mail/spamassassin
[ -d "$S/spam" ] || { echo "bench_score_workers.sh: corpus not found at $S" >&2; exit 2; }
command -v bogofilter > /dev/null || { echo "bench_score_workers.sh: bogofilter (the peer) is not installed" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_score_workers.sh: /usr/bin/time is needed for CPU seconds" >&2; exit 2; }
if [ "$MODEL" = minilm ]; then MINILM=$("$ROOT/models/fetch.sh" minilm | tail -n 1); else MINILM=$(cd "$MODEL" && pwd); fi
W=$(mktemp -d /tmp/tbert_bench_workers.XXXXXX)
trap 'rm -rf "$W"' EXIT
export TBERT_CACHE=$W/cache

for d in easy_ham easy_ham_2 hard_ham spam spam_2; do find "$S/$d" -maxdepth 1 -type f | LC_ALL=C sort; done > "$W/all"
TOTAL=$(wc -l < "$W/all")
if [ "$N" -le 0 ] || [ "$N" -ge "$TOTAL" ]; then cp "$W/all" "$W/sample"; else
    awk -v n="$N" -v t="$TOTAL" 'BEGIN { k = t / n } { if (NR - 1 >= c * k && c < n) { print; c++ } }' "$W/all" > "$W/sample"
fi
NMSG=$(wc -l < "$W/sample")
mapfile -t FILES < "$W/sample"

echo "# bench_score_workers.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $NMSG messages, $ROUNDS rounds, model $MINILM --layers 1 ${TRAIN_ARGS:-}"
lscpu | grep -E '^(Model name|CPU\(s\))' | sed 's/^/# /'
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# the head: 60 hard_ham + 60 spam, default mail recipe, the model with --layers 1 (trained once, by AFTER)
mkdir -p "$W/ham" "$W/spam"
find "$S/hard_ham" -maxdepth 1 -type f | LC_ALL=C sort | head -n 60 | while read -r f; do ln -s "$f" "$W/ham/"; done
find "$S/spam" -maxdepth 1 -type f | LC_ALL=C sort | head -n 60 | while read -r f; do ln -s "$f" "$W/spam/"; done
# shellcheck disable=SC2086
"$AFTER" train --model "$MINILM" --layers 1 ${TRAIN_ARGS:-} --ham "$W/ham" --spam "$W/spam" --out "$W/head" --quiet > /dev/null 2> "$W/train.err" ||
    { echo "bench_score_workers.sh: training the head failed:" >&2; tail -n 3 "$W/train.err" >&2; exit 1; }
# bogofilter learns the same messages
find -L "$W/ham" -type f -print0 | xargs -0 bogofilter -d "$W/bogo" -n -B > /dev/null
find -L "$W/spam" -type f -print0 | xargs -0 bogofilter -d "$W/bogo" -s -B > /dev/null

run() { # run NAME STDOUT CMD...: appends "NAME wall user sys" to $W/times
    local name=$1 out=$2
    shift 2
    /usr/bin/time -f '%e %U %S' -o "$W/time.txt" "$@" > "$out" 2> "$W/$name.err" || {
        echo "bench_score_workers.sh: $name failed:" >&2
        tail -n 5 "$W/$name.err" >&2
        exit 1
    }
    echo "$name $(tail -n 1 "$W/time.txt")" >> "$W/times"
}

for r in $(seq 1 "$ROUNDS"); do
    # --json: the run's totals (featurize / head / write / wait seconds on the scoring thread, parse seconds
    # summed over the workers) on stdout; the records go to --out
    run before "$W/before.json" "$BEFORE" score --model "$MINILM" --head "$W/head" --out "$W/before.jsonl" --json "${FILES[@]}"
    run after "$W/after.json" "$AFTER" score --model "$MINILM" --head "$W/head" --out "$W/after.jsonl" --json "${FILES[@]}"
    # bogofilter exits 0 (spam), 1 (ham) or 2 (unsure) for the last message; 3 is an error
    run bogofilter "$W/bogo.txt" bash -c 'bogofilter "$@"; [ $? -le 2 ]' bogofilter -d "$W/bogo" -B "${FILES[@]}"
    cmp -s "$W/before.jsonl" "$W/after.jsonl" || { echo "bench_score_workers.sh: round $r: outputs differ" >&2; exit 1; }
    [ "$(wc -l < "$W/after.jsonl")" -eq "$NMSG" ] || { echo "bench_score_workers.sh: round $r: not one record per message" >&2; exit 1; }
    echo "# round $r: before: $(cat "$W/before.json")"
    echo "# round $r: after:  $(cat "$W/after.json")"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | system | messages | wall s | CPU s (user + sys) | messages/s | CPU ms per message |"
echo "|---|---|---|---|---|---|---|"
awk -v n="$NMSG" '{ c[$1]++; printf "| %d | %s | %d | %.1f | %.1f | %.1f | %.2f |\n", c[$1], $1, n, $2, $3 + $4, n / $2, 1000 * ($3 + $4) / n }' "$W/times"
echo
echo "| system | median wall s | median CPU s | messages/s (median wall) | CPU ms per message (median) |"
echo "|---|---|---|---|---|"
for sys in before after bogofilter; do
    awk -v s="$sys" '$1 == s { print $2, $3 + $4 }' "$W/times" | sort -n -k1,1 > "$W/w"
    awk -v s="$sys" '$1 == s { print $3 + $4 }' "$W/times" | sort -n > "$W/c"
    awk -v s="$sys" -v n="$NMSG" 'NR == FNR { w[NR] = $1; nw = NR; next } { c[FNR] = $1; nc = FNR }
        END { mw = w[int((nw + 1) / 2)]; mc = c[int((nc + 1) / 2)]
              printf "| %s | %.1f | %.1f | %.1f | %.2f |\n", s, mw, mc, n / mw, 1000 * mc / n }' "$W/w" "$W/c"
done
