#!/usr/bin/env bash
# `--device` on a machine without a GPU, by build kind (TBERT_BUILD_CUDA, set by tests/CMakeLists.txt):
#   ON (CUDA build) and OFF (CPU-only build): `tbert embed --device cuda` (and cuda:3) exits 2 with exactly one
#     line on stderr naming CUDA and nothing on stdout; `--device auto` falls back to the CPU, says so in exactly
#     one line (naming CUDA and the CPU), and writes the same bytes as `--device cpu`.
#   EMU (the emulated device): `--device auto` means the CPU (issue 12's decision: the emulator is a test device,
#     never chosen by itself), with the same bytes as `--device cpu` and exactly one line that names CUDA, says
#     the device is emulated and that the CPU is used (as the fallback line of the other builds says why);
#     `--device cuda` runs on the emulated device and SUCCEEDS with output within CONVENTIONS' CUDA fp32 vs CPU
#     tolerances (per element |d| <= 1e-4, ||d||/||ref|| < 1e-5); `--device cuda:3` (no such device) exits 2.
# `--device cuda` succeeding in an ON or OFF build is a failure, unless a real GPU is present (/dev/nvidia0 or
# nvidia-smi lists one): then the test exits 77, as the GPU tests cover that machine.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
KIND=${TBERT_BUILD_CUDA:?TBERT_BUILD_CUDA not set (ON, OFF or EMU; tests/CMakeLists.txt sets it)}
MODEL=$TESTS/models/bert_tiny_shape
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/config.json" "$MODEL/model.safetensors"
case "$KIND" in ON | OFF | EMU) ;; *) echo "FAIL: TBERT_BUILD_CUDA=$KIND (want ON, OFF or EMU)" >&2; exit 1 ;; esac
real_gpu() { [ -e /dev/nvidia0 ] || { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; }
if [ "$KIND" = ON ] && real_gpu; then
    tl_skip_external "a real GPU is present: --device cuda works here, covered by the GPU tests (this test is for GPU-less machines)"
fi
tl_workdir tbert_cuda_nodev
TMP=$TL_WORK
printf 'Free entry in 2 a wkly comp to win FA Cup final tkts\nOk lar... Joking wif u oni...\n\nx\n' > "$TMP/in.txt"
embed() { # device out err
    "$BIN" embed --model "$MODEL" --device "$1" --format f32 < "$TMP/in.txt" > "$2" 2> "$3"
}
expect_nodev() { # device
    embed "$1" "$TMP/out" "$TMP/err"
    local rc=$?
    [ "$rc" = 2 ] || fail "$KIND build, --device $1: exit $rc, want 2 ($(head -c 300 "$TMP/err"))"
    [ "$(wc -l < "$TMP/err")" = 1 ] || fail "--device $1: stderr has $(wc -l < "$TMP/err") lines, want 1: $(cat "$TMP/err")"
    grep -qi cuda "$TMP/err" || fail "--device $1: the message does not name CUDA: $(cat "$TMP/err")"
    [ ! -s "$TMP/out" ] || fail "--device $1: wrote $(wc -c < "$TMP/out") bytes to stdout"
}

embed cpu "$TMP/cpu.f32" "$TMP/cpu.err" || fail "--device cpu: exit $?: $(cat "$TMP/cpu.err")"
[ -s "$TMP/cpu.f32" ] || fail "--device cpu wrote nothing"
grep -qi cuda "$TMP/cpu.err" && fail "--device cpu mentions CUDA: $(cat "$TMP/cpu.err")"
embed auto "$TMP/auto.f32" "$TMP/auto.err"
rc=$?
[ "$rc" = 0 ] || fail "--device auto: exit $rc: $(cat "$TMP/auto.err")"
cmp -s "$TMP/auto.f32" "$TMP/cpu.f32" || fail "--device auto and --device cpu outputs differ"
n=$(grep -ci "cuda" "$TMP/auto.err")

if [ "$KIND" = EMU ]; then
    [ "$n" = 1 ] || fail "EMU build, --device auto: $n stderr lines mention CUDA, want exactly 1: $(cat "$TMP/auto.err")"
    grep -i cuda "$TMP/auto.err" | grep -i emulated | grep -qi cpu ||
        fail "EMU build, --device auto: the line does not say the device is emulated and the CPU is used: $(cat "$TMP/auto.err")"
    embed cuda "$TMP/cuda.f32" "$TMP/cuda.err"
    rc=$?
    if [ "$rc" != 0 ]; then
        fail "EMU build, --device cuda: exit $rc, want 0 (the emulated device): $(cat "$TMP/cuda.err")"
    else
        tl_require_python numpy
        "$PY" "$TESTS/util/f32close.py" "$TMP/cuda.f32" "$TMP/cpu.f32" "EMU --device cuda vs --device cpu" ||
            fail "EMU build: --device cuda output is not within tolerance of the CPU's"
    fi
    expect_nodev cuda:3
else
    embed cuda "$TMP/cuda.f32" "$TMP/cuda.err"
    rc=$?
    if [ "$rc" = 0 ]; then
        fail "$KIND build without a GPU: --device cuda succeeded ($(wc -c < "$TMP/cuda.f32") bytes; stderr: $(head -c 300 "$TMP/cuda.err"))"
    else
        expect_nodev cuda
        expect_nodev cuda:3
    fi
    [ "$n" = 1 ] || fail "--device auto: $n stderr lines mention CUDA, want exactly 1 (the fallback): $(cat "$TMP/auto.err")"
    grep -i cuda "$TMP/auto.err" | grep -qi cpu || fail "--device auto: the fallback line does not say CPU: $(cat "$TMP/auto.err")"
fi

[ "$fails" = 0 ] && echo "test_cuda_nodev: $KIND build: ok" >&2
tl_exit "$fails"
