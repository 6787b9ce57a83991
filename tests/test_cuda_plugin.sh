#!/usr/bin/env bash
# The CUDA backend is a plugin (libtbert_cuda.so, include/tbert/cuda_plugin.h): tbert itself never links CUDA,
# and runs CPU jobs where the plugin or its CUDA libraries cannot be loaded.
#  1. readelf: tbert has no libcudart/libcublas NEEDED; in a CUDA build the plugin exists next to it and has a
#     RUNPATH holding the folder of the libcudart it was linked against. `tbert info --backend --json` names
#     the backend it finds (cuda / emulated / none, with the reason) here and in each case below.
#  2. TBERT_CUDA_PLUGIN=/nonexistent: `embed --device auto` succeeds with the same bytes as `--device cpu`, says
#     why in exactly one stderr line that names CUDA, the CPU and the variable; `--device cuda` exits 2 with one
#     line and no stdout.
#     The same for three files that are not our plugin (no entry point, another ABI, another tbert version).
#  3. The same with the CUDA toolkit out of reach: a private mount namespace (unshare -m) with a tmpfs over
#     every /usr/local/cuda* folder and an ld.so.cache rebuilt without the CUDA entries. In a CUDA build the
#     fallback line then names the missing CUDA library (the plugin itself was found).
# Exit 77 only when the mount namespace cannot be made (not root, unshare/mount refused); 1 and 2 still ran.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
BUILD=${TBERT_BUILD_DIR:-$(dirname "$BIN")}
MODEL=$TESTS/models/bert_tiny_shape
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/config.json"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'Free entry in 2 a wkly comp to win FA Cup final tkts\nOk lar... Joking wif u oni...\nA third line\n' > "$TMP/in.txt"

cuda_build=$(sed -n 's/^TBERT_CUDA:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
plugin=$(dirname "$BIN")/libtbert_cuda.so
echo "test_cuda_plugin: TBERT_CUDA=${cuda_build:-?}, plugin $plugin" >&2

# ---- 1. what is linked ----
needed=$(readelf -d "$BIN" | grep NEEDED)
echo "$needed" | grep -Eq 'libcudart|libcublas|libcuda\.' && fail "tbert links CUDA: $needed"
case "$cuda_build" in
OFF) [ -e "$plugin" ] && fail "a -DTBERT_CUDA=OFF build made $plugin" ;;
ON | AUTO | EMU)
    if [ ! -f "$plugin" ]; then
        [ "$cuda_build" = AUTO ] || fail "TBERT_CUDA=$cuda_build but no $plugin"
    elif [ "$cuda_build" != EMU ]; then
        cudart=$(readelf -d "$plugin" | sed -n 's/.*NEEDED.*\[\(libcudart[^]]*\)\].*/\1/p')
        [ -n "$cudart" ] || fail "$plugin does not link libcudart"
        runpath=$(readelf -d "$plugin" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p')
        found=""
        IFS=: read -ra dirs <<< "$runpath"
        for d in "${dirs[@]}"; do [ -e "$d/$cudart" ] && found=$d; done
        [ -n "$found" ] || fail "$plugin: no RUNPATH folder ($runpath) holds $cudart"
    fi ;;
*) fail "cannot read TBERT_CUDA from $BUILD/CMakeCache.txt" ;;
esac

# ---- the CPU job; $1 names the case, $2 a word the fallback line must contain, the rest a command prefix ----
check_fallback() {
    local name=$1 word=$2
    shift 2
    "$@" "$BIN" embed --model "$MODEL" --device cpu --format f32 < "$TMP/in.txt" > "$TMP/cpu.f32" 2> "$TMP/cpu.err" ||
        fail "$name: --device cpu: exit $?: $(cat "$TMP/cpu.err")"
    [ -s "$TMP/cpu.f32" ] || fail "$name: --device cpu wrote nothing"
    grep -qi cuda "$TMP/cpu.err" && fail "$name: --device cpu mentions CUDA: $(cat "$TMP/cpu.err")"
    "$@" "$BIN" embed --model "$MODEL" --device auto --format f32 < "$TMP/in.txt" > "$TMP/auto.f32" 2> "$TMP/auto.err"
    local rc=$?
    [ "$rc" = 0 ] || fail "$name: --device auto: exit $rc: $(cat "$TMP/auto.err")"
    cmp -s "$TMP/auto.f32" "$TMP/cpu.f32" || fail "$name: --device auto and --device cpu outputs differ"
    local n
    n=$(grep -ci cuda "$TMP/auto.err")
    [ "$n" = 1 ] || fail "$name: --device auto: $n stderr lines mention CUDA, want 1: $(cat "$TMP/auto.err")"
    local line
    line=$(grep -i cuda "$TMP/auto.err")
    echo "$line" | grep -qi cpu || fail "$name: the fallback line does not say CPU: $line"
    echo "$line" | grep -q -- "$word" || fail "$name: the fallback line does not name $word: $line"
    echo "test_cuda_plugin: $name: $line" >&2
    for dev in cuda cuda:1; do
        "$@" "$BIN" embed --model "$MODEL" --device "$dev" --format f32 < "$TMP/in.txt" > "$TMP/out" 2> "$TMP/err"
        rc=$?
        [ "$rc" = 2 ] || fail "$name: --device $dev: exit $rc, want 2"
        [ "$(wc -l < "$TMP/err")" = 1 ] || fail "$name: --device $dev: $(wc -l < "$TMP/err") stderr lines, want 1: $(cat "$TMP/err")"
        grep -qi cuda "$TMP/err" || fail "$name: --device $dev: the message does not name CUDA: $(cat "$TMP/err")"
        [ ! -s "$TMP/out" ] || fail "$name: --device $dev wrote $(wc -c < "$TMP/out") bytes to stdout"
    done
}

# ---- `tbert info --backend --json` agrees: $1 names the case, $2 the backend, $3 a word of the reason ----
check_info() {
    local name=$1 want=$2 word=$3
    shift 3
    "$@" "$BIN" info --backend --json > "$TMP/info.json" 2> "$TMP/info.err" || fail "$name: info --backend: exit $?: $(cat "$TMP/info.err")"
    grep -q "\"backend\":\"$want\"" "$TMP/info.json" || fail "$name: info --backend: want backend $want: $(cat "$TMP/info.json")"
    [ -z "$word" ] || grep -q "\"reason\":\"[^\"]*$word" "$TMP/info.json" || fail "$name: info --backend: the reason does not name $word: $(cat "$TMP/info.json")"
}
case "$cuda_build" in
ON | AUTO) [ -f "$plugin" ] && check_info "as built" cuda "" ;;
EMU) check_info "as built" emulated "" ;;
*) check_info "as built" none "without CUDA" ;;
esac

# ---- 2. a plugin path that does not exist ----
if [ "$cuda_build" = OFF ]; then
    check_fallback "TBERT_CUDA_PLUGIN=/nonexistent (CPU-only build)" "without CUDA" env TBERT_CUDA_PLUGIN=/nonexistent
else
    check_fallback "TBERT_CUDA_PLUGIN=/nonexistent" "TBERT_CUDA_PLUGIN" env TBERT_CUDA_PLUGIN=/nonexistent
    check_info "TBERT_CUDA_PLUGIN=/nonexistent" none "TBERT_CUDA_PLUGIN" env TBERT_CUDA_PLUGIN=/nonexistent
fi

# ---- 2b. files that are not our plugin (built, then refused: one line each, CPU fallback) ----
if [ "$cuda_build" != OFF ]; then
    SRC=${TBERT_SOURCE_DIR:-$TESTS/..}
    cat > "$TMP/fake.c" <<'EOF'
#include "tbert/cuda_plugin.h"
#if FAKE == 1
int tbert_cuda_not_the_entry = 1; /* no entry point */
#elif FAKE == 2
const tbert_cuda_api *tbert_cuda_plugin_api(int abi) { (void)abi; return NULL; } /* refuses our ABI */
#else
static const tbert_cuda_api api = {.abi = TBERT_CUDA_ABI, .version = "0.0.0-other"}; /* another tbert */
const tbert_cuda_api *tbert_cuda_plugin_api(int abi) { (void)abi; return &api; }
#endif
EOF
    for k in 1:"not a tbert CUDA plugin" 2:"ABI differs" 3:"plugin of tbert 0.0.0-other"; do
        n=${k%%:*} want=${k#*:}
        if ! cc -shared -fPIC -std=c17 -DFAKE="$n" -I"$SRC/include" -o "$TMP/fake$n.so" "$TMP/fake.c" 2> "$TMP/cc.err"; then
            fail "cannot build fake plugin $n: $(cat "$TMP/cc.err")"
            continue
        fi
        check_fallback "fake plugin $n" "$want" env TBERT_CUDA_PLUGIN="$TMP/fake$n.so"
        check_info "fake plugin $n" none "$want" env TBERT_CUDA_PLUGIN="$TMP/fake$n.so"
    done
fi

# ---- 3. the CUDA toolkit out of reach ----
cat > "$TMP/hide.sh" <<'EOF'
# runs inside `unshare -m`: hides the toolkit, then runs "$@" (its own messages go to hide.log, so that the
# command's stderr holds only the command's lines)
set -e
exec 3>&2 2>> "$HIDE_TMP/hide.log"
for d in /usr/local/cuda*; do
    if [ -d "$d" ] && [ ! -L "$d" ]; then mount -t tmpfs none "$d"; fi
done
grep -hv cuda /etc/ld.so.conf /etc/ld.so.conf.d/*.conf | grep -v '^include' > "$HIDE_TMP/ld.so.conf" || true
ldconfig -C "$HIDE_TMP/ld.so.cache" -f "$HIDE_TMP/ld.so.conf"
mount --bind "$HIDE_TMP/ld.so.cache" /etc/ld.so.cache
exec 2>&3 3>&-
set +e
exec "$@"
EOF
if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
    tl_skip_part "cannot make a private mount namespace (not root or unshare refused): part 3"
    tl_exit "$fails"
fi
hide() { HIDE_TMP=$TMP unshare -m sh "$TMP/hide.sh" "$@"; }
hide sh -c 'for d in /usr/local/cuda*/; do ls -A "$d"; done | wc -l; ldconfig -p | grep -c -e libcudart -e libcublas' > "$TMP/probe" 2>&1 ||
    true
if [ "$(tr '\n' ' ' < "$TMP/probe")" != "0 0 " ]; then
    tl_skip_part "could not hide the CUDA toolkit (mount refused?): $(cat "$TMP/probe" "$TMP/hide.log" 2>/dev/null): part 3"
    tl_exit "$fails"
fi
case "$cuda_build" in
ON | AUTO) [ -f "$plugin" ] && word=libcudart || word=libtbert_cuda ;;
EMU) word="" ;; # the emulated plugin needs no toolkit: it loads, and --device auto means the CPU there
*) word="without CUDA" ;;
esac
if [ "$cuda_build" = EMU ]; then
    hide "$BIN" embed --model "$MODEL" --device cuda --format f32 < "$TMP/in.txt" > /dev/null 2> "$TMP/err" ||
        fail "emulated build without the toolkit: --device cuda failed: $(cat "$TMP/err")"
else
    check_fallback "CUDA toolkit hidden" "$word" hide
    check_info "CUDA toolkit hidden" none "$word" hide
fi

[ "$fails" = 0 ] && echo "test_cuda_plugin: ok" >&2
tl_exit "$fails"
