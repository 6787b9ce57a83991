#!/usr/bin/env bash
# Peak RSS of `tbert train --ham --spam` (default mail recipe) as the number of messages grows, against the
# dense-row tbert (PEER_BIN, e.g. a build of the parent commit) in the same run.
#
# usage: benchmarks/bench_train_memory.sh [SIZES...]      (default: 1000 10000 100000)
# env:   TBERT_BIN   the tbert under test (default build/cpu/tbert)
#        PEER_BIN    the tbert to compare with (optional; skipped for sizes above PEER_MAX, default 10000:
#                    dense rows need 193 KB a message, 19 GB at 100k)
#        MODEL       model folder (default $TBERT_CACHE/models/minilm, used with --layers 1: feature memory does
#                    not depend on depth, and 1 layer keeps 100k messages to minutes on 2 cores)
#        CORPUS      SpamAssassin folder (default ../shared/data/mail/spamassassin)
#        WORK        scratch folder (default /tmp/tbert_bench_mem); sets are built there once
#        EPOCHS      head epochs (default 2; the rows are in memory for the whole run either way)
# Each run gets a fresh TBERT_CACHE (empty store: every message is encoded). Prints one line per run:
#   binary, messages, peak RSS (MB), KB per message above the smallest size's peak, user+sys CPU s, wall s.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TBERT_BIN:-$root/build/cpu/tbert}
PEER=${PEER_BIN:-}
PEER_MAX=${PEER_MAX:-10000}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=${MODEL:-$CACHE/models/minilm}
CORPUS=${CORPUS:-$root/../shared/data/mail/spamassassin}
WORK=${WORK:-/tmp/tbert_bench_mem}
EPOCHS=${EPOCHS:-2}
PY=${TBERT_PYTHON:-python3}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
[ -x "$BIN" ] || { echo "bench_train_memory: no tbert at $BIN" >&2; exit 2; }
[ -d "$CORPUS" ] || { echo "bench_train_memory: no corpus at $CORPUS" >&2; exit 2; }
[ -f "$MODEL/model.safetensors" ] || { echo "bench_train_memory: no model at $MODEL" >&2; exit 2; }
[ -z "$PEER" ] || [ -x "$PEER" ] || { echo "bench_train_memory: PEER_BIN $PEER is not executable" >&2; exit 2; }
mkdir -p "$WORK"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -n) $(nproc) cores; model $MODEL --layers 1; epochs $EPOCHS"
printf '%-6s %8s %10s %10s %10s %8s\n' bin messages peak_MB KB/msg cpu_s wall_s
declare -A base
for n in "${sizes[@]}"; do
    set_dir=$WORK/set$n
    [ -f "$set_dir/spam.mbox" ] || "$PY" "$root/benchmarks/make_mail_set.py" "$CORPUS" "$n" "$set_dir"
    for who in tbert peer; do
        bin=$BIN
        if [ $who = peer ]; then
            [ -n "$PEER" ] && [ "$n" -le "$PEER_MAX" ] || continue
            bin=$PEER
        fi
        rm -rf "$WORK/cache" "$WORK/out"
        if ! TBERT_CACHE=$WORK/cache /usr/bin/time -f '%M %U %S %e' -o "$WORK/time" "$bin" train --model "$MODEL" --layers 1 \
            --ham "$set_dir/ham.mbox" --spam "$set_dir/spam.mbox" --out "$WORK/out" --epochs "$EPOCHS" --quiet --json \
            >"$WORK/json" 2>"$WORK/err"; then
            echo "bench_train_memory: $who failed on $n messages: $(tail -3 "$WORK/err")" >&2
            exit 1
        fi
        read -r kb us ss wall <"$WORK/time"
        [ -n "${base[$who]:-}" ] || base[$who]="$n $kb"
        read -r n0 kb0 <<<"${base[$who]}"
        per="-"
        [ "$n" -gt "$n0" ] && per=$(awk -v a="$kb" -v b="$kb0" -v n="$n" -v m="$n0" 'BEGIN { printf "%.2f", (a - b) * 1.024 / (n - m) }')
        printf '%-6s %8d %10.1f %10s %10.1f %8.1f\n' $who "$n" "$(awk -v k="$kb" 'BEGIN { print k / 1024 }')" "$per" \
            "$(awk -v u="$us" -v s="$ss" 'BEGIN { print u + s }')" "$wall"
    done
done
rm -rf "$WORK/cache" "$WORK/out"
