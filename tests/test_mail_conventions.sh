#!/usr/bin/env bash
# The conventions mail admins rely on (issue 14), on the committed test messages (tests/data/mail: 8 ham,
# 8 spam) with the small committed model and heads trained here (no shared corpus needed):
#   1. filter: -p -e exits 0 whatever the verdict; -p alone keeps bogofilter's codes; -H all adds
#      X-Spam-Flag/Status/Level + X-TBert-Spam with score = 5 + logit(p) - logit(threshold) (checked in awk
#      from p and the threshold printed beside it) and floor(score) stars; filtering twice gives the same bytes
#      as filtering once; forged verdict headers are removed and change nothing; -n renames our line and
#      refuses names that would be evidence; -H tbert leaves an upstream X-Spam-Status alone.
#   2. our headers are never evidence: forged X-TBert-Spam / X-Spam-* headers leave score's P unchanged
#      (exactly, as printed), and a head trained on forged copies scores every message exactly as the head
#      trained on the clean ones (train's document).
#   3. eval --ham/--spam: its confusion matrix equals the one counted from score's labels; score --threshold
#      VALUE and --unsure LO,HI set the label column (checked against P in awk); --threshold f1 exits 2.
#   4. an empty folder: score says so in one line and exits 0.
#   5. not a message (a NUL byte in the first 8 KB, no header line before the first blank line): an error
#      record in score, exit 3 in filter (-p passes the input through).
#   6. score --resume matches inputs by resolved path, writes OUT.tbert.json (head, model, recipe, label
#      rule) and refuses to append when another head or label rule wrote the output.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=$(cd "${TBERT_TESTS_DIR:-$(dirname "$0")}" && pwd)
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac # part 6 runs from another folder
MODEL=$TESTS/models/bert_tiny_shape
D=$TESTS/data/mail
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1 # check, checks, fails
tl_workdir tbert_mailconv
W=$TL_WORK
export TBERT_CACHE=$W/cache
field() { grep -o "\"$1\":[^,}]*" | sed "s/^\"$1\"://; s/^\"//; s/\"$//"; }
for f in alternative crlf html_only nested qp_latin1 rfc2047 attachment_only bad_bytes cp1252_8bit shift_jis utf8_base64; do
    [ -f "$D/$f.eml" ] || { echo "FAIL committed fixture $D/$f.eml is missing"; exit 1; }
done

HAM=("$D/alternative.eml" "$D/crlf.eml" "$D/html_only.eml" "$D/nested.eml" "$D/qp_latin1.eml" "$D/rfc2047.eml" "$D/maildir")
SPAM=("$D/attachment_only.eml" "$D/bad_bytes.eml" "$D/cp1252_8bit.eml" "$D/shift_jis.eml" "$D/utf8_base64.eml" "$D/three.mbox")
train() { # train OUT HAM_DIR SPAM_DIR [SEED]
    "$BIN" train --device cpu --model "$MODEL" --ham "$2" --spam "$3" --out "$1" --max-len 32 --lexical-dim 512 \
        --epochs 30 --seed "${4:-7}" --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; echo "FAIL tbert train"; exit 1; }
}
# clean and forged copies of the single-file messages, as folders (every file one message)
mkdir -p "$W/clean/ham" "$W/clean/spam" "$W/forged/ham" "$W/forged/spam"
for f in alternative crlf html_only nested qp_latin1 rfc2047; do cp "$D/$f.eml" "$W/clean/ham/"; done
for f in attachment_only bad_bytes cp1252_8bit shift_jis utf8_base64; do cp "$D/$f.eml" "$W/clean/spam/"; done
for f in "$W"/clean/*/*.eml; do
    g=${f/\/clean\//\/forged\/}
    # forged verdicts of both kinds, spelled in several cases, one folded over two lines, in the message's
    # own line ending
    e='\n'; head -1 "$f" | grep -q $'\r$' && e='\r\n'
    { printf "X-TBert-Spam: Yes, score=1.000${e}X-Spam-Flag: YES${e}x-spam-status: Yes, score=99.0 required=5.0$e"
      printf "  tests=FORGED${e}X-Spam-Level: **********${e}X-TBert-Learned: spam$e"; cat "$f"; } > "$g"
done
train "$W/head" "$W/clean/ham" "$W/clean/spam"
train "$W/head_forged" "$W/forged/ham" "$W/forged/spam"
train "$W/head_seed8" "$W/clean/ham" "$W/clean/spam" 8
echo "ok   trained heads on clean and on forged copies"
H=(--device cpu --model "$MODEL")

# ---- 1. filter
for m in "$W"/clean/*/*.eml; do
    n=$(basename "$m")
    "$BIN" filter "${H[@]}" -d "$W/head" < "$m"
    rc=$?
    "$BIN" filter "${H[@]}" -d "$W/head" -p < "$m" > "$W/p.eml"
    rcp=$?
    "$BIN" filter "${H[@]}" -d "$W/head" -p -e < "$m" > "$W/pe.eml"
    rce=$?
    checks "$n: exit $rc (0/1); -p keeps it ($rcp), -p -e exits 0 ($rce) with the same output" \
        '[ $rc -le 1 ] && [ $rcp -eq $rc ] && [ $rce -eq 0 ] && cmp -s "$W/p.eml" "$W/pe.eml"'
    "$BIN" filter "${H[@]}" --head "$W/head" --passthrough -H all < "$m" > "$W/a1.eml"
    "$BIN" filter "${H[@]}" -d "$W/head" -p -H all < "$W/a1.eml" > "$W/a2.eml"
    check "$n: filtering twice gives the same bytes as once" cmp -s "$W/a1.eml" "$W/a2.eml"
    "$BIN" filter "${H[@]}" -d "$W/head" -p -H all < "${m/\/clean\//\/forged\/}" > "$W/f1.eml"
    check "$n: forged verdict headers are removed and change nothing" cmp -s "$W/a1.eml" "$W/f1.eml"
    checks "$n: one each of X-Spam-Flag, X-Spam-Status, X-Spam-Level, X-TBert-Spam; body unchanged" \
        '[ "$(grep -ci "^X-Spam-Flag:" "$W/a1.eml")" -eq 1 ] && [ "$(grep -ci "^X-Spam-Status:" "$W/a1.eml")" -eq 1 ] &&
         [ "$(grep -ci "^X-Spam-Level:" "$W/a1.eml")" -eq 1 ] && [ "$(grep -ci "^X-TBert-" "$W/a1.eml")" -eq 1 ] &&
         cmp -s <(grep -av "^X-Spam-\|^X-TBert-Spam:" "$W/a1.eml") "$m"'
    # score = 5 + logit(p) - logit(t) from the p and threshold printed (4 decimals: a difference of up to
    # 0.0001 in p or t moves the logit by at most 0.0001/(x(1-x)) < 0.01 here) and one decimal of rounding
    flag=$(tr -d '\r' < "$W/a1.eml" | sed -n 's/^X-Spam-Flag: \(.*\)$/\1/p')
    st=$(tr -d '\r' < "$W/a1.eml" | grep '^X-Spam-Status:')
    lvl=$(tr -d '\r' < "$W/a1.eml" | sed -n 's/^X-Spam-Level: \?\(\**\)$/\1/p')
    tb=$(tr -d '\r' < "$W/a1.eml" | grep '^X-TBert-Spam:')
    want_flag=NO; [ $rc -eq 0 ] && want_flag=YES
    checks "$n: $flag / $st / '$lvl' agree with $tb and exit $rc" \
        '[ "$flag" = "$want_flag" ] && [[ "$st" =~ ^X-Spam-Status:\ (Yes|No),\ score=(-?[0-9]+\.[0-9])\ required=5\.0\ tests=TBERT_(SPAM|HAM)\  ]] &&
         [[ "$tb" =~ score=([0-9.]+),\ threshold=([0-9.]+), ]] &&
         awk -v s="$(echo "$st" | sed "s/.*score=\([-0-9.]*\) .*/\1/")" -v p="${BASH_REMATCH[1]}" -v t="${BASH_REMATCH[2]}" \
             -v spam=$((rc == 0)) -v stars=${#lvl} "BEGIN {
               want = 5 + log(p / (1 - p)) - log(t / (1 - t)); d = s - want; if (d < 0) d = -d
               fl = int(s); if (fl < 0) fl = 0
               exit !(d <= 0.05 + 0.01 && (s >= 5) == spam && stars == fl) }"'
done
m=$W/clean/ham/crlf.eml
"$BIN" filter "${H[@]}" -d "$W/head" -p -n X-TBert-Verdict < "$m" > "$W/n.eml"
checks "-n X-TBert-Verdict names our line" \
    '[ "$(grep -c "^X-TBert-Verdict: \(Yes\|No\), score=[0-9]\.[0-9][0-9][0-9]" "$W/n.eml")" -eq 1 ] && ! grep -q "^X-TBert-Spam:" "$W/n.eml"'
"$BIN" filter "${H[@]}" -d "$W/head" -p -n Subject < "$m" > /dev/null 2> "$W/e.txt"
rc=$?
checks "-n Subject (a name that is evidence) exits 3 with one line" '[ $rc -eq 3 ] && [ "$(wc -l < "$W/e.txt")" -eq 1 ]'
"$BIN" filter "${H[@]}" -d "$W/head" -e < "$m" > /dev/null 2> "$W/e.txt"
check "-e without -p exits 3" [ $? -eq 3 ]
{ printf 'X-Spam-Status: No, score=-1.0 required=5.0 tests=UPSTREAM\n'; cat "$m"; } | "$BIN" filter "${H[@]}" -d "$W/head" -p > "$W/u.eml"
checks "-H tbert (default) leaves an upstream X-Spam-Status alone, adds one X-TBert-Spam" \
    'grep -q "^X-Spam-Status: No, score=-1.0 required=5.0 tests=UPSTREAM" "$W/u.eml" && [ "$(grep -c "^X-TBert-Spam:" "$W/u.eml")" -eq 1 ]'

# ---- report.html of a mail head: the mail view, the command line, the misclassified messages by path
R=$W/head/report.html
nwrong=$(grep -o "Misclassified at threshold [0-9.]* ([0-9]*)" "$R" | sed 's/.*(\([0-9]*\))/\1/')
rows=$(grep -o "<tr><td style='text-align:left'>[^<]*</td>" "$R" | sed "s/<[^>]*>//g")
checks "report.html: mail view (log ROC, histograms, recall at 0.1/0.5/1% FPR), the command line, $nwrong misclassified listed by path" \
    'grep -q "ROC, logarithmic false-positive axis" "$R" && grep -q "Scores per class" "$R" &&
     [ "$(grep -o "<tr><td>[0-9.]*%</td><td>[0-9]* of [0-9]*" "$R" | wc -l)" -eq 3 ] &&
     grep -q "<pre id=.command-line.>tbert train --device cpu --model $MODEL --ham $W/clean/ham --spam $W/clean/spam --out $W/head " "$R" &&
     [ -n "$nwrong" ] && [ "$(echo -n "$rows" | grep -c .)" -eq "$nwrong" ] &&
     { [ "$nwrong" -eq 0 ] || echo "$rows" | while read -r f; do [ -f "$f" ] && [[ $f == "$W"/clean/* ]] || exit 1; done; }'

# ---- 2. never evidence: score's document and train's document
"$BIN" score "${H[@]}" --head "$W/head" --quiet --out "$W/clean.jsonl" "$W/clean" 2> /dev/null
"$BIN" score "${H[@]}" --head "$W/head" --quiet --out "$W/forged.jsonl" "$W/forged" 2> /dev/null
"$BIN" score "${H[@]}" --head "$W/head_forged" --quiet --out "$W/forged_head.jsonl" "$W/clean" 2> /dev/null
checks "11 records each, none an error" \
    '[ "$(wc -l < "$W/clean.jsonl")" -eq 11 ] && [ "$(wc -l < "$W/forged.jsonl")" -eq 11 ] && ! grep -q "\"error\"" "$W/clean.jsonl" "$W/forged.jsonl"'
check "score: forged verdict headers leave every P exactly as without them" \
    cmp -s <(field score < "$W/clean.jsonl") <(field score < "$W/forged.jsonl")
check "train: a head trained on forged copies scores every message exactly as the clean head" \
    cmp -s <(field score < "$W/clean.jsonl") <(field score < "$W/forged_head.jsonl")
check "train: the head trained on forged copies is byte-identical (same documents, same data hash)" \
    cmp -s "$W/head/best.safetensors" "$W/head_forged/best.safetensors"
# the scores are not all equal (so that the comparisons above could fail)
checks "the head's scores differ between messages" '[ "$(field score < "$W/clean.jsonl" | sort -u | wc -l)" -ge 5 ]'

# ---- 3. eval --ham/--spam, score --threshold / --unsure
"$BIN" score "${H[@]}" --head "$W/head" --quiet --out "$W/all.jsonl" "${HAM[@]}" "${SPAM[@]}" 2> /dev/null
nh=$("$BIN" score "${H[@]}" --head "$W/head" --quiet "${HAM[@]}" 2> /dev/null | wc -l)
want=$(awk -v nh="$nh" '{ t = NR <= nh ? 0 : 1; p = ($0 ~ /"label":"spam"/) ? 1 : 0; c[t, p]++ }
    END { printf "[[%d,%d],[%d,%d]]", c[0, 0], c[0, 1], c[1, 0], c[1, 1] }' "$W/all.jsonl")
got=$("$BIN" eval "${H[@]}" --head "$W/head" --ham "${HAM[@]}" --spam "${SPAM[@]}" --json 2> /dev/null | grep -o '"confusion":\[\[[0-9,]*\],\[[0-9,]*\]\]')
checks "eval --ham/--spam: confusion $got = the one counted from score's labels $want ($nh ham)" \
    '[ "$nh" -eq 8 ] && [ "$got" = "\"confusion\":$want" ]'
T=$(field score < "$W/all.jsonl" | sort -g | awk '{ v[NR] = $1 } END { printf "%.7f", (v[int(NR / 2)] + v[int(NR / 2) + 1]) / 2 }')
"$BIN" score "${H[@]}" --head "$W/head" --quiet --threshold "$T" "${HAM[@]}" "${SPAM[@]}" > "$W/t.jsonl" 2> /dev/null
checks "--threshold $T (the median): label spam exactly when P >= $T, 8 of 16" \
    '[ "$(paste -d" " <(field score < "$W/t.jsonl") <(field label < "$W/t.jsonl") |
          awk -v t="$T" "{ if ((\$1 >= t) != (\$2 == \"spam\")) bad++; s += \$2 == \"spam\" } END { print bad + 0, s }")" = "0 8" ]'
# the cuts halfway between neighbouring printed scores (a cut at a printed score would sit on a rounding)
LO=$(field score < "$W/all.jsonl" | sort -g | awk 'NR == 4 { a = $1 } NR == 5 { printf "%.7f", (a + $1) / 2 }')
HI=$(field score < "$W/all.jsonl" | sort -g | awk 'NR == 12 { a = $1 } NR == 13 { printf "%.7f", (a + $1) / 2 }')
"$BIN" score "${H[@]}" --head "$W/head" --quiet --unsure "$LO,$HI" "${HAM[@]}" "${SPAM[@]}" > "$W/u.jsonl" 2> /dev/null
# (ties among the 16 scores move the counts: every label is checked against P, and all three occur)
checks "--unsure $LO,$HI: labels ham below, spam from HI, unsure between" \
    '[[ "$(paste -d" " <(field score < "$W/u.jsonl") <(field label < "$W/u.jsonl") |
          awk -v lo="$LO" -v hi="$HI" "{ w = \$1 >= hi ? \"spam\" : \$1 < lo ? \"ham\" : \"unsure\"; if (w != \$2) bad++; n[\$2]++ }
                                      END { print bad + 0, (n[\"unsure\"] >= 1 && n[\"ham\"] >= 1 && n[\"spam\"] >= 1) }")" == "0 1" ]]'
for bad in f1 fpr=0.01 1.5 x; do
    "$BIN" score "${H[@]}" --head "$W/head" --quiet --threshold "$bad" "$m" > /dev/null 2> "$W/e.txt"
    rc=$?
    checks "--threshold $bad exits 2 with one line" '[ $rc -eq 2 ] && [ "$(wc -l < "$W/e.txt")" -eq 1 ]'
done

# ---- 4. empty input
mkdir -p "$W/empty"
"$BIN" score "${H[@]}" --head "$W/head" --quiet "$W/empty" > "$W/o.txt" 2> "$W/e.txt"
rc=$?
checks "score on an empty folder: exit 0, no records, says so" \
    '[ $rc -eq 0 ] && [ ! -s "$W/o.txt" ] && grep -q "hold no messages" "$W/e.txt"'

# ---- 5. not a message: a per-item error (a NUL byte in the first 8 KB; no header line before the first blank line)
mkdir -p "$W/mixed"
cp "$D/crlf.eml" "$W/mixed/a.eml"
{ printf 'Subject: looks like mail\n\n'; head -c 100 /dev/zero; } > "$W/mixed/b.bin"
printf 'hello world, just text\nno headers here: at all\n\nmore\n' > "$W/mixed/c.txt"
{ printf 'From: x@example.org\nSubject: fine\n\nbody\n'; } > "$W/mixed/d.eml"
"$BIN" score "${H[@]}" --head "$W/head" --quiet --out "$W/mixed.jsonl" "$W/mixed" 2> /dev/null
rc=$?
checks "score: exit 0, 4 records; the binary and the text file are error records, the two messages scored" \
    '[ $rc -eq 0 ] && [ "$(wc -l < "$W/mixed.jsonl")" -eq 4 ] &&
     [ "$(grep -c "\"error\":\".*not a mail message (a NUL byte" "$W/mixed.jsonl")" -eq 1 ] && grep -q "b.bin.*NUL byte" "$W/mixed.jsonl" &&
     [ "$(grep -c "\"error\":\".*not a mail message (no header line" "$W/mixed.jsonl")" -eq 1 ] && grep -q "c.txt.*no header line" "$W/mixed.jsonl" &&
     [ "$(grep -c "\"score\":0\.[0-9]" "$W/mixed.jsonl")" -eq 2 ]'
"$BIN" filter "${H[@]}" -d "$W/head" -p -e < "$W/mixed/c.txt" > "$W/o.txt" 2> "$W/e.txt"
rc=$?
checks "filter -p -e on a text file: exit 3, one line, the input passed through unchanged" \
    '[ $rc -eq 3 ] && [ "$(wc -l < "$W/e.txt")" -eq 1 ] && grep -q "not a mail message" "$W/e.txt" && cmp -s "$W/o.txt" "$W/mixed/c.txt"'

# ---- 6. score --resume: resolved paths, and the sidecar OUT.tbert.json
"$BIN" score "${H[@]}" --head "$W/head" --quiet --out "$W/r.jsonl" "$W/clean" 2> /dev/null
head -8 "$W/r.jsonl" > "$W/r8.jsonl"; cp "$W/r8.jsonl" "$W/r.jsonl"
(cd "$W" && "$BIN" score "${H[@]}" --head "$W/head" --quiet --resume --out r.jsonl ./clean/ 2> /dev/null)
checks "--resume with the input spelled ./clean/: 11 records, each message once, the first 8 kept" \
    '[ "$(wc -l < "$W/r.jsonl")" -eq 11 ] && [ "$(field source < "$W/r.jsonl" | xargs -n1 basename | sort -u | wc -l)" -eq 11 ] &&
     cmp -s <(head -8 "$W/r.jsonl") "$W/r8.jsonl"'
hid=$(sha256sum "$W/head/best.safetensors" | cut -c1-16)
mh=$(sha256sum "$MODEL/model.safetensors" | cut -c1-64)
checks "r.jsonl.tbert.json names the head ($hid), the model and the label rule; the records do not" \
    'grep -q "\"head\":[[:space:]]*\"$hid\"" "$W/r.jsonl.tbert.json" && grep -q "\"model\":[[:space:]]*\"$mh\"" "$W/r.jsonl.tbert.json" &&
     grep -q "\"labels\":[[:space:]]*\"head\"" "$W/r.jsonl.tbert.json" && ! grep -q "$hid" "$W/r.jsonl"'
cp "$W/r.jsonl" "$W/r_before.jsonl"
"$BIN" score "${H[@]}" --head "$W/head_seed8" --quiet --resume --out "$W/r.jsonl" "$W/clean" "$W/forged" > /dev/null 2> "$W/e.txt"
rc=$?
checks "--resume with another head: exit 2, one line naming the head, output untouched" \
    '[ $rc -eq 2 ] && [ "$(wc -l < "$W/e.txt")" -eq 1 ] && grep -q "refusing to --resume" "$W/e.txt" && cmp -s "$W/r.jsonl" "$W/r_before.jsonl"'
"$BIN" score "${H[@]}" --head "$W/head" --quiet --resume --threshold 0.5 --out "$W/r.jsonl" "$W/clean" "$W/forged" > /dev/null 2> "$W/e.txt"
rc=$?
checks "--resume with another label rule (--threshold 0.5): exit 2, output untouched" \
    '[ $rc -eq 2 ] && grep -q "labels" "$W/e.txt" && cmp -s "$W/r.jsonl" "$W/r_before.jsonl"'

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
