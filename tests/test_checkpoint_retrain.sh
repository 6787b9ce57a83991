#!/usr/bin/env bash
# A fresh `tbert train` (not --resume) into a checkpoint folder that holds a finished run A, with other
# settings (run B), that dies part-way: killed after epoch 1 (TBERT_TEST_KILL_AT=epoch:1) or a write failing
# (TBERT_TEST_FAIL_WRITE=NAME, src/fileio.c). The folder must never mix files of A and B: each of
# best/last.safetensors, split.tsv, metrics.json and report.html present is attributed to A or B (checkpoint
# settings, split bytes, metrics without timings, the seed in the report, against uninterrupted runs of A and
# B into fresh folders) and all must belong to one run. Also: --resume after the kill finishes B with
# best/last byte-identical to the uninterrupted B; a successful B replaces A whole; a kill while the finished B
# is moved in is completed by the next run; a file of the user's in the folder is never touched; --out naming a
# file is a one-line error.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/bf16_nopooler # the smallest committed model (H64, 2 layers)
DATA=$TESTS/data/faults/tiny.tsv
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$DATA"
tl_require_python json struct
tl_workdir tbert_retrain
TMP=$TL_WORK
export TBERT_CACHE=$TMP/cache
unset TBERT_TEST_FAIL_WRITE TBERT_TEST_KILL_AT
fail=0
T=(--model "$MODEL" --data "$DATA" --max-len 24 --batch 8 --quiet)
A=(--hidden 8 --epochs 3 --seed 11)
B=(--hidden 16 --epochs 4 --seed 7 --dropout 0.1)
RUN_FILES=(best.safetensors last.safetensors split.tsv metrics.json report.html oof.safetensors training.json)
printf 'win a free prize now\nsee you at lunch\nclaim your cash today\n' >"$TMP/in.txt"

"$BIN" train "${T[@]}" "${A[@]}" --out "$TMP/refA" >/dev/null 2>"$TMP/err" || { echo "FAIL: run A: $(cat "$TMP/err")"; exit 1; }
"$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/refB" >/dev/null 2>"$TMP/err" || { echo "FAIL: run B: $(cat "$TMP/err")"; exit 1; }
for f in "${RUN_FILES[@]}"; do [ -s "$TMP/refA/$f" ] && [ -s "$TMP/refB/$f" ] || { echo "FAIL: a reference run wrote no $f"; exit 1; }; done
"$BIN" predict --model "$MODEL" --head "$TMP/refA" <"$TMP/in.txt" >"$TMP/predA" 2>"$TMP/err" || { echo "FAIL: predict A: $(cat "$TMP/err")"; exit 1; }

# prints the run(s) the folder's files belong to ("A", "B", or "A B" when no file tells them apart) and
# exits 1 when they do not all belong to one run
runs_of() { # folder
    "$PY" - "$1" "$TMP/refA" "$TMP/refB" <<'PYEOF'
import json, os, re, struct, sys
d, refs = sys.argv[1], {"A": sys.argv[2], "B": sys.argv[3]}
def settings(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(json.loads(b[8:8 + n])["__metadata__"]["train"])["settings"]
def metrics(p):
    o = json.load(open(p))
    for k in ("seconds_total", "seconds_features", "feature_cache_hit"):
        o.pop(k, None)
    return o
def report_seed(p):
    m = re.search(r"seed&quot;:\s*&quot;(\d+)", open(p).read())
    return m.group(1) if m else None
key = {"best.safetensors": settings, "last.safetensors": settings, "split.tsv": lambda p: open(p).read(),
       "metrics.json": metrics, "report.html": report_seed, "oof.safetensors": lambda p: open(p, "rb").read(),
       "training.json": lambda p: json.load(open(p))["settings"]}
runs, seen = {"A", "B"}, []
for name, f in key.items():
    p = os.path.join(d, name)
    if not os.path.exists(p):
        continue
    v = f(p)
    cand = {r for r, rd in refs.items() if v is not None and f(os.path.join(rd, name)) == v}
    seen.append(name + "=" + ("/".join(sorted(cand)) or "?"))
    runs &= cand
print(" ".join(sorted(runs)) if runs else "mixed: " + " ".join(seen))
sys.exit(0 if runs else 1)
PYEOF
}
expect_run() { # what folder run
    local got
    got=$(runs_of "$2") || { echo "FAIL: $1: the folder mixes two runs ($got)"; fail=1; return; }
    [ "$got" = "$3" ] || { echo "FAIL: $1: the folder holds run '$got', expected $3"; fail=1; }
}
# the folder's entries, sorted (hidden ones too): nothing left behind, nothing of the user's lost
entries() { (cd "$1" && ls -A | LC_ALL=C sort | tr '\n' ' '); }
expect_entries() { # what folder expected...
    local what=$1 dir=$2; shift 2
    local want got
    want=$(printf '%s\n' "$@" | LC_ALL=C sort | tr '\n' ' ')
    got=$(entries "$dir")
    [ "$got" = "$want" ] || { echo "FAIL: $what: folder holds [$got], expected [$want]"; fail=1; }
}
fresh_A() { rm -rf "$TMP/ck" && cp -a "$TMP/refA" "$TMP/ck" && echo "my notes" >"$TMP/ck/notes.txt"; }

# 1. B killed after epoch 1: the folder is still A, whole (--head loads A); --resume finishes B exactly
fresh_A
(TBERT_TEST_KILL_AT=epoch:1 exec "$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck") >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] || { echo "FAIL: kill: expected death by SIGKILL (137) after epoch 1, got $rc"; fail=1; }
expect_run "B killed after epoch 1" "$TMP/ck" A
for f in "${RUN_FILES[@]}"; do cmp -s "$TMP/ck/$f" "$TMP/refA/$f" || { echo "FAIL: kill: $f of run A changed or went missing"; fail=1; }; done
"$BIN" predict --model "$MODEL" --head "$TMP/ck" <"$TMP/in.txt" >"$TMP/pred" 2>"$TMP/err" ||
    { echo "FAIL: kill: predict with the folder: $(cat "$TMP/err")"; fail=1; }
cmp -s "$TMP/pred" "$TMP/predA" || { echo "FAIL: kill: --head no longer gives run A's probabilities"; fail=1; }
"$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck" --resume >/dev/null 2>"$TMP/err" ||
    { echo "FAIL: kill: --resume of B: $(cat "$TMP/err")"; fail=1; }
expect_run "B resumed" "$TMP/ck" B
for f in best.safetensors last.safetensors split.tsv; do
    cmp -s "$TMP/ck/$f" "$TMP/refB/$f" || { echo "FAIL: kill: resumed B's $f differs from the uninterrupted B"; fail=1; }
done
expect_entries "B resumed" "$TMP/ck" "${RUN_FILES[@]}" notes.txt

# 2. B fails writing each file in turn (a full disk): the folder is one run (A, untouched), the error one line
for f in "${RUN_FILES[@]}"; do
    fresh_A
    TBERT_TEST_FAIL_WRITE=$f "$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck" >/dev/null 2>"$TMP/err"
    rc=$?
    [ $rc -eq 2 ] || { echo "FAIL: $f: failed write gave exit $rc, expected 2"; fail=1; }
    [ "$(wc -l <"$TMP/err")" -eq 1 ] || { echo "FAIL: $f: stderr is not one line:"; cat "$TMP/err"; fail=1; }
    grep -qF "$TMP/ck/$f" "$TMP/err" || { echo "FAIL: $f: the error does not name the file: $(cat "$TMP/err")"; fail=1; }
    grep -qi "previous run" "$TMP/err" || { echo "FAIL: $f: the error does not say what was left: $(cat "$TMP/err")"; fail=1; }
    expect_run "write of $f failed" "$TMP/ck" A
    for g in "${RUN_FILES[@]}"; do cmp -s "$TMP/ck/$g" "$TMP/refA/$g" || { echo "FAIL: $f: $g of run A changed"; fail=1; }; done
    # nothing of B is left where it could be taken for A's; a fresh B then succeeds and replaces A whole
    if [ "$f" = metrics.json ] || [ "$f" = report.html ]; then # B's epochs are all done: --resume commits it
        "$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck" --resume >/dev/null 2>"$TMP/err" ||
            { echo "FAIL: $f: --resume after the failed write: $(cat "$TMP/err")"; fail=1; }
    else
        "$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck" >/dev/null 2>"$TMP/err" ||
            { echo "FAIL: $f: B after the failed write: $(cat "$TMP/err")"; fail=1; }
    fi
    expect_run "$f: B after the failure" "$TMP/ck" B
    cmp -s "$TMP/ck/best.safetensors" "$TMP/refB/best.safetensors" || { echo "FAIL: $f: B's best differs from the uninterrupted B"; fail=1; }
    expect_entries "$f: B after the failure" "$TMP/ck" "${RUN_FILES[@]}" notes.txt
done

# 3. a kill while a finished B is being moved in from the staging folder (src/train_run.c: the old files go,
# then split, metrics, report, best, last come in; the marker says the move began). Simulated here at two
# points: the folder holds one run's files only, and the next `train --out` finishes the move first.
stage_B() { fresh_A && mkdir "$TMP/ck/.tbert-staging" && cp -a "$TMP/refB/." "$TMP/ck/.tbert-staging/" &&
    : >"$TMP/ck/.tbert-staging/.complete" && (cd "$TMP/ck" && rm -f "${RUN_FILES[@]}"); }
move_in() { for f in "$@"; do mv "$TMP/ck/.tbert-staging/$f" "$TMP/ck/$f"; done; }
stage_B && move_in split.tsv metrics.json
expect_run "move stopped before best" "$TMP/ck" B
"$BIN" predict --model "$MODEL" --head "$TMP/ck" <"$TMP/in.txt" >/dev/null 2>&1 && { echo "FAIL: a half-moved folder loads as a head"; fail=1; }
"$BIN" train "${T[@]}" "${A[@]}" --out "$TMP/ck" >/dev/null 2>"$TMP/err" || { echo "FAIL: A after a stopped move: $(cat "$TMP/err")"; fail=1; }
expect_run "A after a stopped move" "$TMP/ck" A
cmp -s "$TMP/ck/best.safetensors" "$TMP/refA/best.safetensors" || { echo "FAIL: A after a stopped move: best is not A's"; fail=1; }
expect_entries "A after a stopped move" "$TMP/ck" "${RUN_FILES[@]}" notes.txt
# stopped before last: resuming B needs the move finished first (best is no longer in the staging folder)
stage_B && move_in split.tsv metrics.json report.html best.safetensors
expect_run "move stopped before last" "$TMP/ck" B
"$BIN" train "${T[@]}" "${B[@]}" --out "$TMP/ck" --resume >/dev/null 2>"$TMP/err" || { echo "FAIL: --resume after a stopped move: $(cat "$TMP/err")"; fail=1; }
expect_run "move finished by --resume" "$TMP/ck" B
for f in best.safetensors last.safetensors; do cmp -s "$TMP/ck/$f" "$TMP/refB/$f" || { echo "FAIL: stopped move: $f is not B's"; fail=1; }; done
expect_entries "move finished by --resume" "$TMP/ck" "${RUN_FILES[@]}" notes.txt

# 4. --out naming a file: one line naming it, exit 2, the file untouched
echo "not a folder" >"$TMP/afile"
"$BIN" train "${T[@]}" "${A[@]}" --out "$TMP/afile" >/dev/null 2>"$TMP/err"
rc=$?
[ $rc -eq 2 ] || { echo "FAIL: --out FILE: exit $rc, expected 2"; fail=1; }
[ "$(wc -l <"$TMP/err")" -eq 1 ] || { echo "FAIL: --out FILE: stderr is not one line:"; cat "$TMP/err"; fail=1; }
grep -qF "$TMP/afile" "$TMP/err" || { echo "FAIL: --out FILE: the error does not name it: $(cat "$TMP/err")"; fail=1; }
[ "$(cat "$TMP/afile")" = "not a folder" ] || { echo "FAIL: --out FILE: the file changed"; fail=1; }

[ $fail -eq 0 ] && echo ok
exit $fail
