#!/usr/bin/env bash
# Faults (issue 8) with real file systems instead of injected errors: `tbert train` into a checkpoint folder
# (1) on a tiny tmpfs that is full, (2) behind a read-only bind mount; (3) `tbert score --out` onto a tmpfs
# that fills up part way, then --resume. Both need a private mount namespace
# (`unshare -rm`, or `unshare -m` as root); where the machine allows neither, or refuses to mount a tmpfs,
# the test skips (77) and says why: test_faults.sh covers the same paths with TBERT_TEST_FAIL_WRITE.
# Each run must exit 2 with one line on stderr naming the file or folder and the system's reason; the
# previous checkpoint must keep its bytes, no temp file may be left, and predict must still load it.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
MODEL=$TESTS/models/bf16_nopooler
DATA=$TESTS/data/faults/tiny.tsv
T=(--model "$MODEL" --data "$DATA" --max-len 24 --hidden 8 --epochs 3 --batch 8 --quiet)
FILES=(best.safetensors last.safetensors metrics.json report.html)

if [ "${1:-}" != "--inside" ]; then
    source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
    tl_require_fixture "$MODEL/model.safetensors" "$DATA"
    NS=()
    if unshare -rm true 2>/dev/null; then NS=(unshare -rm)
    elif [ "$(id -u)" -eq 0 ] && unshare -m true 2>/dev/null; then NS=(unshare -m)
    else tl_skip_external "no private mount namespace here (unshare -rm and unshare -m both refused)"; fi
    TMP=$(mktemp -d /tmp/tbert_faults_mount.XXXXXX)
    trap 'rm -rf "$TMP"' EXIT
    mkdir "$TMP/probe"
    if ! "${NS[@]}" mount -t tmpfs -o size=64k tmpfs "$TMP/probe" 2>"$TMP/err"; then
        tl_skip_external "cannot mount a tmpfs in a private namespace: $(head -n1 "$TMP/err")"
    fi
    export TBERT_CACHE=$TMP/cache
    unset TBERT_TEST_FAIL_WRITE
    "$BIN" train "${T[@]}" --out "$TMP/before" >/dev/null 2>"$TMP/err" || { echo "FAIL: first training: $(cat "$TMP/err")"; exit 1; }
    printf 'win a free prize now\nsee you at lunch\nclaim your cash today\n' >"$TMP/in.txt"
    "$BIN" predict --model "$MODEL" --head "$TMP/before" <"$TMP/in.txt" >"$TMP/pred.before" 2>"$TMP/err" ||
        { echo "FAIL: predict with the first checkpoint: $(cat "$TMP/err")"; exit 1; }
    # for (3): 312 short texts and the records an uninterrupted `tbert score` writes for them
    for i in $(seq 13); do sed "s/\$/ $i/" "$DATA"; done >"$TMP/texts.tsv"
    "$BIN" score --model "$MODEL" --head "$TMP/before" --quiet --out "$TMP/ref.jsonl" "$TMP/texts.tsv" 2>"$TMP/err" ||
        { echo "FAIL: reference score run: $(cat "$TMP/err")"; exit 1; }
    [ "$(wc -l <"$TMP/ref.jsonl")" -eq 312 ] || { echo "FAIL: reference score run wrote $(wc -l <"$TMP/ref.jsonl") records"; exit 1; }
    # the mounts live and die with this namespace: nothing is left mounted on the machine
    "${NS[@]}" bash "$0" --inside "$TMP"
    exit $?
fi

TMP=$2
fail=0
# $1: what; $2: checkpoint folder; $3: expected reason (extended regex); runs train into the folder and
# checks the aftermath
expect_refused() {
    local what=$1 ck=$2 why=$3
    "$BIN" train "${T[@]}" --seed 7 --out "$ck" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    [ $rc -eq 2 ] || { echo "FAIL: $what: exit $rc, expected 2"; fail=1; }
    [ "$(wc -l <"$TMP/err")" -eq 1 ] || { echo "FAIL: $what: stderr is not one line:"; cat "$TMP/err"; fail=1; }
    grep -qF "$ck" "$TMP/err" || { echo "FAIL: $what: the error does not name the folder: $(cat "$TMP/err")"; fail=1; }
    grep -qE "$why" "$TMP/err" || { echo "FAIL: $what: the error does not say '$why': $(cat "$TMP/err")"; fail=1; }
    for f in "${FILES[@]}"; do
        cmp -s "$ck/$f" "$TMP/before/$f" || { echo "FAIL: $what: $f changed"; fail=1; }
    done
    local leftover
    leftover=$(find "$ck" -name '*.tmp*' | head -n 3)
    [ -z "$leftover" ] || { echo "FAIL: $what: temp files left behind: $leftover"; fail=1; }
    "$BIN" predict --model "$MODEL" --head "$ck" <"$TMP/in.txt" >"$TMP/pred.after" 2>"$TMP/err" ||
        { echo "FAIL: $what: predict with the kept checkpoint: $(cat "$TMP/err")"; fail=1; }
    cmp -s "$TMP/pred.after" "$TMP/pred.before" || { echo "FAIL: $what: predictions changed"; fail=1; }
}

# (1) disk full: a 1 MiB tmpfs holding the checkpoint, filled up to 16 KiB (room for split.tsv, not for
# best.safetensors, which is written first after training)
mkdir "$TMP/full"
mount -t tmpfs -o size=1m tmpfs "$TMP/full" || { echo "FAIL: mount tmpfs"; exit 1; }
cp -a "$TMP/before" "$TMP/full/ck"
dd if=/dev/zero of="$TMP/full/filler" bs=4096 2>/dev/null
pages=$(( $(stat -c %s "$TMP/full/filler") / 4096 ))
rm "$TMP/full/filler"
dd if=/dev/zero of="$TMP/full/filler" bs=4096 count=$(( pages - 4 )) 2>/dev/null ||
    { echo "FAIL: could not refill the tmpfs"; exit 1; }
expect_refused "full tmpfs" "$TMP/full/ck" "No space left on device"
rm "$TMP/full/filler" # with room again, the same run succeeds: the failure above came from the full disk
"$BIN" train "${T[@]}" --seed 7 --out "$TMP/full/ck" >/dev/null 2>"$TMP/err" ||
    { echo "FAIL: training on the tmpfs with room: $(cat "$TMP/err")"; fail=1; }

# (2) read-only folder: a read-only bind mount of a copy of the checkpoint
cp -a "$TMP/before" "$TMP/ro"
mount --bind "$TMP/ro" "$TMP/ro" && mount -o remount,bind,ro "$TMP/ro" || { echo "FAIL: read-only bind mount"; exit 1; }
expect_refused "read-only folder" "$TMP/ro" "Read-only file system|not writable"

# (3) `tbert score --out` on a disk that fills up part way: exit 2 naming the output, every complete record
# written is right, and after room is made `--resume` completes the output: each item exactly once, as in
# the uninterrupted run (scores within 1e-5: batches are composed differently after a resume)
mkdir "$TMP/sfull"
mount -t tmpfs -o size=64k tmpfs "$TMP/sfull" || { echo "FAIL: mount tmpfs"; exit 1; }
dd if=/dev/zero of="$TMP/sfull/filler" bs=4096 2>/dev/null
pages=$(( $(stat -c %s "$TMP/sfull/filler") / 4096 ))
rm "$TMP/sfull/filler"
dd if=/dev/zero of="$TMP/sfull/filler" bs=4096 count=$(( pages - 2 )) 2>/dev/null # 8 KiB left of ~30 KB needed
OUT=$TMP/sfull/out.jsonl
"$BIN" score --model "$MODEL" --head "$TMP/before" --quiet --out "$OUT" "$TMP/texts.tsv" >/dev/null 2>"$TMP/err"
rc=$?
[ $rc -eq 2 ] || { echo "FAIL: score onto a full disk: exit $rc, expected 2"; fail=1; }
grep -v "^tbert score: [0-9]* records" "$TMP/err" >"$TMP/err1" # the totals line may follow the error
echo "score onto a full disk: $(cat "$TMP/err1")"
[ "$(wc -l <"$TMP/err1")" -eq 1 ] || { echo "FAIL: score onto a full disk: not one error line:"; cat "$TMP/err"; fail=1; }
grep -qF "$OUT" "$TMP/err1" && grep -qF "No space left on device" "$TMP/err1" ||
    { echo "FAIL: score onto a full disk: the error does not name the output and the reason: $(cat "$TMP/err")"; fail=1; }
partial=$(wc -l <"$OUT")
[ "$partial" -gt 0 ] && [ "$partial" -lt 312 ] || { echo "FAIL: score onto a full disk kept $partial records"; fail=1; }
rm "$TMP/sfull/filler"
"$BIN" score --model "$MODEL" --head "$TMP/before" --quiet --resume --out "$OUT" "$TMP/texts.tsv" >/dev/null 2>"$TMP/err" ||
    { echo "FAIL: score --resume after the full disk: $(cat "$TMP/err")"; fail=1; }
"${TBERT_PYTHON:-python3}" - "$TMP/ref.jsonl" "$OUT" "$partial" <<'PYEOF' || { echo "FAIL: score after a full disk and --resume differs from the uninterrupted run"; fail=1; }
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
lines = open(sys.argv[2]).read().split("\n")
assert lines[-1] == "", "the output does not end with a newline"
got = [json.loads(l) for l in lines[:-1]]
assert len(got) == len(ref), (len(got), len(ref))
for i, (a, b) in enumerate(zip(ref, got)):
    sa, sb = a.pop("score"), b.pop("score")
    assert a == b and abs(sa - sb) <= 1e-5, (i, a, sa, b, sb)
print("score: %s records before the disk filled, %d after --resume" % (sys.argv[3], len(got)))
PYEOF

[ $fail -eq 0 ] && echo ok
exit $fail
