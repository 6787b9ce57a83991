#!/usr/bin/env bash
# CLI contract of train/eval/predict on a tiny committed model: usage errors exit 2 with one line on stderr,
# --json shapes, predict's output, a head refused for a model it does not fit, --resume with nothing to
# resume, and a read-only output folder (clear one-line error, previous checkpoint kept).
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/bert_tiny_shape
OTHER=$TESTS/models/minilm_like_f16   # same vocabulary, hidden 192 instead of 128
DATA=$TESTS/data/head/tiny.tsv
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$OTHER/model.safetensors" "$DATA"
TMP=$(mktemp -d /tmp/tbert_train_cli.XXXXXX)
cleanup() { chattr -i "$TMP/ro" 2>/dev/null; chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
export TBERT_CACHE=$TMP/cache
fail=0
T=(--model "$MODEL" --data "$DATA" --max-len 32 --hidden 8 --epochs 3 --batch 8 --quiet)

# usage and input errors: exit 2, exactly one line on stderr, nothing on stdout
EXPECT="--out" expect_usage "no --out" train --model "$MODEL" --data "$DATA"
EXPECT="--lr" expect_usage "bad --lr" train "${T[@]}" --out "$TMP/x" --lr abc
EXPECT="unknown option" expect_usage "unknown option" train --bogus
EXPECT="nosuch.tsv" expect_usage "missing data file" train "${T[@]/$DATA/$TMP/nosuch.tsv}" --out "$TMP/x"
EXPECT="--threshold" expect_usage "bad threshold" train "${T[@]}" --out "$TMP/x" --threshold fpr=7
EXPECT="--recipe" expect_usage "bad recipe" train "${T[@]}" --out "$TMP/x" --recipe nope
EXPECT="--positive" expect_usage "unknown positive label" train "${T[@]}" --out "$TMP/x" --positive eggs
EXPECT="max_len" expect_usage "max_len beyond the model" train "${T[@]}" --out "$TMP/x" --max-len 100
EXPECT="--head" expect_usage "eval without --head" eval --model "$MODEL" --data "$DATA"
EXPECT="best.safetensors" expect_usage "eval of a missing head" eval --model "$MODEL" --head "$TMP/none" --data "$DATA"
EXPECT="--head" expect_usage "predict without --head" predict --model "$MODEL"
for c in train eval predict; do
    "$BIN" $c --help >"$TMP/help" 2>&1 && grep -q "usage: tbert $c" "$TMP/help" || { echo "FAIL: $c --help"; fail=1; }
done

# --resume with nothing to resume: starts fresh, says so in one line, succeeds
"$BIN" train "${T[@]}" --out "$TMP/ck" --resume --json >"$TMP/train.json" 2>"$TMP/err" || { echo "FAIL: fresh --resume: $(cat "$TMP/err")"; fail=1; }
grep -q "nothing to resume" "$TMP/err" || { echo "FAIL: fresh --resume did not say so"; fail=1; }

# --json shapes (train: eval's shape for the test split, plus the rest)
"$PY" - "$TMP/train.json" <<'PYEOF' || fail=1
import json, sys
o = json.load(open(sys.argv[1]))
for k in ("accuracy", "roc_auc", "pr_auc", "threshold", "confusion", "per_class", "train", "val", "test", "best_epoch"):
    assert k in o, "train --json lacks " + k
assert set(o["per_class"]) == {"ham", "spam"}, o["per_class"]
assert set(o["per_class"]["spam"]) == {"precision", "recall", "f1", "support"}, o["per_class"]["spam"]
assert o["split"] == "test" and o["test"]["accuracy"] == o["accuracy"]
c = o["confusion"]
assert len(c) == 2 and sum(map(sum, c)) == o["test"]["n"] == 8, c
PYEOF
"$BIN" eval --model "$MODEL" --head "$TMP/ck" --data "$DATA" --json >"$TMP/eval.json" 2>"$TMP/err" || { echo "FAIL: eval: $(cat "$TMP/err")"; fail=1; }
"$PY" - "$TMP/eval.json" "$TMP/ck/best.safetensors" <<'PYEOF' || fail=1
import json, struct, sys
o = json.load(open(sys.argv[1]))
for k in ("accuracy", "roc_auc", "pr_auc", "threshold", "confusion", "per_class"):
    assert k in o, "eval --json lacks " + k
assert sum(map(sum, o["confusion"])) == 40
assert o["per_class"]["spam"]["support"] == 20 and o["per_class"]["ham"]["support"] == 20
b = open(sys.argv[2], "rb").read()
meta = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
assert abs(o["threshold"] - float(meta["threshold"])) < 1e-6, (o["threshold"], meta["threshold"])
# accuracy is consistent with the confusion matrix
assert abs(o["accuracy"] - (o["confusion"][0][0] + o["confusion"][1][1]) / 40) < 1e-12
PYEOF
# eval --min-accuracy: exit 1 when below
"$BIN" eval --model "$MODEL" --head "$TMP/ck" --data "$DATA" --min-accuracy 1.0 >/dev/null 2>&1
rc=$?; acc=$("$PY" -c "import json;print(json.load(open('$TMP/eval.json'))['accuracy'])")
if [ "$acc" != "1.0" ] && [ $rc -ne 1 ]; then echo "FAIL: --min-accuracy 1.0 with accuracy $acc exited $rc"; fail=1; fi

# predict: one line out per line in, label<TAB>probability, same probabilities in any batch size
printf 'win a free prize now\nsee you at lunch\n\nclaim your cash\n' >"$TMP/in.txt"
"$BIN" predict --model "$MODEL" --head "$TMP/ck" <"$TMP/in.txt" >"$TMP/p1" 2>"$TMP/err" || { echo "FAIL: predict: $(cat "$TMP/err")"; fail=1; }
"$BIN" predict --model "$MODEL" --head "$TMP/ck" --batch 1 <"$TMP/in.txt" >"$TMP/p2" 2>/dev/null
[ "$(wc -l <"$TMP/p1")" -eq 4 ] || { echo "FAIL: predict wrote $(wc -l <"$TMP/p1") lines for 4"; fail=1; }
grep -qvP '^(ham|spam)\t[01]\.[0-9]{6}$' "$TMP/p1" && { echo "FAIL: predict line format:"; cat "$TMP/p1"; fail=1; }
cmp -s "$TMP/p1" "$TMP/p2" || { echo "FAIL: predict differs between batch sizes"; fail=1; }

# a head refused for a model it does not fit (hidden 192 vs 128): one line, exit 2
EXPECT="hidden size" expect_usage "recipe mismatch (eval)" eval --model "$OTHER" --head "$TMP/ck" --data "$DATA"
EXPECT="hidden size" expect_usage "recipe mismatch (predict)" predict --model "$OTHER" --head "$TMP/ck"
# a checkpoint with an unknown recipe_version is refused
"$PY" - "$TMP/ck/best.safetensors" "$TMP/v99" <<'PYEOF'
import json, os, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); r = json.loads(h["__metadata__"]["recipe"]); r["recipe_version"] = 99
h["__metadata__"]["recipe"] = json.dumps(r)
hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
os.makedirs(sys.argv[2], exist_ok=True)
open(os.path.join(sys.argv[2], "best.safetensors"), "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PYEOF
EXPECT="recipe_version 99" expect_usage "unknown recipe_version" eval --model "$MODEL" --head "$TMP/v99" --data "$DATA"

# --ham/--spam take several paths each (and may be repeated); the mail recipe's defaults land in the
# checkpoint: lexical 30522 + evidence block 1024 + header words 16384 x 4, linear head, the
# fpr=0.003,recall=0.8,margin=5 threshold rule (6 messages: too few for the 5 folds, so no cross-fitting)
M=$TESTS/data/mail
"$BIN" train --model "$MODEL" --out "$TMP/mail" --max-len 32 --epochs 2 --val-fraction 0 --quiet --json \
    --ham "$M/alternative.eml" "$M/nested.eml" --ham "$M/crlf.eml" --spam "$M/html_only.eml" "$M/qp_latin1.eml" \
    "$M/rfc2047.eml" >"$TMP/mail.json" 2>"$TMP/mail.err" || { echo "FAIL: train --ham A B --spam C D E: $(cat "$TMP/mail.err")"; fail=1; }
"$PY" - "$TMP/mail.json" "$TMP/mail/metrics.json" <<'PYEOF' || fail=1
import json, sys
o = json.load(open(sys.argv[1]))
assert o["split"] == "train" and o["n"] == 6, (o["split"], o["n"])
assert o["per_class"]["ham"]["support"] == 3 and o["per_class"]["spam"]["support"] == 3, o["per_class"]
PYEOF
"$PY" - "$TMP/mail/best.safetensors" <<'PYEOF' || fail=1
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
meta = json.loads(b[8:8 + n])["__metadata__"]
r = json.loads(meta["recipe"]); h = json.loads(meta["head"]); t = json.loads(meta["train"])["settings"]
assert r["name"] == "mail" and r["lexical_dim"] == 30522 and r["evidence"] == "block" and r["evidence_dim"] == 1024, r
assert "evidence_set" not in r and r["windows"] == 1 and r["normalize"] is True, r
assert r["header_dim"] == 16384 and r["header_weight"] == 4, r
assert h["hidden"] == 0, h
assert t["threshold"] == "fpr=0.003,recall=0.8,margin=5" and t["test_fraction"] == 0 and "cv_folds" not in t, t
PYEOF

# cross-fitting (--cv K): refused beside a validation split; the held-out view covers every training
# example; killed between folds and resumed, it ends bit for bit as an uninterrupted run
EXPECT="--cv" expect_usage "--cv with a validation split" train "${T[@]}" --out "$TMP/x" --cv 3 --val-fraction 0.2
CV=(--model "$MODEL" --data "$DATA" --max-len 32 --hidden 0 --epochs 6 --batch 4 --lr 3e-2 --quiet --cv 4 --val-fraction 0 --test-fraction 0.2)
"$BIN" train "${CV[@]}" --out "$TMP/cv" --json >"$TMP/cv.json" 2>"$TMP/err" || { echo "FAIL: train --cv: $(cat "$TMP/err")"; fail=1; }
"$PY" - "$TMP/cv.json" "$TMP/cv/best.safetensors" <<'PYEOF' || fail=1
import json, struct, sys
o = json.load(open(sys.argv[1]))
assert o["val"]["n"] == o["train"]["n"] == 32 and o["test"]["n"] == 8, (o["train"]["n"], o["val"]["n"], o["test"]["n"])
assert 1 <= o["best_epoch"] <= o["epochs"] == 6, (o["best_epoch"], o["epochs"])  # the folds' median best epoch; their history
b = open(sys.argv[2], "rb").read()
meta = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
assert json.loads(meta["train"])["settings"]["cv_folds"] == 4, meta["train"]
assert abs(float(meta["threshold"]) - o["val"]["threshold"]) < 1e-6
PYEOF
# killed after the second fold (nothing written yet) and resumed: the same files as the uninterrupted run
TBERT_TEST_KILL_AT=fold:2 "$BIN" train "${CV[@]}" --out "$TMP/cvk" >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] || { echo "FAIL: TBERT_TEST_KILL_AT=fold:2 did not kill the run (exit $rc)"; fail=1; }
"$BIN" train "${CV[@]}" --out "$TMP/cvk" --resume >/dev/null 2>"$TMP/err" || { echo "FAIL: --cv --resume: $(cat "$TMP/err")"; fail=1; }
for f in best last oof; do
    cmp -s "$TMP/cv/$f.safetensors" "$TMP/cvk/$f.safetensors" || { echo "FAIL: --cv killed + resumed: $f.safetensors differs"; fail=1; }
done

# read-only output folder: one-line error naming it, exit 2, the previous checkpoint untouched
"$BIN" train "${T[@]}" --out "$TMP/ro" >/dev/null 2>&1 || { echo "FAIL: train into ro"; fail=1; }
cp "$TMP/ro/best.safetensors" "$TMP/best.before"
if [ "$(id -u)" -eq 0 ]; then chattr +i "$TMP/ro" 2>/dev/null; else chmod a-w "$TMP/ro"; fi
if touch "$TMP/ro/probe" 2>/dev/null; then
    rm -f "$TMP/ro/probe"
    tl_skip_part "cannot make a read-only folder here (root without chattr +i on $(df --output=fstype "$TMP" | tail -n1)); test_faults_mount.sh covers a read-only mount"
else
    EXPECT="$TMP/ro" expect_usage "read-only output folder" train "${T[@]}" --out "$TMP/ro" --seed 5
    cmp -s "$TMP/ro/best.safetensors" "$TMP/best.before" || { echo "FAIL: previous best.safetensors changed"; fail=1; }
fi
chattr -i "$TMP/ro" 2>/dev/null; chmod u+w "$TMP/ro"
[ $fail -eq 0 ] && [ "$fails" -eq 0 ] && echo ok
tl_exit $((fail + fails))
