#!/usr/bin/env bash
# tbert serve under load (issue 14 "Benchmark"): latency p50/p99 and throughput of `tbert serve --spamd` at
# concurrency 1, 8 and 64, beside its peers measured in the same run on the same messages: `tbert score` (one
# process over all of them: the throughput serve should approach), SpamAssassin's own spamd (default rules,
# network tests off: `spamd -L`, its own port, the same clients, same concurrencies; installed by this script
# when missing: Debian's spamd + spamassassin) and bogofilter per message (one `bogofilter` process per message,
# as procmail runs it, same concurrencies).
# Two clients for both spamd servers, both driven by benchmarks/spamd_load (built beside tbert):
#   - direct: spamd_load speaks the protocol itself (CHECK SPAMC/1.5, one connection per message, C client
#     threads, the messages in memory), as an MTA does (Exim's spamd_address, a milter: no process per
#     message). **The throughput target (concurrency 64 >= 80% of `tbert score`) is read on these rows**: the
#     client costs almost nothing, so the rows measure the server, and `tbert score` has no client either.
#   - spamc -c: the real `spamc -x -c`, one process per message (as procmail runs it), started by spamd_load
#     --exec with posix_spawn, stdin from the file (no bash or date processes around it). Its process per message
#     competes with the server for the same cores.
# Latency: per request, connect to end of answer (direct) or spawn to exit (spamc, bogofilter: spawn included);
# throughput = messages / wall time of the whole batch. CPU per message from /proc (user + sys): the server's
# (tbert serve; spamd's parent, its live children and its reaped children) over each run, and the client's
# (spamd_load itself and the processes it started); for `tbert score` the whole process, model load included. Memory from /proc: tbert serve's peak (VmHWM); spamd's
# parent and children summed after the runs (RSS counts the pages they share once per process, PSS divides them).
#
# usage: benchmarks/bench_serve.sh TBERT [N] [MODEL] [HEAD]
#   TBERT   the tbert binary (e.g. build/cpu/tbert); spamd_load is taken from its build folder
#           (TBERT/../benchmarks/spamd_load) unless SPAMD_LOAD names it
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
LOAD=${SPAMD_LOAD:-$(dirname "$TBERT")/benchmarks/spamd_load}
[ -x "$LOAD" ] || { echo "bench_serve: $LOAD not found (build the benchmarks, or set SPAMD_LOAD)" >&2; exit 2; }
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
TCK=$(getconf CLK_TCK)
proc_cpu() { # proc_cpu PID...: user + sys ticks of the processes (own and reaped children's; gone ones count 0)
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' /proc/"$p"/stat 2> /dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo $t
}
children_of() { # children_of PID: the PIDs whose parent is PID
    local f
    for f in /proc/[0-9]*/stat; do
        awk -v p="$1" '{ sub(/^.*\) /, ""); if ($2 == p) { split(FILENAME, a, "/"); print a[3] } }' "$f" 2> /dev/null
    done
}
field() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" "$2"; } # field KEY FILE: a value of spamd_load's line
row() { # row NAME CONC OUT SERVER_TICKS: a table row from spamd_load's line in OUT
    awk -v name="$1" -v c="$2" -v st="$4" -v tck="$TCK" -v line="$(cat "$3")" 'BEGIN {
        n = split(line, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], x, "="); v[x[1]] = x[2] }
        srv = st == "-" ? "-" : sprintf("%.1f", st / tck * 1000 / v["requests"])
        printf "| %s | %d | %d | %.1f | %.1f | %.1f | %s | %.1f |\n", name, c, v["requests"], v["p50_ms"], v["p99_ms"],
               v["msg_per_s"], srv, v["client_cpu_s"] * 1000 / v["requests"] }'
}
run_load() { # run_load NAME CONC OUT PIDS_FUNC LOAD_ARGS...: one spamd_load run, its table row; the server's CPU
    # is read before and after from the PIDs PIDS_FUNC prints ("-": no server)
    local name=$1 conc=$2 out=$3 pids=$4 a=0 b=0
    shift 4
    # shellcheck disable=SC2046 # one PID per word
    [ "$pids" = - ] || a=$(proc_cpu $($pids))
    "$LOAD" --concurrency "$conc" --files "$WORK/sample" "$@" > "$out" ||
        { echo "bench_serve: spamd_load $* failed (see above)" >&2; exit 1; }
    # shellcheck disable=SC2046
    [ "$pids" = - ] || b=$(proc_cpu $($pids))
    row "$name" "$conc" "$out" "$([ "$pids" = - ] && echo - || echo $((b - a)))"
}

echo "# bench_serve: $(date -u '+%a %b %d %Y %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $NMSG messages of $CORPUS, model $MODEL, head $HEAD"
echo "# clients: direct = spamd_load (CHECK per connection, no process per message); spamc -c = one spamc -x -c"
echo "# process per message (spamd_load --exec). The >= 80% throughput target is read on the direct rows."
echo
echo "| system | concurrency | messages | p50 ms | p99 ms | messages/s | server CPU ms/msg | client CPU ms/msg |"
echo "|---|---|---|---|---|---|---|---|"

# tbert score: one process, all messages (throughput only; its CPU from the shell's children times)
# (`times` in this shell, not in a $(...) subshell, which has no children of its own)
cpu_children() { awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } print t }' "$1"; }
times > "$WORK/times0"
t0=$(now)
xargs -d '\n' "$TBERT" score --quiet --model "$MODEL" --head "$HEAD" --out "$WORK/score.jsonl" < "$WORK/sample" 2> /dev/null
t1=$(now)
times > "$WORK/times1"
c0=$(cpu_children "$WORK/times0") c1=$(cpu_children "$WORK/times1")
[ "$(wc -l < "$WORK/score.jsonl")" -eq "$NMSG" ] || { echo "bench_serve: tbert score wrote $(wc -l < "$WORK/score.jsonl") records" >&2; exit 1; }
SCORE_RATE=$(awk -v n="$NMSG" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
awk -v n="$NMSG" -v r="$SCORE_RATE" -v a="$c0" -v b="$c1" 'BEGIN {
    printf "| tbert score (one process, peer) | - | %d | - | - | %.1f | %.1f | - |\n", n, r, (b - a) * 1000 / n }'

# tbert serve: the direct client, then spamc -c
"$TBERT" serve --model "$MODEL" --head "$HEAD" --spamd 127.0.0.1:0 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 1 600); do grep -q "listening on spamd" "$WORK/serve.log" && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/serve.log")
[ -n "$PORT" ] || { cat "$WORK/serve.log" >&2; exit 1; }
tbert_pids() { echo "$SERVER"; }
head -5 "$WORK/sample" | "$LOAD" --port "$PORT" --files - > /dev/null # warm up
for c in 1 8 64; do run_load "tbert serve + direct client" $c "$WORK/tb.direct.$c" tbert_pids --port "$PORT"; done
for c in 1 8 64; do
    run_load "tbert serve + spamc -c" $c "$WORK/tb.spamc.$c" tbert_pids --exec "spamc -x -d 127.0.0.1 -p $PORT -c"
done
HWM=$(awk '/^VmHWM/ {print $2}' /proc/"$SERVER"/status)
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
spamd_pids() { echo "$SPAMD_PID"; children_of "$SPAMD_PID"; } # the parent's reaped children are in its own ticks
head -5 "$WORK/sample" | "$LOAD" --port "$SPORT" --files - > /dev/null # warm up
for c in 1 8 64; do run_load "SpamAssassin spamd 4 + direct client (peer)" $c "$WORK/sa.direct.$c" spamd_pids --port "$SPORT"; done
for c in 1 8 64; do
    run_load "SpamAssassin spamd 4 + spamc -c (peer)" $c "$WORK/sa.spamc.$c" spamd_pids --exec "spamc -x -d 127.0.0.1 -p $SPORT -c"
done
SA_RSS=0 SA_PSS=0 SA_N=0
for p in $(spamd_pids); do
    r=$(awk '/^VmRSS/ {print $2}' /proc/"$p"/status 2> /dev/null || echo 0)
    q=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2> /dev/null || echo 0)
    SA_RSS=$((SA_RSS + ${r:-0})) SA_PSS=$((SA_PSS + ${q:-0})) SA_N=$((SA_N + 1))
done
kill -TERM "$SPAMD_PID"
for _ in $(seq 1 100); do kill -0 "$SPAMD_PID" 2> /dev/null || break; sleep 0.1; done
SPAMD_PID=

for c in 1 8 64; do run_load "bogofilter per message (peer)" $c "$WORK/bogo.$c" - --exec "bogofilter -d $WORK/bogo"; done
echo
ratio() { awk -v a="$(field msg_per_s "$1")" -v b="$SCORE_RATE" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
echo "tbert serve at concurrency 64 / tbert score: direct client $(ratio "$WORK/tb.direct.64") (the target: >= 80%)," \
    "spamc -c $(ratio "$WORK/tb.spamc.64")"
echo "tbert serve peak resident memory: $((HWM / 1024)) MiB"
echo "SpamAssassin spamd after the runs: $SA_N processes, RSS summed $((SA_RSS / 1024)) MiB, PSS summed $((SA_PSS / 1024)) MiB"
echo "verdicts on the sample (spam of $NMSG; $(grep -c -e '/spam/' -e '/spam_2/' "$WORK/sample") from the spam folders):" \
    "tbert serve direct $(for c in 1 8 64; do field spam "$WORK/tb.direct.$c"; done | paste -sd/)," \
    "spamc -c $(for c in 1 8 64; do field exit1 "$WORK/tb.spamc.$c"; done | paste -sd/);" \
    "spamd direct $(for c in 1 8 64; do field spam "$WORK/sa.direct.$c"; done | paste -sd/)," \
    "spamc -c $(for c in 1 8 64; do field exit1 "$WORK/sa.spamc.$c"; done | paste -sd/) (at concurrency 1/8/64)"
grep -c ' ms' "$WORK/serve.log" | awk '{ print "tbert serve log lines (one per message): " $1 }'
