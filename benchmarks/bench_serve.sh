#!/usr/bin/env bash
# tbert serve under load (issue 14 "Benchmark"): latency p50/p99 and throughput of the real `spamc -c` against
# `tbert serve --spamd` at concurrency 1, 8 and 64, beside its peers measured in the same run on the same
# messages: `tbert score` (one process over all of them: the throughput serve should approach) and
# bogofilter per message (one `bogofilter` process per message, as procmail runs it, same concurrencies).
# Latency is wall time per client process (spawn included, for spamc and bogofilter alike); throughput =
# messages / wall time of the whole batch. Peak resident memory of the server is read from /proc.
#
# usage: benchmarks/bench_serve.sh TBERT [N] [MODEL] [HEAD]
#   TBERT   the tbert binary (e.g. build/cpu/tbert)
#   N       messages: N evenly spaced files of the SpamAssassin corpus (default 300)
#   MODEL   --model (default minilm)
#   HEAD    a head checkpoint (default: trained here on the first 60 hard_ham + 60 spam with the default mail
#           recipe; accuracy is not the point)
# Needs spamc and bogofilter on PATH and the shared corpus (../shared/data or $TBERT_SHARED_DATA). Refuses to
# run without a peer. Not measured here: SpamAssassin's own spamd (not installed: it pulls Perl and the rules).
set -euo pipefail
TBERT=$(realpath "${1:?usage: bench_serve.sh TBERT [N] [MODEL] [HEAD]}")
N=${2:-300}
MODEL=${3:-minilm}
HEAD=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${TBERT_SHARED_DATA:-$HERE/../../shared/data}
CORPUS=$DATA/mail/spamassassin
[ -d "$CORPUS" ] || { echo "bench_serve: corpus not found at $CORPUS" >&2; exit 2; }
for t in spamc bogofilter; do
    command -v $t > /dev/null || { echo "bench_serve: $t not installed; refusing to run without it" >&2; exit 2; }
done
WORK=$(mktemp -d /tmp/tbert_bench_serve_XXXXXX)
SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null; rm -rf "$WORK"' EXIT

for d in easy_ham easy_ham_2 hard_ham spam spam_2; do find "$CORPUS/$d" -maxdepth 1 -type f | LC_ALL=C sort; done > "$WORK/all"
TOTAL=$(wc -l < "$WORK/all")
awk -v n="$N" -v t="$TOTAL" 'BEGIN{k=t/n} { if (NR-1 >= c*k && c < n) { print; c++ } }' "$WORK/all" > "$WORK/sample"
NMSG=$(wc -l < "$WORK/sample")

if [ -z "$HEAD" ]; then
    HEAD=$WORK/head
    # shellcheck disable=SC2046
    "$TBERT" train --quiet --model "$MODEL" --out "$HEAD" --ham $(find "$CORPUS/hard_ham" -type f | LC_ALL=C sort | sed -n 1,60p) \
        --spam $(find "$CORPUS/spam" -type f | LC_ALL=C sort | sed -n 1,60p) > /dev/null
fi
mkdir -p "$WORK/bogo"
grep -v -e '/spam/' -e '/spam_2/' "$WORK/sample" | xargs -d '\n' bogofilter -d "$WORK/bogo" -n -B
grep -e '/spam/' -e '/spam_2/' "$WORK/sample" | xargs -d '\n' bogofilter -d "$WORK/bogo" -s -B

now() { date +%s.%N; }
stats() { # stats NAME CONC WALL < latencies in ns, one per line -> a table row
    sort -n | awk -v name="$1" -v c="$2" -v w="$3" '{ a[NR] = $1 } END {
        p50 = a[int((NR - 1) * 0.50) + 1] / 1e6; p99 = a[int((NR - 1) * 0.99) + 1] / 1e6
        printf "| %s | %d | %d | %.1f | %.1f | %.1f |\n", name, c, NR, p50, p99, NR / w }'
}
per_message() { # per_message CONC CMD...: runs CMD < file for every file, CONC at a time; prints ns per run
    local conc=$1; shift
    CMD="$*" xargs -d '\n' -P "$conc" -I{} bash -c 'a=$(date +%s%N); $CMD < "$1" > /dev/null; rc=$?; b=$(date +%s%N)
        [ $rc -le 2 ] || { echo "bench_serve: $CMD failed ($rc) on $1" >&2; exit 255; }; echo $((b - a))' _ {} < "$WORK/sample"
}

echo "# bench_serve: $(date -u '+%a %b %d %Y %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $NMSG messages of $CORPUS, model $MODEL, head $HEAD"
echo
echo "| system | concurrency | messages | p50 ms | p99 ms | messages/s |"
echo "|---|---|---|---|---|---|"

# tbert score: one process, all messages (throughput only)
t0=$(now)
xargs -d '\n' "$TBERT" score --quiet --model "$MODEL" --head "$HEAD" --out "$WORK/score.jsonl" < "$WORK/sample" 2> /dev/null
t1=$(now)
[ "$(wc -l < "$WORK/score.jsonl")" -eq "$NMSG" ] || { echo "bench_serve: tbert score wrote $(wc -l < "$WORK/score.jsonl") records" >&2; exit 1; }
awk -v n="$NMSG" -v a="$t0" -v b="$t1" 'BEGIN { printf "| tbert score (one process, peer) | - | %d | - | - | %.1f |\n", n, n / (b - a) }'

# tbert serve + spamc
"$TBERT" serve --model "$MODEL" --head "$HEAD" --spamd 127.0.0.1:0 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 1 600); do grep -q "listening on spamd" "$WORK/serve.log" && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/serve.log")
[ -n "$PORT" ] || { cat "$WORK/serve.log" >&2; exit 1; }
head -5 "$WORK/sample" | while read -r f; do spamc -d 127.0.0.1 -p "$PORT" -c < "$f" > /dev/null || true; done # warm up
for c in 1 8 64; do
    t0=$(now)
    per_message "$c" spamc -x -d 127.0.0.1 -p "$PORT" -c > "$WORK/lat.$c"
    t1=$(now)
    stats "tbert serve + spamc -c" "$c" "$(awk -v a="$t0" -v b="$t1" "BEGIN { print b - a }")" < "$WORK/lat.$c"
done
HWM=$(awk '/^VmHWM/ {print $2}' /proc/"$SERVER"/status)
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=
for c in 1 8 64; do
    t0=$(now)
    per_message "$c" bogofilter -d "$WORK/bogo" > "$WORK/blat.$c"
    t1=$(now)
    stats "bogofilter per message (peer)" "$c" "$(awk -v a="$t0" -v b="$t1" "BEGIN { print b - a }")" < "$WORK/blat.$c"
done
echo
echo "tbert serve peak resident memory: $((HWM / 1024)) MiB"
grep -c ' ms' "$WORK/serve.log" | awk '{ print "tbert serve log lines (one per message): " $1 }'
