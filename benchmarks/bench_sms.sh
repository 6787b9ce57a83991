#!/usr/bin/env bash
# SMS Spam Collection benchmark of `tbert train` (issue 6): stratified split 70/10/20 (train/val/test; the
# test 20% is the target's "80/20"), seed 42, frozen MiniLM, with its peers measured in the same run:
# bogofilter trained on train+val of the same split, and scikit-learn logistic regression on the same tbert
# features. Also --recipe seed on the same split and on the 656-message seed set, and the wall time of
# `tbert train` end to end with a cold and a warm feature cache.
#   benchmarks/bench_sms.sh [TBERT_BIN]      (env: PY=/opt/golden/bin/python, SHARED=../shared/data)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/tbert}
PY=${PY:-/opt/golden/bin/python}
SHARED=${SHARED:-$ROOT/../shared/data}
SMS=$SHARED/sms/SMSSpamCollection
SEED=$SHARED/seed/spam.csv
[ -x "$BIN" ] || { echo "bench_sms: no tbert binary at $BIN" >&2; exit 2; }
[ -f "$SMS" ] || { echo "bench_sms: $SMS missing" >&2; exit 2; }
command -v bogofilter >/dev/null || { echo "bench_sms: bogofilter not installed (apt-get install bogofilter)" >&2; exit 2; }
"$PY" -c "import sklearn, numpy" || { echo "bench_sms: $PY lacks scikit-learn/numpy" >&2; exit 2; }
REAL_CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
[ -d "$REAL_CACHE/models/minilm" ] || { echo "bench_sms: fetch the model first (models/fetch.sh minilm)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/bench_sms.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/cache/models"
ln -s "$REAL_CACHE/models/minilm" "$TMP/cache/models/minilm"
export TBERT_CACHE=$TMP/cache   # a cold feature cache for the timed run

echo "date: $(date -u)"
echo "machine: $(lscpu | grep -m1 'Model name' | sed 's/ *Model name: *//'), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tbert: $("$BIN" --version)"
summ() { # label json-file
    "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
o = json.load(open(sys.argv[2]))
t = o["test"]; pc = t["per_class"]
fp = t["confusion"][0][1] if t["labels"][1] == "spam" else t["confusion"][1][0]
fn = t["confusion"][1][0] if t["labels"][1] == "spam" else t["confusion"][0][1]
print("%-44s test acc %.4f  F1(spam) %.4f  FP %d  FN %d  ROC-AUC %.4f  (best epoch %d, %.1f s, features %.1f s%s)" %
      (sys.argv[1], t["accuracy"], pc["spam"]["f1"], fp, fn, t["roc_auc"], o["best_epoch"], o["seconds"],
       o["seconds_features"], ", cached" if o["feature_cache_hit"] else ""))
PYEOF
}
run() { # name outdir args...
    local name=$1 out=$2; shift 2
    local t0=$(date +%s.%N)
    "$BIN" train --quiet --json --out "$out" "$@" >"$out.json"
    local t1=$(date +%s.%N)
    summ "$name" "$out.json"
    echo "  wall $(echo "$t1 - $t0" | bc) s: tbert train $*" | sed "s#$SHARED#\$SHARED#g"
}
echo
echo "== SMS Spam Collection (5,574 messages), seed 42, test = 20%"
run "tbert text recipe (default), cold cache" "$TMP/text" --data "$SMS" --export-features "$TMP/text.npy"
run "tbert text recipe (default), warm cache" "$TMP/text2" --data "$SMS"
run "tbert text recipe, linear head" "$TMP/lin" --data "$SMS" --hidden 0 --lr 1e-3 --epochs 40
run "tbert --lexical-dim 0 (MiniLM mean only)" "$TMP/nolex" --data "$SMS" --lexical-dim 0 --export-features "$TMP/nolex.npy"
run "tbert --recipe seed (flatten, linear, 10 ep)" "$TMP/seedsms" --data "$SMS" --recipe seed
"$PY" "$ROOT/benchmarks/peers/sklearn_head.py" "$TMP/text.npy" "$TMP/text/split.tsv" | sed 's/^/peer: /; s/logreg/logreg (text-recipe features)/'
"$PY" "$ROOT/benchmarks/peers/sklearn_head.py" "$TMP/nolex.npy" "$TMP/nolex/split.tsv" | sed 's/^/peer: /; s/logreg/logreg (MiniLM mean only)/'
"$PY" "$ROOT/benchmarks/peers/bogofilter_split.py" "$SMS" "$TMP/text/split.tsv" | sed 's/^/peer: /'
if [ -f "$SEED" ]; then
    echo
    echo "== seed set (656 messages, the tutorial's data), seed 42, test = 20%"
    run "tbert --recipe seed" "$TMP/seedseed" --data "$SEED" --recipe seed
    run "tbert text recipe (default)" "$TMP/seedtext" --data "$SEED" --export-features "$TMP/seed.npy"
    "$PY" "$ROOT/benchmarks/peers/sklearn_head.py" "$TMP/seed.npy" "$TMP/seedtext/split.tsv" | sed 's/^/peer: /'
    "$PY" "$ROOT/benchmarks/peers/bogofilter_split.py" "$SEED" "$TMP/seedtext/split.tsv" | sed 's/^/peer: /'
fi
