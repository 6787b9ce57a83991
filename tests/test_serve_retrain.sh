#!/usr/bin/env bash
# tbert serve's debounced background retrain (src/serve_retrain.c) with the real spamc: a head trained on
# generated mail (24 ham, 24 spam, the small committed model, a fixed cut of 0.5 so that a verdict can flip)
# misses a spam written in the ham's words; `spamc -L spam` (TELL) registers it, and after --retrain-after 1
# second without further corrections serve runs the warm retrain in a child, reloads the new head by itself,
# and the same spamc -c now says spam. Meanwhile a client loop scores a ham message without pause: every one
# of its requests is answered (no connection dropped or refused during the retrain and the reload). Two TELLs
# in quick succession give one retrain (the debounce), and --retrain-after 0 never retrains.
SERVE_TOOLS=(spamc)
. "$(dirname "$0")/serve_common.sh"

source "$(dirname "${BASH_SOURCE[0]}")/util/learn_mail.sh" || exit 1
learn_mail "$W"
MISS=$W/miss.eml
mk "$MISS" "re: project" "Hi, about the meeting. zorblax quintafold zorblax quintafold. Regards" "ann@corp.example"
MISS2=$W/miss2.eml
mk "$MISS2" "re: team lunch" "Hi, the team lunch and quarterly notes. blorvath quintafold. Regards" "ann@corp.example"
"$BIN" train --device cpu --model "$MODEL" --ham "$W/ham" --spam "$W/spam" --out "$W/head" --max-len 32 --lexical-dim 512 \
    --epochs 20 --threshold 0.5 --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; echo "FAIL tbert train"; exit 1; }
check "the head keeps learn.state (the warm retrain starts from it)" [ -s "$W/head/learn.state" ]

LOG=$W/serve.log
start_server "$LOG" --spamd 127.0.0.1:0 --retrain-after 1 --timeout 5 || { echo "FAIL tbert serve did not start"; exit 1; }
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")
verdict() { spamc -x -c -p "$PORT" < "$1"; } # prints score/5.0; exit 1 spam, 0 ham
before=$(verdict "$MISS")
rc_before=$?
check "before learning, spamc -c calls the missed spam ham ($before, exit $rc_before)" [ "$rc_before" -eq 0 ]

# a client that never stops while the retrain and the reload happen
(
    n=0 bad=0
    while [ ! -e "$W/stop" ]; do
        out=$(spamc -x -c -p "$PORT" < "$W/ham/h1.eml")
        rc=$?
        n=$((n + 1))
        if { [ $rc -ne 0 ] && [ $rc -ne 1 ]; } || ! echo "$out" | grep -qE '^-?[0-9.]+/5\.0$'; then bad=$((bad + 1)); fi
    done
    echo "$n $bad" > "$W/loop.result"
) &
LOOP=$!

spamc -x -p "$PORT" -L spam < "$MISS" > "$W/tell.out" 2>&1
check "TELL (spamc -L spam) answered" grep -q "Message successfully" "$W/tell.out"
check "TELL appended to learned.jsonl at once" grep -q '"via":"spamd"' "$W/head/learned.jsonl"
for _ in $(seq 1 300); do grep -q "reloaded: head" "$LOG" && break; sleep 0.1; done
check "serve retrained after the quiet second and reloaded by itself" \
    eval 'grep -q "retrain: 1 s without new corrections" "$LOG" && grep -q "retrained (warm) on 49 documents" "$LOG" && grep -q "reloaded: head" "$LOG"'
after=$(verdict "$MISS")
rc_after=$?
echo "missed spam: $before before, $after after the background retrain"
check "after the retrain spamc -c calls it spam ($after, exit $rc_after)" [ "$rc_after" -eq 1 ]

# two corrections in a burst: one retrain
n0=$(grep -c "retrain: 1 s without" "$LOG")
spamc -x -p "$PORT" -L spam < "$MISS2" > /dev/null 2>&1
spamc -x -p "$PORT" -L ham < "$W/ham/h2.eml" > /dev/null 2>&1
for _ in $(seq 1 300); do [ "$(grep -c "retrain: done" "$LOG")" -ge 2 ] && break; sleep 0.1; done
sleep 1.5
n1=$(grep -c "retrain: 1 s without" "$LOG")
check "two TELLs within the quiet second gave one retrain ($((n1 - n0)))" [ $((n1 - n0)) -eq 1 ]
check "the second retrain learned both (51 documents)" grep -q "retrained (warm) on 51 documents" "$LOG"

: > "$W/stop"
wait "$LOOP"
read -r n bad < "$W/loop.result"
check "the client loop got an answer to every request during retrains and reloads ($n requests, $bad bad)" \
    eval '[ "$n" -gt 5 ] && [ "$bad" -eq 0 ]'
kill -TERM "$SERVER"
wait "$SERVER"
rc=$?
SERVER=
check "SIGTERM: exit 0 ($rc)" [ $rc -eq 0 ]
check "no sanitizer report in the server's log" log_clean "$LOG"

# --retrain-after 0: corrections are appended, nothing retrains
LOG0=$W/serve0.log
start_server "$LOG0" --spamd 127.0.0.1:0 --retrain-after 0 || { echo "FAIL tbert serve did not start"; exit 1; }
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG0")
spamc -x -p "$PORT" -L ham < "$W/ham/h3.eml" > /dev/null 2>&1
sleep 2.5
check "--retrain-after 0: TELL appended, no retrain" eval '[ "$(grep -c "\"via\":\"spamd\"" "$W/head/learned.jsonl")" -eq 4 ] && ! grep -q "retrain:" "$LOG0"'
kill -TERM "$SERVER"
wait "$SERVER"
SERVER=

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; tail -20 "$LOG"; exit 1; }
echo "all serve retrain checks passed"
