#!/usr/bin/env bash
# tbert score / filter end to end on the shared SpamAssassin corpus (skip 77 when absent), with the small
# committed random model tests/models/bert_tiny_shape and a head trained on it by `tbert train` here:
#   1. every one of the 6,046 messages gets exactly one record, exit 0;
#   2. kill -9 at >= 20 points (12 injected with TBERT_TEST_KILL_AT=record:N, the rest at random times),
#      each asserted to have died of SIGKILL, then --resume: the output is byte-identical to an uninterrupted
#      run (so every message is there exactly once, in input order; scores equal within 1e-5);
#   3. shards 0..2 of 3: merged round-robin they are the whole run, with no overlap;
#   4. tbert filter: exit codes 0/1 agree with score's label, --unsure gives 2, errors give 3, and
#      --passthrough adds exactly one X-TBert-Spam header and leaves the message otherwise unchanged.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
S=${TBERT_SHARED_DATA:-$TESTS/../../shared/data}/mail/spamassassin
MODEL=$TESTS/models/bert_tiny_shape
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors"
tl_external "$S/spam" || tl_skip_external "shared corpus not found at $S"
tl_workdir tbert_score_sh
W=$TL_WORK
export TBERT_CACHE=$W/cache
field() { grep -o "\"$1\":[^,}]*" | sed "s/^\"$1\"://; s/^\"//; s/\"$//"; }
# same_records A B: the same records in the same order; scores may differ by 1e-5 (batches are composed
# differently after a resume or in a shard, and BLAS sums need not be bitwise the same), all else exactly.
same_records() {
    [ "$(wc -l < "$1")" -eq "$(wc -l < "$2")" ] || return 1
    paste -d '\n' "$1" "$2" | awk '
        function strip(l) { sub(/"score":[0-9.]+/, "\"score\":S", l); return l }
        function score(l) { if (match(l, /"score":[0-9.]+/)) return substr(l, RSTART + 8, RLENGTH - 8) + 0; return -1 }
        NR % 2 == 1 { a = $0; next }
        { d = score(a) - score($0); if (d < 0) d = -d
          if (strip(a) != strip($0) || d > 1e-5) { print "differs: " a " | " $0 > "/dev/stderr"; bad = 1; exit 1 } }
        END { exit bad }'
}

# ---- a head: trained on hard_ham + spam, mail recipe kept small so that the whole corpus scores fast
HEAD=$W/head
if ! "$BIN" train --model "$MODEL" --ham "$S/hard_ham" --spam "$S/spam" --out "$HEAD" --max-len 32 --windows 1 \
        --lexical-dim 512 --hidden 0 --epochs 3 --quiet > "$W/train.log" 2>&1; then
    cat "$W/train.log"
    echo "FAIL tbert train could not make a head"
    exit 1
fi
echo "ok   trained a head with tbert train"

# ---- 1. the whole corpus: one record per message
DIRS=("$S/easy_ham" "$S/easy_ham_2" "$S/hard_ham" "$S/spam" "$S/spam_2")
"$BIN" score --model "$MODEL" --head "$HEAD" --quiet --out "$W/all.jsonl" "${DIRS[@]}" 2> "$W/all.err"
check "score over the corpus exits 0" [ $? -eq 0 ]
check "6046 records" [ "$(wc -l < "$W/all.jsonl")" -eq 6046 ]
find "${DIRS[@]}" -type f | LC_ALL=C sort > "$W/files.txt"
field source < "$W/all.jsonl" > "$W/sources.txt"
check "each message exactly once, in byte-sorted path order" cmp -s "$W/files.txt" "$W/sources.txt"
check "every record has a score and a label, none an error" \
    [ "$(grep -c '"score":[0-9.]*,"label":"\(spam\|ham\)","tokens":[0-9]*' "$W/all.jsonl")" -eq 6046 ]
grep -q "6046 records (0 with errors)" "$W/all.err"
check "summary on stderr" [ $? -eq 0 ]

# ---- 2. kill -9 and --resume on a subset (an mbox, a Maildir, two folders)
IN=("$TESTS/data/mail/three.mbox" "$TESTS/data/mail/maildir" "$S/hard_ham" "$S/spam")
"$BIN" score --model "$MODEL" --head "$HEAD" --quiet --batch 8 --out "$W/ref.jsonl" "${IN[@]}" 2>/dev/null
N=$(wc -l < "$W/ref.jsonl")
check "reference run: 755 records" [ "$N" -eq 755 ]
OUT=$W/killed.jsonl
rm -f "$OUT"
run_bg() { # run_bg OUTFILE [env...]: a resumed run in the background; sets pid
    "$BIN" score --model "$MODEL" --head "$HEAD" --quiet --batch 8 --resume --out "$1" "${IN[@]}" 2>/dev/null &
    pid=$!
}
kills=0
# injected: the k-th record this run writes raises SIGKILL (sum of k < N, so each run still has work)
for k in 1 2 3 5 8 13 21 34 40 50 60 70; do
    export TBERT_TEST_KILL_AT=record:$k
    run_bg "$OUT"
    wait $pid 2>/dev/null
    rc=$?
    unset TBERT_TEST_KILL_AT
    if [ $rc -ne 137 ]; then echo "FAIL injected kill at record:$k: exit status $rc, not SIGKILL (137)"; fails=$((fails + 1)); fi
    [ $rc -eq 137 ] && kills=$((kills + 1))
done
"$BIN" score --model "$MODEL" --head "$HEAD" --quiet --batch 8 --resume --out "$OUT" "${IN[@]}" 2>/dev/null
check "final --resume after the injected kills exits 0" [ $? -eq 0 ]
check "after injected kills and resumes the output equals the uninterrupted run" same_records "$OUT" "$W/ref.jsonl"
check "no (source, offset) twice" [ "$(field source < "$OUT" | paste - <(field offset < "$OUT") | sort | uniq -d | wc -l)" -eq 0 ]
# random times: kill -9 after 10..150 ms; a run that finishes first is checked and the output started over
OUT2=$W/random.jsonl
rm -f "$OUT2"
random_kills=0; tries=0; completed=0
while [ $random_kills -lt 10 ] && [ $tries -lt 80 ]; do
    tries=$((tries + 1))
    run_bg "$OUT2"
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.3f", 0.01 + 0.14 * r / 32767 }')"
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    rc=$?
    if [ $rc -eq 137 ]; then
        random_kills=$((random_kills + 1))
    elif [ $rc -eq 0 ]; then
        completed=$((completed + 1))
        check "a resumed run that outlived its kill completed the output" same_records "$OUT2" "$W/ref.jsonl"
        rm -f "$OUT2"
    else
        echo "FAIL random kill run: exit status $rc"; fails=$((fails + 1))
    fi
done
"$BIN" score --model "$MODEL" --head "$HEAD" --quiet --batch 8 --resume --out "$OUT2" "${IN[@]}" 2>/dev/null
check "final --resume after the random kills exits 0" [ $? -eq 0 ]
check "after random kills and resumes the output equals the uninterrupted run" same_records "$OUT2" "$W/ref.jsonl"
kills=$((kills + random_kills))
echo "     $kills runs died of SIGKILL ($random_kills at random times, $completed runs completed first)"
check "at least 20 runs died of SIGKILL" [ $kills -ge 20 ]

# ---- 3. shards
for k in 0 1 2; do
    "$BIN" score --model "$MODEL" --head "$HEAD" --quiet --shard $k/3 --out "$W/shard$k.jsonl" "${IN[@]}" 2>/dev/null
    check "shard $k/3 exits 0" [ $? -eq 0 ]
done
# shard K's j-th record (from 0) is item j*3+K of the whole run
for k in 0 1 2; do awk -v K=$k '{ printf "%d\t%s\n", (NR - 1) * 3 + K, $0 }' "$W/shard$k.jsonl"; done | sort -n -k1,1 | cut -f2- > "$W/merged.jsonl"
check "shards merged in round-robin order equal the whole run" same_records "$W/merged.jsonl" "$W/ref.jsonl"
checks "shards are disjoint and not empty" \
    '[ "$(wc -l < "$W/shard0.jsonl")" -gt 200 ] && [ "$(cat "$W"/shard?.jsonl | LC_ALL=C sort | uniq -d | wc -l)" -eq 0 ]'

# ---- 4. filter
# three messages the head calls spam and three it calls ham (labels from the corpus run)
msgs=$( (grep '"label":"spam"' "$W/all.jsonl" | head -3; grep '"label":"ham"' "$W/all.jsonl" | head -3) | field source)
check "the corpus run has both labels to try filter on" [ "$(echo "$msgs" | wc -l)" -eq 6 ]
for msg in $msgs; do
    label=$(grep -F "\"source\":\"$msg\"" "$W/all.jsonl" | field label)
    score=$(grep -F "\"source\":\"$msg\"" "$W/all.jsonl" | field score)
    "$BIN" filter --model "$MODEL" --head "$HEAD" < "$msg"
    rc=$?
    want=1; [ "$label" = spam ] && want=0
    check "filter exit $rc = score's label $label for $(basename "$msg")" [ $rc -eq $want ]
    "$BIN" filter --model "$MODEL" --head "$HEAD" --passthrough < "$msg" > "$W/pass.eml"
    rc2=$?
    verdict=No; [ "$label" = spam ] && verdict=Yes
    hdr=$(grep -a '^X-TBert-Spam: ' "$W/pass.eml")
    # the score printed with 3 decimals, equal to score's within rounding (and float noise between batches)
    checks "passthrough exit $rc2 and header '$hdr' (verdict $verdict, score $score)" \
        '[ $rc2 -eq $rc ] && [ "$(echo "$hdr" | wc -l)" -eq 1 ] && [[ "$hdr" =~ ^X-TBert-Spam:\ $verdict,\ score=([0-9]\.[0-9]{3})$ ]] &&
         awk -v a="${BASH_REMATCH[1]}" -v b="$score" "BEGIN { d = a - b; exit !(d <= 0.0011 && d >= -0.0011) }"'
    check "passthrough leaves the message otherwise unchanged" cmp -s <(grep -av '^X-TBert-Spam: ' "$W/pass.eml") "$msg"
    lo=$(awk -v s="$score" 'BEGIN { v = s - 0.01; if (v < 0) v = 0; printf "%.4f", v }')
    hi=$(awk -v s="$score" 'BEGIN { v = s + 0.01; if (v > 1) v = 1; printf "%.4f", v }')
    "$BIN" filter --model "$MODEL" --head "$HEAD" --unsure "$lo,$hi" < "$msg"
    check "--unsure $lo,$hi around score $score gives 2" [ $? -eq 2 ]
done
"$BIN" filter --model "$MODEL" --head "$W/no-such-head" < "$S/spam/$(ls "$S/spam" | head -1)" 2>/dev/null
check "filter with a missing head exits 3" [ $? -eq 3 ]
"$BIN" filter --model "$MODEL" --head "$W/no-such-head" --passthrough < "$S/spam/$(ls "$S/spam" | head -1)" > "$W/pass.eml" 2>/dev/null
rc=$?
checks "filter error with --passthrough: exit 3, message passed through unchanged" \
    '[ $rc -eq 3 ] && cmp -s "$W/pass.eml" "$S/spam/$(ls "$S/spam" | head -1)"'

# ---- exit 2 when the run cannot go on
"$BIN" score --model "$MODEL" --head "$HEAD" --quiet "$W/no-such-mbox" > /dev/null 2> "$W/e.txt"
rc=$?
checks "missing input: exit 2 with one line naming it" \
    '[ $rc -eq 2 ] && [ "$(wc -l < "$W/e.txt")" -eq 1 ] && grep -q no-such-mbox "$W/e.txt"'
"$BIN" score --model "$MODEL" --head "$HEAD" --shard 3/3 "$S/spam" > /dev/null 2>&1
check "bad --shard: exit 2" [ $? -eq 2 ]
if [ -w /dev/full ]; then
    "$BIN" score --model "$MODEL" --head "$HEAD" --quiet --out /dev/full "$TESTS/data/mail/maildir" 2> "$W/e.txt"
    rc=$?
    checks "a full disk: exit 2 with one line saying so" '[ $rc -eq 2 ] && grep -q "/dev/full: write failed" "$W/e.txt"'
fi
js=$("$BIN" score --model "$MODEL" --head "$HEAD" --quiet --json --out "$W/j.jsonl" "$TESTS/data/mail/maildir" 2>/dev/null)
checks "--json: one object with the totals on stdout" \
    '[ "$(echo "$js" | wc -l)" -eq 1 ] && [[ "$js" == "{\"records\": 2, \"errors\": 0, \"skipped_done\": 0,"* ]]'
"$BIN" score --help > /dev/null && "$BIN" filter --help > /dev/null
check "--help" [ $? -eq 0 ]

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
