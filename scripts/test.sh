#!/usr/bin/env bash
# The whole test suite on a fresh machine (README's test command; .ci/run calls it):
# Debian packages, the Python test venv, the default model, then the configurations (default "cuda cpu asan
# emu"; TBERT_TEST_CONFIGS picks), each built and tested with ctest. Exit non-zero if anything fails.
#   cuda  -DTBERT_CUDA=ON (nvcc is there: CUDA is never skipped silently)   cpu  -DTBERT_CUDA=OFF
#   asan  CPU + ASan/UBSan                                                   emu  emulated device + ASan/UBSan
# The emu configuration runs the CUDA-labelled and end-to-end tests (not the whole suite again) under
# TBERT_EMU_ORDER=forward, then the kernel tests under reverse and random:SEED (scripts/test-emu-orders.sh),
# comparing their dumped outputs bit for bit.
# One seed per run (TBERT_TEST_SEED, printed; set it to replay) is shared by every test and every emulator order.
# Skips: each configuration's skipped tests are printed; under CI=true any skip not declared for that
# configuration in tests/skips-allowed.txt fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t0=$(date +%s)
step() { echo "=== $* ($(( $(date +%s) - t0 )) s)" >&2; }

step "install Debian packages"
bash scripts/install-deps.sh
step "python test environment"
py=$(bash scripts/python-env.sh | tail -n1)
step "fetch the default model"
TBERT_PIP_PYTHON="$py" bash models/fetch.sh minilm | tail -n1

command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"; }
jobs=$(nproc 2>/dev/null || echo 2)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=0
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# GLib 2.74 hands out GObjects/GStrings from slabs LeakSanitizer cannot see into: plain malloc makes our
# leaks of them visible (scripts/lsan.supp suppresses library internals only).
export G_SLICE=always-malloc
export TBERT_TEST_SEED=${TBERT_TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
step "seed $TBERT_TEST_SEED for every test and emulator order (replay: TBERT_TEST_SEED=$TBERT_TEST_SEED bash scripts/test.sh)"

# check_skips CONFIG CTEST_LOG...: prints the skipped tests; under CI=true fails (returns 1) on any not
# declared for CONFIG in tests/skips-allowed.txt ("CONFIG TEST reason", CONFIG may be *).
check_skips() {
    local cfg=$1 name undeclared=0
    shift
    local skipped
    skipped=$(sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) (Skipped)$/\1/p' "$@" | sort -u)
    if [ -z "$skipped" ]; then
        echo "test.sh: $cfg: no test skipped" >&2
        return 0
    fi
    for name in $skipped; do
        local why
        why=$(awk -v c="$cfg" -v t="$name" '!/^#/ && ($1 == c || $1 == "*") && $2 == t { $1 = ""; $2 = ""; sub(/^ +/, ""); print; exit }' \
            tests/skips-allowed.txt)
        if [ -n "$why" ]; then
            echo "test.sh: $cfg: skipped $name (declared: $why)" >&2
        else
            echo "test.sh: $cfg: skipped $name (NOT declared in tests/skips-allowed.txt)" >&2
            undeclared=$((undeclared + 1))
        fi
    done
    if [ "$undeclared" -gt 0 ] && [ "${CI:-}" = true ]; then
        echo "test.sh: $cfg: $undeclared undeclared skip(s) under CI=true: a failure" >&2
        return 1
    fi
    return 0
}

# run_ctest CONFIG LOG [ctest args...]: ctest with sanitizer reports going to files (so that one from a tbert
# run whose exit status a shell test does not look at still fails CI); output also in LOG.
run_ctest() {
    local cfg=$1 log=$2 rc=0
    shift 2
    local logs="$root/build/$cfg/sanitizer-logs"
    mkdir -p "$logs"
    ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$logs/asan" UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$logs/ubsan" \
        ctest --test-dir "build/$cfg" -j"$jobs" --output-on-failure --timeout 1200 "$@" 2>&1 | tee "$log" || rc=$?
    [ "$rc" -ne 0 ] || ! grep -q "^The following tests FAILED:" "$log" || rc=1
    return $rc
}

configs=${TBERT_TEST_CONFIGS:-"cuda cpu asan emu"}
times=""
for cfg in $configs; do
    tc=$(date +%s)
    step "build $cfg"
    bash scripts/build.sh "$cfg" -DTBERT_PYTHON="$py" >/dev/null
    logs="$root/build/$cfg/sanitizer-logs"
    rm -rf "$logs" "$root/build/$cfg/ctest-logs" && mkdir -p "$logs" "$root/build/$cfg/ctest-logs"
    clog="$root/build/$cfg/ctest-logs"
    rc=0
    if [ "$cfg" = emu ]; then
        # the emulated device: the CUDA suites and the end-to-end tests in full in forward order; the kernel
        # tests in all three orders, outputs compared (the forward run of the kernel tests is the first order)
        step "ctest emu: CUDA and end-to-end tests (TBERT_EMU_ORDER=forward)"
        TBERT_EMU_ORDER=forward run_ctest emu "$clog/forward-full.log" -L 'cuda|e2e' -LE '^(emu-kernels|emu)$' || rc=$?
        step "ctest emu: kernel tests under forward, reverse, random:$TBERT_TEST_SEED"
        ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$logs/asan" UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$logs/ubsan" \
            CTEST_LOG_DIR="$clog" bash scripts/test-emu-orders.sh "build/$cfg" || { r=$?; [ $rc -ne 0 ] || rc=$r; }
    else
        step "ctest $cfg"
        run_ctest "$cfg" "$clog/all.log" || rc=$?
    fi
    if [ -n "$(ls -A "$logs")" ]; then
        cat "$logs"/* >&2
        echo "test.sh: sanitizer reports in $cfg (above; files in $logs)" >&2
        [ $rc -ne 0 ] || rc=1
    fi
    check_skips "$cfg" "$clog"/*.log || { [ $rc -ne 0 ] || rc=1; }
    [ $rc -eq 0 ] || { echo "test.sh: configuration $cfg FAILED (seed $TBERT_TEST_SEED)" >&2; exit $rc; }
    times="$times $cfg $(( $(date +%s) - tc )) s,"
done
step "all configurations passed ($configs; seed $TBERT_TEST_SEED); build + tests:${times%,}"
