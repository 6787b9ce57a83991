#!/usr/bin/env bash
# End-to-end mail throughput (issue 7 Targets): tbert score (CPU) with the default mail recipe and with
# --layers 2, and bogofilter -B on the same messages in the same run. Messages/s and MB/s (MB = 10^6 bytes
# of raw message files).
#
# usage: benchmarks/bench_mail_throughput.sh TBERT [N] [HEAD_DEFAULT] [HEAD_L2]
#   TBERT         the tbert binary (e.g. build-mb/tbert)
#   N             messages to score: N evenly spaced files of the SpamAssassin corpus (default 300; 0 = all
#                 6,046 -- hours for MiniLM on 2 CPU cores)
#   HEAD_*        head checkpoints to score with (default: trained here on the first 60 ham + 60 spam of
#                 hard_ham/spam with the default mail recipe, resp. with --layers 2; accuracy is not the point)
# Needs bogofilter on PATH and the shared corpus (../shared/data or $TBERT_SHARED_DATA).
set -euo pipefail
TBERT=${1:?usage: bench_mail_throughput.sh TBERT [N] [HEAD_DEFAULT] [HEAD_L2]}
N=${2:-300}
HEAD_D=${3:-}
HEAD_2=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${TBERT_SHARED_DATA:-$HERE/../../shared/data}
CORPUS=$DATA/mail/spamassassin
[ -d "$CORPUS" ] || { echo "bench_mail_throughput: corpus not found at $CORPUS" >&2; exit 2; }
command -v bogofilter >/dev/null || { echo "bench_mail_throughput: bogofilter not installed; refusing to run without the peer" >&2; exit 2; }
WORK=$(mktemp -d /tmp/tbert_bench_mail_tp_XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# the sample: every k-th file of the corpus listing (folders sorted, files sorted by name)
for d in easy_ham easy_ham_2 hard_ham spam spam_2; do
    find "$CORPUS/$d" -maxdepth 1 -type f | LC_ALL=C sort
done >"$WORK/all"
TOTAL=$(wc -l <"$WORK/all")
if [ "$N" -le 0 ] || [ "$N" -ge "$TOTAL" ]; then cp "$WORK/all" "$WORK/sample"; else
    awk -v n="$N" -v t="$TOTAL" 'BEGIN{k=t/n} { if (NR-1 >= c*k && c < n) { print; c++ } }' "$WORK/all" >"$WORK/sample"
fi
NMSG=$(wc -l <"$WORK/sample")
mapfile -t FILES <"$WORK/sample"
BYTES=$(xargs -d '\n' stat -c %s <"$WORK/sample" | awk '{s+=$1} END{print s}')

now() { date +%s.%N; }
row() { # name seconds
    awk -v name="$1" -v s="$2" -v n="$NMSG" -v b="$BYTES" \
        'BEGIN{printf "| %s | %d | %.2f | %.1f | %.1f | %.3f |\n", name, n, b/1e6, s, n/s, b/1e6/s}'
}

# heads (trained here when not given)
mkhead() { # out extra-args...
    local out=$1; shift
    local hamf spamf
    hamf=$(find "$CORPUS/hard_ham" -maxdepth 1 -type f | LC_ALL=C sort | sed -n 1,60p)
    spamf=$(find "$CORPUS/spam" -maxdepth 1 -type f | LC_ALL=C sort | sed -n 1,60p)
    # shellcheck disable=SC2086
    "$TBERT" train --quiet --out "$out" --epochs 3 --test-fraction 0 "$@" --ham $hamf --spam $spamf >/dev/null
}
[ -n "$HEAD_D" ] || { HEAD_D=$WORK/head_default; mkhead "$HEAD_D"; }
[ -n "$HEAD_2" ] || { HEAD_2=$WORK/head_l2; mkhead "$HEAD_2" --layers 2; }

# bogofilter: registers the sample's ham and spam (by folder), then classifies it with -B
mkdir -p "$WORK/bogo"
grep -v -e '/spam/' -e '/spam_2/' "$WORK/sample" >"$WORK/sample.ham" || true
grep -e '/spam/' -e '/spam_2/' "$WORK/sample" >"$WORK/sample.spam" || true
[ -s "$WORK/sample.ham" ] && xargs -d '\n' bogofilter -d "$WORK/bogo" -n -B <"$WORK/sample.ham"
[ -s "$WORK/sample.spam" ] && xargs -d '\n' bogofilter -d "$WORK/bogo" -s -B <"$WORK/sample.spam"
t0=$(now)
xargs -d '\n' bogofilter -d "$WORK/bogo" -v -B <"$WORK/sample" >"$WORK/bogo.out" || true
t1=$(now)
[ "$(wc -l <"$WORK/bogo.out")" -eq "$NMSG" ] || { echo "bench_mail_throughput: bogofilter gave $(wc -l <"$WORK/bogo.out") verdicts for $NMSG messages" >&2; exit 1; }
BOGO=$(echo "$t1 - $t0" | bc -l)

score() { # head -> seconds
    local t0 t1
    t0=$(now)
    # one process for the whole sample (xargs would split the list and each part would overwrite --out)
    "$TBERT" score --quiet --head "$1" --out "$WORK/score.jsonl" "${FILES[@]}" 2>"$WORK/score.err" ||
        { cat "$WORK/score.err" >&2; exit 1; }
    t1=$(now)
    [ "$(wc -l <"$WORK/score.jsonl")" -eq "$NMSG" ] || { echo "bench_mail_throughput: tbert score wrote $(wc -l <"$WORK/score.jsonl") records for $NMSG messages" >&2; exit 1; }
    rm -f "$WORK/score.jsonl"
    echo "$t1 - $t0" | bc -l
}
TD=$(score "$HEAD_D")
T2=$(score "$HEAD_2")

echo "| system | messages | MB | seconds | messages/s | MB/s |"
echo "|---|---|---|---|---|---|"
row "bogofilter $(bogofilter -V 2>&1 | sed -n 1p | awk '{print $3}') -B (peer)" "$BOGO"
row "tbert score, CPU, default mail recipe" "$TD"
row "tbert score, CPU, default mail recipe + --layers 2" "$T2"
