#!/usr/bin/env bash
# scripts/test-emu-orders.sh BUILD_DIR: the emulated device's schedule check (scripts/test.sh runs it in the
# emu configuration; run it alone on a built emu folder to repeat it). Runs the kernel tests (ctest labels
# emu-kernels: test_cuda_parity_kernels, test_cuda_head(_sparse), test_cuda_backward; emu: the emulator's own tests in
# tests/emu/) three times, under TBERT_EMU_ORDER=forward, reverse and random:$TBERT_TEST_SEED, all with the same
# TBERT_TEST_SEED (so the same inputs), each dumping its compared results into BUILD_DIR/emu-dumps/ORDER/TEST/CASE.bin
# (TBERT_TEST_DUMP_DIR, tu_dump in tests/util/testutil.c), then compares every dump with forward's byte for
# byte. A kernel that relies on an order it never synchronised gives different bytes under another order.
# Dumps whose TEST/CASE.bin path matches a glob in tests/emu-nondeterministic.txt (kernels docs/cuda.md marks
# non-deterministic, e.g. atomics) need only be present in every order.
# Fails on a failed or skipped test, a difference, a dump missing in one order, or no dump at all.
# TBERT_TEST_KERNEL_LABEL (a ctest label regex, default ^(emu-kernels|emu)$) picks other tests (e.g. to try the
# plumbing on a CPU build).
set -uo pipefail
build=${1:?usage: scripts/test-emu-orders.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
export TBERT_TEST_SEED=${TBERT_TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
label=${TBERT_TEST_KERNEL_LABEL:-^(emu-kernels|emu)\$}
logdir=${CTEST_LOG_DIR:-$build/ctest-logs}
jobs=$(nproc 2>/dev/null || echo 2)
dumps=$build/emu-dumps
rm -rf "$dumps"
mkdir -p "$logdir"
fails=0
fail() { echo "test-emu-orders: FAIL: $*" >&2; fails=$((fails + 1)); }

orders=(forward reverse "random:$TBERT_TEST_SEED")
for order in "${orders[@]}"; do
    o=${order%%:*}
    mkdir -p "$dumps/$o"
    log=$logdir/order-$o.log
    echo "test-emu-orders: TBERT_EMU_ORDER=$order TBERT_TEST_SEED=$TBERT_TEST_SEED ctest -L '$label'" >&2
    TBERT_EMU_ORDER=$order TBERT_TEST_DUMP_DIR=$dumps/$o \
        ctest --test-dir "$build" -j"$jobs" -L "$label" --output-on-failure --timeout 1200 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || fail "order $order: ctest exit $rc"
    grep -q "No tests were found" "$log" && fail "order $order: no test has the label $label"
    grep -q "(Skipped)" "$log" && fail "order $order: a kernel test skipped (the emulated device is always there)"
done

# every dump of forward against the same file of the other orders
patterns=()
if [ -f "$root/tests/emu-nondeterministic.txt" ]; then
    while read -r p _; do
        [ -n "$p" ] && [ "${p:0:1}" != "#" ] && patterns+=("$p")
    done <"$root/tests/emu-nondeterministic.txt"
fi
nondet() {
    local p
    for p in "${patterns[@]}"; do
        # shellcheck disable=SC2053
        [[ $1 == $p ]] && return 0
    done
    return 1
}
cases=0 same=0 presence=0
while IFS= read -r f; do
    cases=$((cases + 1))
    for order in "${orders[@]:1}"; do
        o=${order%%:*}
        if [ ! -f "$dumps/$o/$f" ]; then
            fail "$f: dumped under forward, missing under $order"
        elif nondet "$f"; then
            presence=$((presence + 1))
        elif cmp -s "$dumps/forward/$f" "$dumps/$o/$f"; then
            same=$((same + 1))
        else
            fail "$f: $order differs from forward ($(cmp "$dumps/forward/$f" "$dumps/$o/$f" 2>&1 | head -n1); TBERT_TEST_SEED=$TBERT_TEST_SEED)"
        fi
    done
done < <(cd "$dumps/forward" && find . -type f -name '*.bin' | sed 's|^\./||' | sort)
for order in "${orders[@]:1}"; do
    o=${order%%:*}
    while IFS= read -r f; do
        [ -f "$dumps/forward/$f" ] || fail "$f: dumped under $order, missing under forward"
    done < <(cd "$dumps/$o" && find . -type f -name '*.bin' | sed 's|^\./||' | sort)
done
[ "$cases" -gt 0 ] || fail "no dumps under $dumps/forward: the kernel tests compared nothing through tu_compare"
echo "test-emu-orders: $cases dumped cases x ${#orders[@]} orders: $same comparisons identical to forward," \
    "$presence only checked present (tests/emu-nondeterministic.txt), $fails failure(s)" >&2
[ "$fails" = 0 ] && rm -rf "$dumps"
[ "$fails" = 0 ]
