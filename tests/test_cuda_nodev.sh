#!/usr/bin/env bash
# On a machine without a CUDA device (CI, and every session without a lent GPU), in both builds (CUDA and
# CPU-only): `tbert embed --device cuda` (and cuda:N) fails with exactly one line on stderr naming CUDA and
# exit status 2, writing nothing to stdout; `--device auto` falls back to the CPU, says so in exactly one line,
# and writes the same bytes as `--device cpu`. Skips (77) when a CUDA device is present or embed is not built yet.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
MODEL=$TESTS/models/bert_tiny_shape
if "$BIN" embed --help 2>&1 | grep -qi "not implemented"; then
    echo "test_cuda_nodev: tbert embed is not implemented yet: skipped" >&2
    exit 77
fi
if [ ! -f "$MODEL/config.json" ]; then
    echo "test_cuda_nodev: $MODEL is missing: skipped" >&2
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
printf 'Free entry in 2 a wkly comp to win FA Cup final tkts\nOk lar... Joking wif u oni...\n' > "$TMP/in.txt"

"$BIN" embed --model "$MODEL" --device cuda --format f32 < "$TMP/in.txt" > "$TMP/cuda.out" 2> "$TMP/cuda.err"
rc=$?
if [ "$rc" = 0 ]; then
    echo "test_cuda_nodev: a CUDA device is present (--device cuda worked): skipped" >&2
    exit 77
fi
for dev in cuda cuda:3; do
    "$BIN" embed --model "$MODEL" --device "$dev" --format f32 < "$TMP/in.txt" > "$TMP/out" 2> "$TMP/err"
    rc=$?
    [ "$rc" = 2 ] || fail "--device $dev: exit $rc, want 2"
    [ "$(wc -l < "$TMP/err")" = 1 ] || fail "--device $dev: stderr has $(wc -l < "$TMP/err") lines, want 1: $(cat "$TMP/err")"
    grep -qi cuda "$TMP/err" || fail "--device $dev: the message does not name CUDA: $(cat "$TMP/err")"
    [ ! -s "$TMP/out" ] || fail "--device $dev: wrote $(wc -c < "$TMP/out") bytes to stdout"
done

"$BIN" embed --model "$MODEL" --device auto --format f32 < "$TMP/in.txt" > "$TMP/auto.f32" 2> "$TMP/auto.err"
rc=$?
[ "$rc" = 0 ] || fail "--device auto: exit $rc: $(cat "$TMP/auto.err")"
n=$(grep -ci "cuda" "$TMP/auto.err")
[ "$n" = 1 ] || fail "--device auto: $n stderr lines mention CUDA, want exactly 1 (the fallback): $(cat "$TMP/auto.err")"
grep -i cuda "$TMP/auto.err" | grep -qi cpu || fail "--device auto: the fallback line does not say CPU: $(cat "$TMP/auto.err")"
"$BIN" embed --model "$MODEL" --device cpu --format f32 < "$TMP/in.txt" > "$TMP/cpu.f32" 2> "$TMP/cpu.err" ||
    fail "--device cpu: exit $?: $(cat "$TMP/cpu.err")"
[ -s "$TMP/cpu.f32" ] || fail "--device cpu wrote nothing"
cmp -s "$TMP/auto.f32" "$TMP/cpu.f32" || fail "--device auto and --device cpu outputs differ"
grep -qi cuda "$TMP/cpu.err" && fail "--device cpu mentions CUDA: $(cat "$TMP/cpu.err")"

[ "$fails" = 0 ] && echo "test_cuda_nodev: ok" >&2
[ "$fails" = 0 ]
