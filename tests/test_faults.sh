#!/usr/bin/env bash
# Faults (issue 8): a full disk while `tbert train` writes a checkpoint folder that already holds a finished
# run. TBERT_TEST_FAIL_WRITE=NAME (src/fileio.c) makes every atomic write to a path containing NAME fail with
# ENOSPC after its temp file was created, so each of best.safetensors, last.safetensors, metrics.json and
# report.html is hit in turn. Each run must exit 2 with one line on stderr naming that file; the file must
# keep its previous bytes; no temp file may be left behind; every checkpoint file in the folder must still
# load (best: predict gives the same probabilities as before the failure when best is the file hit; last:
# `train --resume` in a copy of the folder finishes). A real full tmpfs and a read-only mount are in
# test_faults_mount.sh.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/bf16_nopooler # the smallest committed model (H64, 2 layers)
DATA=$TESTS/data/faults/tiny.tsv
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$DATA"
TMP=$(mktemp -d /tmp/tbert_faults.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export TBERT_CACHE=$TMP/cache
unset TBERT_TEST_FAIL_WRITE
fail=0
T=(--model "$MODEL" --data "$DATA" --max-len 24 --hidden 8 --epochs 3 --batch 8 --quiet)
FILES=(best.safetensors last.safetensors metrics.json report.html)
printf 'win a free prize now\nsee you at lunch\nclaim your cash today\n' >"$TMP/in.txt"

"$BIN" train "${T[@]}" --out "$TMP/ck" >/dev/null 2>"$TMP/err" || { echo "FAIL: first training: $(cat "$TMP/err")"; exit 1; }
for f in "${FILES[@]}"; do [ -s "$TMP/ck/$f" ] || { echo "FAIL: first training wrote no $f"; exit 1; }; done
cp -a "$TMP/ck" "$TMP/before"
"$BIN" predict --model "$MODEL" --head "$TMP/ck" <"$TMP/in.txt" >"$TMP/pred.before" 2>"$TMP/err" ||
    { echo "FAIL: predict with the first checkpoint: $(cat "$TMP/err")"; exit 1; }
[ "$(wc -l <"$TMP/pred.before")" -eq 3 ] || { echo "FAIL: predict wrote $(wc -l <"$TMP/pred.before") lines for 3"; exit 1; }

# every file of the folder still loads: safetensors by their JSON header (and best by predict), JSON by a parser
check_loadable() { # what
    "$PY" - "$TMP/ck" <<'PYEOF' || { echo "FAIL: $1: a checkpoint file no longer parses"; fail=1; }
import json, os, struct, sys
d = sys.argv[1]
for name in ("best.safetensors", "last.safetensors"):
    b = open(os.path.join(d, name), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
    assert 8 + n + end == len(b), (name, 8 + n + end, len(b))
json.load(open(os.path.join(d, "metrics.json")))
assert open(os.path.join(d, "report.html")).read().rstrip().endswith("</html>")
PYEOF
    "$BIN" predict --model "$MODEL" --head "$TMP/ck" <"$TMP/in.txt" >"$TMP/pred.after" 2>"$TMP/err" ||
        { echo "FAIL: $1: predict with the checkpoint left behind: $(cat "$TMP/err")"; fail=1; }
}

for f in "${FILES[@]}"; do
    rm -rf "$TMP/ck" && cp -a "$TMP/before" "$TMP/ck"
    # another seed, so that a run that wrongly succeeded would leave different bytes
    TBERT_TEST_FAIL_WRITE=$f "$BIN" train "${T[@]}" --seed 7 --out "$TMP/ck" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    [ $rc -eq 2 ] || { echo "FAIL: $f: disk full gave exit $rc, expected 2"; fail=1; }
    [ "$(wc -l <"$TMP/err")" -eq 1 ] || { echo "FAIL: $f: stderr is not one line:"; cat "$TMP/err"; fail=1; }
    grep -qF "$TMP/ck/$f" "$TMP/err" || { echo "FAIL: $f: the error does not name the file: $(cat "$TMP/err")"; fail=1; }
    grep -qF "No space left on device" "$TMP/err" || { echo "FAIL: $f: the error does not say why: $(cat "$TMP/err")"; fail=1; }
    cmp -s "$TMP/ck/$f" "$TMP/before/$f" || { echo "FAIL: $f: a failed write changed the previous file"; fail=1; }
    leftover=$(find "$TMP/ck" -name '*.tmp*' | head -n 3)
    [ -z "$leftover" ] || { echo "FAIL: $f: temp files left behind: $leftover"; fail=1; }
    check_loadable "$f"
    if [ "$f" = best.safetensors ]; then
        cmp -s "$TMP/pred.after" "$TMP/pred.before" || { echo "FAIL: $f: predictions changed after the failed run"; fail=1; }
    fi
    if [ "$f" = last.safetensors ]; then # last.safetensors is what --resume continues from: it must still work
        rm -rf "$TMP/resume" && cp -a "$TMP/ck" "$TMP/resume"
        "$BIN" train "${T[@]}" --out "$TMP/resume" --resume >/dev/null 2>"$TMP/err" ||
            { echo "FAIL: $f: --resume from the kept last.safetensors: $(cat "$TMP/err")"; fail=1; }
    fi
done

# the injection itself is not a no-op: without it the same run succeeds and replaces the files
rm -rf "$TMP/ck" && cp -a "$TMP/before" "$TMP/ck"
"$BIN" train "${T[@]}" --seed 7 --out "$TMP/ck" >/dev/null 2>"$TMP/err" || { echo "FAIL: second training: $(cat "$TMP/err")"; fail=1; }
cmp -s "$TMP/ck/last.safetensors" "$TMP/before/last.safetensors" && { echo "FAIL: seed 7 left last.safetensors unchanged"; fail=1; }

[ $fail -eq 0 ] && echo ok
exit $fail
