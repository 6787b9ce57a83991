#!/usr/bin/env bash
# tbert learn / --unlearn / --rollback / forget (src/learn.c) on the small committed model and generated mail
# (24 ham, 24 spam, distinct texts; a spam written in the ham's words that the head scores as ham):
# - learning that spam moves its score up (by more than 0.05) and encodes that one message only (the output
#   line and learned.jsonl: action, class, sha256 = sha256sum of the file);
# - --unlearn gives back the exact bytes of the first best.safetensors (training is deterministic and the rows
#   come from the store with the bits the first run stored); --rollback puts back the exact bytes of the
#   previous heads in order, and says so when there is none (exit 2, one line);
# - forget removes the message's store entry (the next learn of it encodes it again) and its correction;
# - kill -9 at several moments of a retrain leaves a head that scores and is byte for byte one of the two
#   whole heads (old or new); the next retrain gives the new head's bytes;
# - a running serve reloads when the head changes (its log), without SIGHUP;
# - the warm start (default; the checks above use --full): the score moves, the out-of-fold metrics are sane
#   and hold one row more, the printed threshold is the stored one, warm unlearn drops the row, rollback gives
#   exact bytes back, a damaged learn.state falls back to the full retrain.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
MODEL=$TESTS/models/bert_tiny_shape
[ -f "$MODEL/model.safetensors" ] || { echo "FAIL: $MODEL missing (a committed fixture)"; exit 1; }
W=$(mktemp -d /tmp/tbert_learn.XXXXXX)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill -KILL "$SERVER" 2> /dev/null; rm -rf "$W"; }
trap cleanup EXIT
export TBERT_CACHE=$W/cache
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1 # check, fails

source "$(dirname "${BASH_SOURCE[0]}")/util/learn_mail.sh" || exit 1
learn_mail "$W"
MISS=$W/miss.eml
mk "$MISS" "re: project schedule" "Hi, about the meeting agenda and budget review. zorblax quintafold zorblax quintafold. Regards" "ann@corp.example"

H=$W/head
"$BIN" train --device cpu --model "$MODEL" --ham "$W/ham" --spam "$W/spam" --out "$H" --max-len 32 --lexical-dim 512 \
    --epochs 20 --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; echo "FAIL tbert train"; exit 1; }
check "train records training.json" grep -q '"ham"' "$H/training.json"
cp "$H/best.safetensors" "$W/best0"
score() { "$BIN" score --device cpu --model "$MODEL" --head "$H" "$MISS" 2> /dev/null | sed -n 's/.*"score":\([0-9.e-]*\).*/\1/p'; }
s0=$(score)
# the byte-for-byte checks below use the full retrain (--full); the warm start (the default) is checked at the end
learn() { "$BIN" learn --device cpu --quiet --full --head "$H" "$@" 2>> "$W/learn.err"; }

# learn: the score moves up, one message encoded, the log line
learn --spam "$MISS" > "$W/out1" || { cat "$W/learn.err"; echo "FAIL learn"; exit 1; }
s1=$(score)
echo "score of the missed spam: $s0 before, $s1 after learning it"
check "learning the spam moved its score up by > 0.05" awk -v a="$s0" -v b="$s1" 'BEGIN { exit !(b > a + 0.05) }'
check "learn encoded one message" grep -q "retrained on 49 documents (1 encoded)" "$W/out1"
sha=$(sha256sum "$MISS" | cut -c1-64)
check "learned.jsonl: one learn line for the message" \
    grep -q "\"action\":\"learn\",\"class\":\"spam\",\"sha256\":\"$sha\".*\"via\":\"cli\"" "$H/learned.jsonl"
check "the previous head is in history/1" cmp -s "$W/best0" "$H/history/1/best.safetensors"
cp "$H/best.safetensors" "$W/best1"

# unlearn: the exact first head again, nothing encoded
learn --spam --unlearn "$MISS" > "$W/out2"
check "unlearn: the exact bytes of the first head" cmp -s "$W/best0" "$H/best.safetensors"
check "unlearn encoded nothing" grep -q "(0 encoded)" "$W/out2"

# rollback: the previous heads in order, then none
"$BIN" learn --head "$H" --rollback > /dev/null
check "rollback: the learned head's exact bytes" cmp -s "$W/best1" "$H/best.safetensors"
"$BIN" learn --head "$H" --rollback > /dev/null
check "second rollback: the first head's exact bytes" cmp -s "$W/best0" "$H/best.safetensors"
"$BIN" learn --head "$H" --rollback > "$W/out3" 2> "$W/err3"
rc=$?
check "rollback without history exits 2 with one line" eval '[ $rc -eq 2 ] && [ "$(wc -l < "$W/err3")" -eq 1 ] && [ ! -s "$W/out3" ]' 
"$BIN" learn --head "$H" --spam > /dev/null 2> "$W/err4"
check "learn without a FILE is a usage error" [ $? -eq 2 ]

# forget: the store entry goes, and the next learn encodes the message again
learn --spam "$MISS" > /dev/null
n_before=$(find "$TBERT_CACHE/store" -name '*.row' | wc -l)
"$BIN" forget --device cpu --quiet --full --head "$H" "$MISS" > "$W/out5" 2>> "$W/learn.err"
n_after=$(find "$TBERT_CACHE/store" -name '*.row' | wc -l)
check "forget removed one store entry" [ "$n_after" -eq $((n_before - 1)) ]
check "forget says so and retrains without the message" grep -q "1 store entry removed; in force: 0 ham, 0 spam; retrained on 48" "$W/out5"
check "forget: the first head's bytes again" cmp -s "$W/best0" "$H/best.safetensors"
check "no learned message left in learned/" [ -z "$(ls "$H/learned/spam")" ]
learn --spam "$MISS" > "$W/out6"
check "after forget the message is encoded again" grep -q "(1 encoded)" "$W/out6"
# a learn-only option given to forget is named, also when it takes a value
"$BIN" forget --head "$H" --keep 3 "$MISS" > /dev/null 2> "$W/forget-opt.err" && fail "forget accepted --keep"
check "forget names a learn-only option with a value (--keep)" grep -q "^tbert forget: --keep is an option of tbert learn" "$W/forget-opt.err"
check "history keeps at most 5 heads" [ "$(ls "$H/history" | wc -l)" -le 5 ]

# kill -9 during a retrain: a whole head (old or new) is left, and the next retrain finishes
learn --spam --unlearn "$MISS" --no-retrain > /dev/null
learn --retrain > /dev/null
cmp -s "$W/best0" "$H/best.safetensors" || { echo "FAIL setup: not the first head"; fails=$((fails + 1)); }
learn --spam "$MISS" --no-retrain > /dev/null
for d in 0.01 0.03 0.05 0.08 0.12 0.18 0.25 0.35; do
    "$BIN" learn --device cpu --quiet --head "$H" --retrain > /dev/null 2>&1 &
    pid=$!
    sleep "$d"
    kill -KILL "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    # a kill while the new head's files move in leaves the folder half-moved (no best.safetensors: nothing
    # loads it; a running serve keeps its head) until the next run finishes the move: a learn does it first
    if [ -f "$H/.tbert-staging/.complete" ]; then
        echo "     (the kill after ${d}s stopped the move-in: the next learn finishes it)"
        learn --spam "$MISS" --no-retrain > /dev/null
        learn --retrain > /dev/null
    fi
    s=$(score)
    whole=no
    if cmp -s "$W/best0" "$H/best.safetensors" || cmp -s "$W/best1" "$H/best.safetensors"; then whole=yes; fi
    check "kill after ${d}s: the head scores ($s) and is a whole head" eval '[ -n "$s" ] && [ $whole = yes ]' 
done
# a kill inside the retrain for certain (src/crossfit.c's fault hook: SIGKILL after fold 3), and a full disk
# while writing the new head (src/fileio.c's hook): the old head stays, scores, and no history entry is added
learn --spam --unlearn "$MISS" > /dev/null # the first head again, with the message registered but not learned
learn --spam "$MISS" --no-retrain > /dev/null
TBERT_TEST_KILL_AT=fold:3 "$BIN" learn --device cpu --quiet --head "$H" --retrain > /dev/null 2>&1
rc=$?
check "a kill at fold 3 of the retrain (exit $rc) leaves the old head" eval '[ $rc -ne 0 ] && cmp -s "$W/best0" "$H/best.safetensors"'
s=$(score)
check "the head still scores after that kill ($s, first $s0)" [ "$s" = "$s0" ]
nh=$(ls "$H/history" | wc -l)
TBERT_TEST_FAIL_WRITE=best.safetensors "$BIN" learn --device cpu --quiet --head "$H" --retrain > /dev/null 2> "$W/err7"
rc=$?
check "a full disk during the retrain: exit 2, one line, the old head" \
    eval '[ $rc -eq 2 ] && [ "$(grep -vc warning "$W/err7")" -eq 1 ] && cmp -s "$W/best0" "$H/best.safetensors"'
check "a failed retrain adds no history entry" [ "$(ls "$H/history" | wc -l)" -le "$nh" ]
learn --retrain > /dev/null
check "the retrain after the kills gives the learned head's bytes" cmp -s "$W/best1" "$H/best.safetensors"
"$BIN" learn --head "$H" --rollback > /dev/null
check "rollback after the kills: the first head (a killed retrain's history entry is not a head of its own)" \
    cmp -s "$W/best0" "$H/best.safetensors"

# a move-in stopped part-way (simulated as tests/test_checkpoint_retrain.sh does: the marker, the old files
# gone, two new ones in): the folder has no training.json and no best; learn finishes the move first
RF=(split.tsv metrics.json report.html training.json best.safetensors last.safetensors oof.safetensors)
mkdir "$H/.tbert-staging" && (cd "$H" && cp -a "${RF[@]}" .tbert-staging/ && rm -f "${RF[@]}") &&
    : > "$H/.tbert-staging/.complete" && mv "$H/.tbert-staging/split.tsv" "$H/.tbert-staging/training.json" "$H/"
learn --retrain > /dev/null
rc=$?
check "learn after a stopped move-in: finished the move and retrained (exit $rc)" \
    eval '[ $rc -eq 0 ] && cmp -s "$W/best1" "$H/best.safetensors" && [ ! -e "$H/.tbert-staging" ]'
check "the head before that retrain is the history's newest" cmp -s "$W/best0" "$H/history/$(ls "$H/history" | sort -n | tail -1)/best.safetensors"

# the warm start (the default): from learn.state, one message parsed, each fold head continued, the threshold
# re-chosen from the new out-of-fold scores; it moves the message's score, keeps the head's out-of-fold metrics
# sane, and goes back by --unlearn (warm too) and --rollback (exact bytes)
learn --retrain > /dev/null # the full head without the message, learn.state beside it
check "train/learn --full keep learn.state" [ -s "$H/learn.state" ]
cp "$H/best.safetensors" "$W/bestw0"
sw0=$(score)
"$BIN" learn --device cpu --quiet --head "$H" --spam "$MISS" > "$W/outw1" 2>> "$W/learn.err"
sw1=$(score)
echo "warm: score of the missed spam: $sw0 before, $sw1 after learning it; $(cat "$W/outw1")"
check "warm learn says so and adds one row" grep -q "retrained (warm) on 49 documents" "$W/outw1"
check "warm learn moved the spam's score up by > 0.05" awk -v a="$sw0" -v b="$sw1" 'BEGIN { exit !(b > a + 0.05) }'
opn() { "$TBERT_PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); o=m['operating_point']; print(o['n_negative'], o['n_positive'], o['source'], m['val']['n'], m['val']['roc_auc'])" "$1"; }
read -r nneg npos src valn auc <<< "$(opn "$H/metrics.json")"
check "warm metrics.json: out-of-fold on 24 ham + 25 spam ($nneg, $npos, $src, n $valn), ROC-AUC $auc >= 0.9" \
    eval '[ "$nneg" = 24 ] && [ "$npos" = 25 ] && [ "$src" = out-of-fold ] && [ "$valn" = 49 ] && awk -v a="$auc" "BEGIN { exit !(a >= 0.9) }"'
thr=$(sed -n 's/.*threshold \([0-9.e-]*\),.*/\1/p' "$W/outw1")
check "the threshold printed is the one metrics.json and oof.safetensors keep ($thr)" \
    "$TBERT_PYTHON" -c "import json,sys; from safetensors import safe_open; t=float(sys.argv[1]); m=json.load(open(sys.argv[2])); f=safe_open(sys.argv[3],'np'); sys.exit(not (abs(m['threshold']-t) <= 1e-5*t and abs(float(f.metadata()['threshold'])-t) <= 1e-5*t and f.get_tensor('score').shape[0] == 49))" "$thr" "$H/metrics.json" "$H/oof.safetensors"
"$BIN" learn --device cpu --quiet --head "$H" --spam --unlearn "$MISS" > "$W/outw2" 2>> "$W/learn.err"
sw2=$(score)
check "warm unlearn drops the row (48 documents) and the score falls back below the learned one ($sw2 < $sw1)" \
    eval 'grep -q "retrained (warm) on 48 documents (0 encoded)" "$W/outw2" && awk -v a="$sw2" -v b="$sw1" "BEGIN { exit !(a < b) }"'
"$BIN" learn --head "$H" --rollback > /dev/null
"$BIN" learn --head "$H" --rollback > /dev/null
check "two rollbacks after warm learns: the exact head before them" cmp -s "$W/bestw0" "$H/best.safetensors"
printf 'TBLSTATE garbage' > "$H/learn.state"
"$BIN" learn --device cpu --head "$H" --spam "$MISS" > "$W/outw3" 2> "$W/errw3"
check "a damaged learn.state: one line, then the full retrain" \
    eval 'grep -q "learn.state: .*retraining in full" "$W/errw3" && grep -q "retrained on 49 documents" "$W/outw3" && ! grep -q warm "$W/outw3"'

# serve reloads when the head changes
"$BIN" serve --device cpu --model "$MODEL" --head "$H" --http "unix:$W/http.sock" 2> "$W/serve.log" &
SERVER=$!
for _ in $(seq 1 300); do grep -q "listening on" "$W/serve.log" && break; sleep 0.1; done
learn --spam --unlearn "$MISS" > /dev/null
for _ in $(seq 1 100); do grep -q "reloaded: head" "$W/serve.log" && break; sleep 0.1; done
check "serve reloaded the new head by itself" grep -q "reloaded: head" "$W/serve.log"
kill -TERM "$SERVER"
wait "$SERVER" 2> /dev/null
SERVER=

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; cat "$W/learn.err" | tail -5; exit 1; }
echo "all learn checks passed"
