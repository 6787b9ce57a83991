#!/usr/bin/env bash
# The threshold test (issue 14, "A threshold that holds on unseen mail"): the SpamAssassin corpus split in
# half (docs/mail.md: every folder sorted by name, ham easy_ham + easy_ham_2 + hard_ham then spam spam +
# spam_2, even positions train, odd positions are held out: 2,075 ham and 948 spam that training never sees),
# `tbert train --ham --spam` with the default mail recipe on the small committed model (--layers 1), then
# `tbert score` on the held-out half at the threshold metrics.json reports. Passes when the held-out
# false-positive rate and recall each fall inside the 95% Clopper-Pearson interval metrics.json promised
# for them (operating_point.fpr_ci95 / recall_ci95, from the out-of-fold scores the cut was chosen on).
# It fails on the parent commit 43aff46 (no operating_point in metrics.json), and with that commit's
# cross-fitting (a sixth head trained on all the training mail) under this reporting: promised recall 0.800
# [0.773, 0.825], held out 0.860. Exit 77 only when the shared corpus is absent. CPU configurations only: tests/CMakeLists.txt
# registers it only there (about 30 s of CPU on 2 cores).
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
SHARED=${TBERT_SHARED_DATA:-$TESTS/../../shared/data}
CORPUS=$SHARED/mail/spamassassin
MODEL=$TESTS/models/bert_tiny_shape
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors"
for d in easy_ham easy_ham_2 hard_ham spam spam_2; do
    tl_external "$CORPUS/$d" || tl_skip_external "$CORPUS/$d absent (shared corpus)"
done
TMP=$(mktemp -d /tmp/tbert_threshold_holds.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export TBERT_CACHE=$TMP/cache
mkdir -p "$TMP"/{train,held}/{ham,spam}
split() { # class folders...: even positions to train/CLASS, odd to held/CLASS (symlinks keep the corpus read-only)
    local cls=$1 i=0 f; shift
    for f in $(for d in "$@"; do find "$CORPUS/$d" -maxdepth 1 -type f | LC_ALL=C sort; done); do
        if [ $((i % 2)) -eq 0 ]; then ln -s "$f" "$TMP/train/$cls/$(printf %05d $i)"; else ln -s "$f" "$TMP/held/$cls/$(printf %05d $i)"; fi
        i=$((i + 1))
    done
}
split ham easy_ham easy_ham_2 hard_ham
split spam spam spam_2
nh=$(ls "$TMP/held/ham" | wc -l) ns=$(ls "$TMP/held/spam" | wc -l)
[ "$nh" -ge 1000 ] && [ "$ns" -ge 500 ] || { echo "FAIL: the held-out half has $nh ham and $ns spam (want >= 1000 and 500)"; exit 1; }
H=$TMP/head
"$BIN" train --model "$MODEL" --layers 1 --max-len 64 --ham "$TMP/train/ham" --spam "$TMP/train/spam" --out "$H" --quiet \
    >/dev/null 2>"$TMP/train.err" || { echo "FAIL: train: $(cat "$TMP/train.err")"; exit 1; }
for c in ham spam; do
    "$BIN" score --model "$MODEL" --head "$H" --quiet --out "$TMP/$c.jsonl" "$TMP/held/$c" 2>"$TMP/score.err" ||
        { echo "FAIL: score $c: $(cat "$TMP/score.err")"; exit 1; }
done
"$PY" - "$H/metrics.json" "$TMP/ham.jsonl" "$TMP/spam.jsonl" <<'PYEOF'
import json, struct, sys
m = json.load(open(sys.argv[1]))
if "operating_point" not in m:
    print("FAIL: metrics.json promises no operating point (no operating_point object)")
    sys.exit(1)
op = m["operating_point"]
thr = m["threshold"]
assert op["source"] == "out-of-fold" and abs(op["threshold"] - thr) < 1e-7, op
# the records print P(spam) with 6 decimals: compare at the stored threshold rounded the same way
t6 = round(thr, 6)
def read(p):
    s = [json.loads(l) for l in open(p)]
    assert all(r.get("error") is None and r["score"] is not None for r in s), p
    return [r["score"] for r in s]
ham, spam = read(sys.argv[2]), read(sys.argv[3])
fp, tp = sum(s >= t6 for s in ham), sum(s >= t6 for s in spam)
fpr, rec = fp / len(ham), tp / len(spam)
print("threshold %.6f; promised (out-of-fold, %d ham / %d spam): FPR %.4f %s, recall %.4f %s" % (
    thr, op["n_negative"], op["n_positive"], op["fpr"], op["fpr_ci95"], op["recall"], op["recall_ci95"]))
print("held out (%d ham / %d spam): FPR %.4f (%d), recall %.4f (%d)" % (len(ham), len(spam), fpr, fp, rec, tp))
ok = True
for name, got, ci in (("false-positive rate", fpr, op["fpr_ci95"]), ("recall", rec, op["recall_ci95"])):
    if not (ci[0] <= got <= ci[1]):
        print("FAIL: held-out %s %.4f is outside the promised 95%% interval [%.4f, %.4f]" % (name, got, ci[0], ci[1]))
        ok = False
sys.exit(0 if ok else 1)
PYEOF
rc=$?
[ $rc -eq 0 ] && echo "test_threshold_holds: ok"
exit $rc
