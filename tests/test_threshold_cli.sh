#!/usr/bin/env bash
# tbert threshold on a tiny committed model: train (--cv) keeps the out-of-fold scores (oof.safetensors) and
# metrics.json's operating point (counts equal to the out-of-fold confusion, 95% Clopper-Pearson intervals
# equal to an exact computation here in Python fractions, atol 1e-9); `tbert threshold --fpr X` re-picks the
# cut from those scores (the rule recomputed here from the stored scores), rewrites best.safetensors and
# metrics.json (eval then uses the new cut), prints intervals; usage errors exit 2 with one line.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
MODEL=$TESTS/models/bert_tiny_shape
DATA=$TESTS/data/head/tiny.tsv
[ -f "$MODEL/model.safetensors" ] || { echo "FAIL: $MODEL missing (a committed fixture)"; exit 1; }
TMP=$(mktemp -d /tmp/tbert_threshold_cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export TBERT_CACHE=$TMP/cache
fail=0

"$BIN" threshold --help | grep -q -- "--fpr" || { echo "FAIL: threshold --help"; fail=1; }
H=$TMP/h
"$BIN" train --model "$MODEL" --data "$DATA" --max-len 32 --hidden 0 --epochs 6 --batch 4 --lr 3e-2 --quiet --cv 4 \
    --val-fraction 0 --test-fraction 0 --threshold fpr=0.1 --out "$H" --json >"$TMP/train.json" 2>"$TMP/train.err" ||
    { echo "FAIL: train: $(cat "$TMP/train.err")"; exit 1; }
[ -f "$H/oof.safetensors" ] || { echo "FAIL: train kept no oof.safetensors"; exit 1; }
# 40 examples, 20 ham: fpr=0.1 needs 36 ham at 95%: the warning line
grep -q "warning: 20 held-out negatives are too few to show a false-positive rate of 0.1" "$TMP/train.err" ||
    { echo "FAIL: no too-few-ham warning: $(cat "$TMP/train.err")"; fail=1; }

cat >"$TMP/check.py" <<'PYEOF'
import json, struct, sys
from fractions import Fraction
from math import comb

def safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__")
    t = {}
    for name, d in h.items():
        raw = b[8 + n + d["data_offsets"][0]:8 + n + d["data_offsets"][1]]
        t[name] = list(struct.unpack("<%df" % (len(raw) // 4), raw)) if d["dtype"] == "F32" else list(raw)
    return meta, t

def tail_ge(k, n, p):  # P(X >= k), exact
    return sum(Fraction(comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

def cp(k, n):  # exact Clopper-Pearson 95% by bisection on rational tails (60 halvings: 1e-18)
    def bis(f):
        lo, hi = Fraction(0), Fraction(1)
        for _ in range(60):
            mid = (lo + hi) / 2
            if f(mid): lo = mid
            else: hi = mid
        return float((lo + hi) / 2)
    a = Fraction(1, 40)
    lo = 0.0 if k == 0 else bis(lambda p: tail_ge(k, n, p) < a)
    hi = 1.0 if k == n else bis(lambda p: 1 - tail_ge(k + 1, n, p) > a)
    return lo, hi

def op_check(op, scores, pos, thr, where):
    fp = sum(1 for s, y in zip(scores, pos) if not y and s >= thr)
    tp = sum(1 for s, y in zip(scores, pos) if y and s >= thr)
    nn, npos = pos.count(0), pos.count(1)
    assert (op["false_positives"], op["n_negative"], op["true_positives"], op["n_positive"]) == (fp, nn, tp, npos), (where, op, fp, tp)
    for key, k, n in (("fpr_ci95", fp, nn), ("recall_ci95", tp, npos)):
        ref = cp(k, n)
        assert all(abs(g - r) <= 1e-9 for g, r in zip(op[key], ref)), (where, key, op[key], ref)
    assert abs(op["fpr"] - fp / nn) < 1e-12 and abs(op["recall"] - tp / npos) < 1e-12, where

def fpr_rule(scores, pos, x):  # tbert_threshold_choose("fpr=X"): lowest cut with FP/N <= X, midpoint below the group
    v = sorted(zip(scores, pos), key=lambda t: -t[0])
    N = pos.count(0)
    fp, best, i = 0, None, 0
    import numpy as np
    while i < len(v):
        j = i
        while j < len(v) and v[j][0] == v[i][0]:
            fp += v[j][1] == 0
            j += 1
        if fp / N > x: break
        hi = np.float32(v[j - 1][0])
        if j < len(v):
            lo = np.float32(v[j][0]); mid = np.float32(0.5 * (float(hi) + float(lo)))
            best = float(mid if mid > lo else hi)
        else:
            best = float(hi)
        i = j
    return best

mode, d = sys.argv[1], sys.argv[2]
meta, t = safetensors(d + "/oof.safetensors")
scores, pos = t["score"], t["positive"]
assert meta["format"] == "tbert-oof" and meta["source"] == "out-of-fold" and len(scores) == 40, meta
m = json.load(open(d + "/metrics.json"))
bmeta, _ = safetensors(d + "/best.safetensors")
thr = float(bmeta["threshold"])
if mode == "train":
    op = m["operating_point"]
    assert abs(op["threshold"] - thr) < 1e-7 and abs(m["threshold"] - thr) < 1e-7, (op, thr)
    c = m["val"]["confusion"]  # rows true (ham, spam), columns predicted
    assert (c[0][1], c[1][1]) == (op["false_positives"], op["true_positives"]), (c, op)
    assert op["fpr_target"] == 0.1 and op["negatives_needed"] == 36 and "warning" in op, op
    op_check(op, scores, pos, thr, "train")
    assert json.load(open(sys.argv[3]))["operating_point"] == op, "train --json and metrics.json differ"
else:
    x = float(sys.argv[3]); out = json.load(open(sys.argv[4]))
    want = fpr_rule(scores, pos, x) if mode == "fpr" else x
    assert abs(thr - want) <= 1e-7 and abs(out["threshold"] - want) <= 1e-7, (thr, want, out)
    assert abs(m["threshold"] - want) <= 1e-7 and abs(m["operating_point"]["threshold"] - want) <= 1e-7, m
    assert m["threshold_repicked"]["rule"] == out["rule"], m
    op_check(out, scores, pos, want, mode)
    op_check(m["operating_point"], scores, pos, want, mode + " metrics.json")
    assert abs(float(meta["threshold"]) - want) <= 1e-7 and meta["rule"] == out["rule"], meta
    c = m["val"]["confusion"]
    assert (c[0][1], c[1][1]) == (out["false_positives"], out["true_positives"]), (c, out)
print(mode, "ok: threshold", thr)
PYEOF
"$PY" "$TMP/check.py" train "$H" "$TMP/train.json" || fail=1

# --fpr X: the rule on the stored scores; best.safetensors, metrics.json, oof.safetensors rewritten
"$BIN" threshold --head "$H" --fpr 0.3 --json >"$TMP/op.json" 2>"$TMP/err" || { echo "FAIL: threshold --fpr: $(cat "$TMP/err")"; fail=1; }
"$PY" "$TMP/check.py" fpr "$H" 0.3 "$TMP/op.json" || fail=1
# eval now decides at the new cut
"$BIN" eval --model "$MODEL" --head "$H" --data "$DATA" --json >"$TMP/eval.json" 2>/dev/null || { echo "FAIL: eval after threshold"; fail=1; }
"$PY" -c "import json,sys; e=json.load(open('$TMP/eval.json')); o=json.load(open('$TMP/op.json')); assert abs(e['threshold']-o['threshold'])<1e-7,(e['threshold'],o)" || fail=1
# a VALUE is kept as is; the text output names the intervals
"$BIN" threshold --head "$H" --threshold 0.7 --json >"$TMP/op2.json" 2>"$TMP/err" || { echo "FAIL: threshold VALUE: $(cat "$TMP/err")"; fail=1; }
"$PY" "$TMP/check.py" value "$H" 0.7 "$TMP/op2.json" || fail=1
"$BIN" threshold --head "$H" --threshold fpr=0.2 >"$TMP/text" 2>/dev/null || { echo "FAIL: threshold text output"; fail=1; }
grep -q "^false positives .* 95% interval \[" "$TMP/text" && grep -q "^recall .* 95% interval \[" "$TMP/text" || { echo "FAIL: text output:"; cat "$TMP/text"; fail=1; }

EXPECT="--head" expect_usage "no --head" threshold --fpr 0.1
EXPECT="exactly one" expect_usage "no rule" threshold --head "$H"
EXPECT="exactly one" expect_usage "two rules" threshold --head "$H" --fpr 0.1 --threshold f1
EXPECT="--fpr" expect_usage "bad --fpr" threshold --head "$H" --fpr 2
EXPECT="--threshold" expect_usage "bad rule" threshold --head "$H" --threshold fpr=abc
EXPECT="best.safetensors" expect_usage "no head" threshold --head "$TMP/none" --fpr 0.1
cp -r "$H" "$TMP/old" && rm "$TMP/old/oof.safetensors"
cp "$TMP/old/best.safetensors" "$TMP/best.before"
EXPECT="oof.safetensors" expect_usage "a head from before oof.safetensors" threshold --head "$TMP/old" --fpr 0.1
cmp -s "$TMP/old/best.safetensors" "$TMP/best.before" || { echo "FAIL: a refused re-pick changed best.safetensors"; fail=1; }
printf 'not a safetensors file' >"$H/oof.safetensors"
EXPECT="oof.safetensors" expect_usage "corrupt oof.safetensors" threshold --head "$H" --fpr 0.1
[ $fail -eq 0 ] && [ "$fails" -eq 0 ] && echo "test_threshold_cli: ok"
[ $fail -eq 0 ] && [ "$fails" -eq 0 ]
