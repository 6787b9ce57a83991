#!/usr/bin/env bash
# The whole test suite on a fresh machine (README's test command; .ci/run calls it):
# Debian packages, the Python test venv, the default model, then the CUDA, CPU and ASan+UBSan builds,
# each followed by ctest. Exit non-zero if anything fails.
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

configs=${TBERT_TEST_CONFIGS:-"cuda cpu asan"}
for cfg in $configs; do
    step "build $cfg"
    bash scripts/build.sh "$cfg" -DTBERT_PYTHON="$py" >/dev/null
    step "ctest $cfg"
    # Sanitizer reports go to files, so that one from a tbert run whose exit status a shell test does not
    # look at (an expected failure) still fails CI.
    logs="$root/build/$cfg/sanitizer-logs"
    rm -rf "$logs" && mkdir -p "$logs"
    rc=0
    ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$logs/asan" UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$logs/ubsan" \
        ctest --test-dir "build/$cfg" -j"$jobs" --output-on-failure --timeout 1200 || rc=$?
    if [ -n "$(ls -A "$logs")" ]; then
        cat "$logs"/* >&2
        echo "test.sh: sanitizer reports in $cfg (above; files in $logs)" >&2
        [ $rc -ne 0 ] || rc=1
    fi
    [ $rc -eq 0 ] || exit $rc
done
step "all configurations passed"
