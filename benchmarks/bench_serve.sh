#!/usr/bin/env bash
# tbert serve under load (issue 14 "Benchmark"): latency p50/p99 and throughput of the real `spamc -c` against
# `tbert serve --spamd` at concurrency 1, 8 and 64, beside its peers measured in the same run on the same
# messages: `tbert score` (one process over all of them: the throughput serve should approach), SpamAssassin's
# own spamd (default rules, network tests off: `spamd -L`, its own port, the same spamc -c, same concurrencies;
# installed by this script when missing: Debian's spamd + spamassassin) and bogofilter per message (one
# `bogofilter` process per message, as procmail runs it, same concurrencies).
# Latency is wall time per client process (spawn included, for spamc and bogofilter alike); throughput =
# messages / wall time of the whole batch. Memory from /proc: tbert serve's peak (VmHWM); spamd's parent and
# children summed after the runs (RSS counts the pages they share once per process, PSS divides them).
#
# usage: benchmarks/bench_serve.sh TBERT [N] [MODEL] [HEAD]
#   TBERT   the tbert binary (e.g. build/cpu/tbert)
#   N       messages: N evenly spaced files of the SpamAssassin corpus (default 300)
#   MODEL   --model (default minilm)
#   HEAD    a head checkpoint (default: trained here on the first 60 hard_ham + 60 spam with the default mail
#           recipe; accuracy is not the point)
# Needs spamc and bogofilter on PATH and the shared corpus (../shared/data or $TBERT_SHARED_DATA); spamd is
# installed with apt-get when missing (as root, or through sudo). Refuses to run without a peer.
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
if ! command -v spamd > /dev/null && [ ! -x /usr/sbin/spamd ]; then # the peer SpamAssassin: Debian's packages
    echo "bench_serve: installing SpamAssassin's spamd (apt-get install spamd spamassassin)" >&2
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends spamd spamassassin > /dev/null ||
        { echo "bench_serve: cannot install spamd; refusing to run without it" >&2; exit 2; }
fi
SPAMD=$(command -v spamd || echo /usr/sbin/spamd)
WORK=$(mktemp -d /tmp/tbert_bench_serve_XXXXXX)
SERVER= SPAMD_PID=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2> /dev/null; [ -n "$SPAMD_PID" ] && kill "$SPAMD_PID" 2> /dev/null; rm -rf "$WORK"' EXIT

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
verdicts() { # verdicts PORT: how many of the sample spamc -c calls spam (exit 1); errors fail the run
    local n=0 f rc
    while read -r f; do
        rc=0; spamc -x -d 127.0.0.1 -p "$1" -c < "$f" > /dev/null || rc=$?
        [ $rc -le 1 ] || { echo "bench_serve: spamc failed ($rc) on $f" >&2; exit 1; }
        n=$((n + rc))
    done < "$WORK/sample"
    echo $n
}
TB_VERDICTS=$(verdicts "$PORT")
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=

# SpamAssassin's spamd: default rules (/usr/share/spamassassin), -L: local tests only (no DNS, no network),
# -x: no per-user configuration, its own loopback port; its default of 5 children
SPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SAUSER=nobody
[ "$(id -u)" -eq 0 ] || SAUSER=$(id -un)
"$SPAMD" -L -x -u "$SAUSER" --listen "127.0.0.1:$SPORT" --syslog=stderr --pidfile "$WORK/spamd.pid" 2> "$WORK/spamd.log" &
SPAMD_PID=$!
for _ in $(seq 1 1200); do spamc -x -d 127.0.0.1 -p "$SPORT" -K > /dev/null 2>&1 && break; sleep 0.25; done # PING
spamc -x -d 127.0.0.1 -p "$SPORT" -K > /dev/null 2>&1 || { tail "$WORK/spamd.log" >&2; echo "bench_serve: spamd did not start" >&2; exit 1; }
SPAMD_PID=$(cat "$WORK/spamd.pid")
head -5 "$WORK/sample" | while read -r f; do spamc -d 127.0.0.1 -p "$SPORT" -c < "$f" > /dev/null || true; done # warm up
for c in 1 8 64; do
    t0=$(now)
    per_message "$c" spamc -x -d 127.0.0.1 -p "$SPORT" -c > "$WORK/slat.$c"
    t1=$(now)
    stats "SpamAssassin spamd 4 + spamc -c (peer)" "$c" "$(awk -v a="$t0" -v b="$t1" "BEGIN { print b - a }")" < "$WORK/slat.$c"
done
SA_VERDICTS=$(verdicts "$SPORT")
SA_PIDS="$SPAMD_PID $(for f in /proc/[0-9]*/stat; do awk -v p="$SPAMD_PID" '{ sub(/^.*\) /, ""); if ($2 == p) { split(FILENAME, a, "/"); print a[3] } }' "$f" 2> /dev/null; done)"
SA_RSS=0 SA_PSS=0 SA_N=0
for p in $SA_PIDS; do
    r=$(awk '/^VmRSS/ {print $2}' /proc/"$p"/status 2> /dev/null || echo 0)
    q=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2> /dev/null || echo 0)
    SA_RSS=$((SA_RSS + ${r:-0})) SA_PSS=$((SA_PSS + ${q:-0})) SA_N=$((SA_N + 1))
done
kill -TERM "$SPAMD_PID"
for _ in $(seq 1 100); do kill -0 "$SPAMD_PID" 2> /dev/null || break; sleep 0.1; done
SPAMD_PID=

for c in 1 8 64; do
    t0=$(now)
    per_message "$c" bogofilter -d "$WORK/bogo" > "$WORK/blat.$c"
    t1=$(now)
    stats "bogofilter per message (peer)" "$c" "$(awk -v a="$t0" -v b="$t1" "BEGIN { print b - a }")" < "$WORK/blat.$c"
done
echo
echo "tbert serve peak resident memory: $((HWM / 1024)) MiB"
echo "SpamAssassin spamd after the runs: $SA_N processes, RSS summed $((SA_RSS / 1024)) MiB, PSS summed $((SA_PSS / 1024)) MiB"
echo "verdicts on the sample (spamc -c exit status 1 = spam): spamd $SA_VERDICTS, tbert serve $TB_VERDICTS (of $NMSG; $(grep -c -e '/spam/' -e '/spam_2/' "$WORK/sample") from the spam folders)"
grep -c ' ms' "$WORK/serve.log" | awk '{ print "tbert serve log lines (one per message): " $1 }'
