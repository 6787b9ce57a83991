#!/usr/bin/env bash
# --resume gives bit-identical checkpoints to an uninterrupted run (CPU): kill with SIGKILL after epoch N
# (TBERT_TEST_KILL_AT=epoch:N) or at a random time, check the process really died of SIGKILL, resume, and
# compare best/last.safetensors byte for byte with the uninterrupted run. >= 20 trials on a tiny model.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
MODEL=$TESTS/models/bert_tiny_shape
DATA=$TESTS/data/head/tiny.tsv
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$DATA"
TMP=$(mktemp -d /tmp/tbert_resume.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export TBERT_CACHE=$TMP/cache
EPOCHS=8
train() { # out_dir extra...  (exec: when run with &, $! is tbert itself, so kill -KILL reaches it)
    local out=$1; shift
    exec "$BIN" train --model "$MODEL" --data "$DATA" --out "$out" --max-len 32 --hidden 16 --dropout 0.2 --epochs $EPOCHS \
        --batch 4 --seed 11 --quiet "$@"
}
fail=0
(train "$TMP/ref") >/dev/null 2>"$TMP/ref.err" || { echo "FAIL: reference run: $(cat "$TMP/ref.err")"; exit 1; }
for f in best.safetensors last.safetensors; do [ -s "$TMP/ref/$f" ] || { echo "FAIL: reference $f missing"; exit 1; }; done

compare() { # trial out_dir
    for f in best.safetensors last.safetensors; do
        if ! cmp -s "$TMP/ref/$f" "$2/$f"; then
            echo "FAIL: trial $1: $f differs from the uninterrupted run"; fail=1
        fi
    done
}

trial=0
# injected kill points: after each epoch 1..EPOCHS-1, twice each with different dropout streams covered
for n in 1 2 3 4 5 6 7 3 1 6; do
    trial=$((trial + 1))
    out=$TMP/t$trial
    (TBERT_TEST_KILL_AT=epoch:$n train "$out") >/dev/null 2>&1
    rc=$?
    if [ $rc -ne 137 ]; then echo "FAIL: trial $trial: expected death by SIGKILL (137) after epoch $n, got $rc"; fail=1; continue; fi
    ep=$("${TBERT_PYTHON:-python3}" -c "
import json,struct,sys
b=open('$out/last.safetensors','rb').read(); n=struct.unpack('<Q',b[:8])[0]
print(json.loads(b[8:8+n])['__metadata__']['epoch'])" 2>/dev/null || echo '?')
    [ "$ep" = "$n" ] || { echo "FAIL: trial $trial: last.safetensors holds epoch $ep, expected $n"; fail=1; }
    (train "$out" --resume) >/dev/null 2>"$out.err" || { echo "FAIL: trial $trial: resume failed: $(cat "$out.err")"; fail=1; continue; }
    compare $trial "$out"
done
# random kill times (a SIGKILL from outside, at any point: maybe mid-write of a checkpoint)
RANDOM=${TBERT_TEST_SEED:-$$}
echo "random kill seed: ${TBERT_TEST_SEED:-$$}"
for i in $(seq 1 12); do
    trial=$((trial + 1))
    out=$TMP/t$trial
    (train "$out") >/dev/null 2>&1 &
    pid=$!
    sleep "0.0$((RANDOM % 10))$((RANDOM % 10))"
    kill -KILL $pid 2>/dev/null
    wait $pid
    rc=$?
    if [ $rc -ne 137 ] && [ $rc -ne 0 ]; then echo "FAIL: trial $trial: unexpected exit $rc"; fail=1; continue; fi
    # resume (from whatever epoch was saved, or fresh when nothing was) must finish with identical files
    (train "$out" --resume) >/dev/null 2>"$out.err" || { echo "FAIL: trial $trial: resume failed: $(cat "$out.err")"; fail=1; continue; }
    compare $trial "$out"
done
# resuming a finished run changes nothing; resuming with other settings is refused with one line
(train "$TMP/ref" --resume) >/dev/null 2>&1 || { echo "FAIL: resume of a finished run"; fail=1; }
cp -r "$TMP/ref" "$TMP/ref2"
if (train "$TMP/ref2" --resume --lr 0.5) >/dev/null 2>"$TMP/mis.err"; then echo "FAIL: resume with other settings accepted"; fail=1; fi
[ "$(wc -l <"$TMP/mis.err")" -eq 1 ] || { echo "FAIL: mismatch error is not one line"; cat "$TMP/mis.err"; fail=1; }
grep -q "cannot --resume" "$TMP/mis.err" || { echo "FAIL: mismatch message: $(cat "$TMP/mis.err")"; fail=1; }
echo "$trial kill/resume trials"
[ $fail -eq 0 ] && echo ok
exit $fail
