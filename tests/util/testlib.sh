# shellcheck shell=bash
# Sourced by the shell tests: the one place that decides skips (CONVENTIONS "Skips"; the C twin is
# tests/util/testutil.h). A committed fixture (anything under tests/) that is missing FAILS the test; only an
# absent EXTERNAL prerequisite skips with exit 77: a CUDA device (real or emulated), the shared corpus
# ../shared/data, the MiniLM model in $TBERT_CACHE (scripts/test.sh fetches it). Under CI=true scripts/test.sh
# fails the run on any skip not declared in tests/skips-allowed.txt.
#   tl_require_fixture PATH...     each must exist, else "FAIL: committed fixture PATH is missing", exit 1
#   tl_require_python MODULE...    $TBERT_PYTHON must import them (scripts/python-env.sh makes that venv), else exit 1
#   tl_skip_external WHY           "NAME: skipped: WHY (external prerequisite absent)", exit 77
#   tl_external PATH               true when PATH exists (an external prerequisite; use with tl_skip_external/_part)
#   tl_skip_part WHY               a part of the test left out for want of an external prerequisite: noted, and
#                                  tl_exit turns a pass into 77 so that the skip shows
#   tl_exit FAILS                  exit 1 when FAILS > 0, else 77 after tl_skip_part, else 0
#   tl_shared REL                  prints $TBERT_SHARED_DATA/REL (the corpus folder)
#   tl_minilm                      prints the MiniLM model folder in the cache
#   tl_require_tools TOOL...       each must be on PATH, else "FAIL TOOL is not installed ...", exit 1
#   tl_require_cuda_build          TBERT_BUILD_CUDA=EMU runs on; ON without a GPU and OFF skip (77); else exit 1
#   tl_workdir PREFIX              sets TL_WORK to a new /tmp/PREFIX.XXXXXX, removed on exit
# Checks that count (the calling test reads $fails at its end):
#   check DESCRIPTION COMMAND...   "ok   DESCRIPTION" when COMMAND succeeds, else "FAIL DESCRIPTION" and fails+1
#   checks DESCRIPTION 'CONDITION' the same for a shell condition (eval; for conditions joined with && or ||)
#   fail MESSAGE...                "FAIL: MESSAGE" on stderr and fails+1
#   expect_usage WHAT ARGS...      "$BIN" ARGS... must exit 2 with exactly one stderr line containing ${EXPECT:-tbert}
#                                  and nothing on stdout (bad usage or input); else "FAIL: WHAT: ..." and fails+1
TL_NAME=${TL_NAME:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}
TL_SKIPPED_PARTS=0

tl_require_fixture() {
    local p
    for p in "$@"; do
        [ -e "$p" ] || { echo "FAIL: $TL_NAME: committed fixture $p is missing (a failure, not a skip)" >&2; exit 1; }
    done
}

tl_require_python() {
    local py=${TBERT_PYTHON:-python3} m
    for m in "$@"; do
        "$py" -c "import $m" 2>/dev/null ||
            { echo "FAIL: $TL_NAME: $py cannot import $m (run scripts/python-env.sh; the tests need it)" >&2; exit 1; }
    done
}

tl_skip_external() {
    echo "$TL_NAME: skipped: $* (external prerequisite absent)" >&2
    exit 77
}

tl_external() { [ -e "$1" ]; }

tl_skip_part() {
    echo "$TL_NAME: skipped part: $* (external prerequisite absent)" >&2
    TL_SKIPPED_PARTS=$((TL_SKIPPED_PARTS + 1))
}

tl_exit() {
    if [ "${1:-0}" != 0 ]; then exit 1; fi
    if [ "$TL_SKIPPED_PARTS" != 0 ]; then
        echo "$TL_NAME: passed, but $TL_SKIPPED_PARTS part(s) were skipped (above): exit 77" >&2
        exit 77
    fi
    exit 0
}

tl_shared() {
    local root=${TBERT_SHARED_DATA:-${TBERT_SOURCE_DIR:-.}/../shared/data}
    echo "$root/${1:-}"
}

tl_minilm() {
    echo "${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}/models/minilm"
}

tl_require_tools() {
    local t
    for t in "$@"; do
        command -v "$t" > /dev/null || { echo "FAIL $t is not installed (scripts/install-deps.sh installs it)"; exit 1; }
    done
}

tl_require_cuda_build() {
    local kind=${TBERT_BUILD_CUDA:?TBERT_BUILD_CUDA not set (ON, OFF or EMU; tests/CMakeLists.txt sets it)}
    case "$kind" in
        EMU) ;;
        ON) { [ -e /dev/nvidia0 ] || nvidia-smi -L 2>/dev/null | grep -q '^GPU '; } ||
                tl_skip_external "no CUDA device (a CUDA build on a machine without a GPU; the emu configuration runs this test)" ;;
        OFF) tl_skip_external "built without the CUDA backend (the emu configuration runs this test)" ;;
        *) echo "FAIL: TBERT_BUILD_CUDA=$kind (want ON, OFF or EMU)" >&2; exit 1 ;;
    esac
}

tl_workdir() {
    TL_WORK=$(mktemp -d "/tmp/$1.XXXXXX") || { echo "FAIL: $TL_NAME: cannot make a folder under /tmp" >&2; exit 1; }
    # shellcheck disable=SC2064 # the folder's name is fixed now
    trap "rm -rf '$TL_WORK'" EXIT
}

fails=${fails:-0} # kept when a test sources this file twice (directly and through serve_common.sh)
check() {
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
checks() {
    local what=$1; shift
    if eval "$1"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
expect_usage() {
    local what=$1 out err rc
    shift
    out=$(mktemp) && err=$(mktemp) || { echo "FAIL: $what: mktemp"; fails=$((fails + 1)); return; }
    "$BIN" "$@" >"$out" 2>"$err"
    rc=$?
    if [ $rc -ne 2 ]; then echo "FAIL: $what: exit $rc, expected 2"; fails=$((fails + 1)); fi
    if [ "$(wc -l <"$err")" -ne 1 ]; then echo "FAIL: $what: stderr is not one line:"; cat "$err"; fails=$((fails + 1)); fi
    if [ -s "$out" ]; then echo "FAIL: $what: wrote to stdout"; fails=$((fails + 1)); fi
    grep -qF -e "${EXPECT:-tbert}" "$err" || { echo "FAIL: $what: message lacks '${EXPECT:-}': $(cat "$err")"; fails=$((fails + 1)); }
    rm -f "$out" "$err"
}
