#!/usr/bin/env bash
# Scoring A/B: the same head scores the same messages with two tbert builds, in alternating rounds; prints
# each round's user+sys CPU seconds, wall seconds and peak RSS, and checks that both wrote the same records.
#
# usage: benchmarks/bench_score_ab.sh NEW_BIN OLD_BIN HEAD_DIR MBOX... [-- ROUNDS]
# env:   MODEL (default $TBERT_CACHE/models/minilm; the head's recipe picks its layers), THREADS (default 2)
# Exit 1 when the two builds' records differ or a run fails.
set -euo pipefail
NEW=${1:?usage: bench_score_ab.sh NEW_BIN OLD_BIN HEAD_DIR MBOX... [-- ROUNDS]}
OLD=${2:?}
HEAD=${3:?}
shift 3
inputs=()
ROUNDS=3
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then ROUNDS=${2:?}; break; fi
    inputs+=("$1")
    shift
done
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
MODEL=${MODEL:-$CACHE/models/minilm}
THREADS=${THREADS:-2}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -n) $(nproc) cores; head $HEAD; ${#inputs[@]} input(s); threads $THREADS"
for r in $(seq 1 "$ROUNDS"); do
    for who in old new; do
        bin=$OLD
        [ $who = new ] && bin=$NEW
        /usr/bin/time -f '%U %S %e %M' -o "$TMP/time" "$bin" score --model "$MODEL" --head "$HEAD" --threads "$THREADS" \
            --quiet --out "$TMP/$who.jsonl" "${inputs[@]}" 2>"$TMP/err" || { echo "bench_score_ab: $who failed: $(cat "$TMP/err")" >&2; exit 1; }
        read -r u s e m <"$TMP/time"
        printf 'round %d %-3s cpu_s %6.2f wall_s %7.2f peak_MB %6d\n' "$r" $who "$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')" "$e" $((m / 1024))
    done
    cmp -s "$TMP/old.jsonl" "$TMP/new.jsonl" || { echo "bench_score_ab: round $r: the records differ" >&2; exit 1; }
    echo "round $r: identical records ($(wc -l <"$TMP/new.jsonl"))"
done
