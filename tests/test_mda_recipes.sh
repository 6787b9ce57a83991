#!/usr/bin/env bash
# The procmail and maildrop recipes of docs/mail.md, run by the real programs (Debian's procmail and maildrop;
# scripts/install-deps.sh installs them) on the committed test messages with a head trained here:
#   - procmail `:0fw | tbert filter -p -e -H all -d HEAD`, then `* ^X-Spam-Flag: YES` to spam/: every message
#     lands in the folder its verdict says (the verdict from tbert filter's own exit code), with one
#     X-Spam-Flag and one X-TBert-Spam header, and otherwise the bytes it came with;
#   - the same recipe without -e: procmail takes filter's exit 1 (ham) as a failure and delivers the message
#     without our header (the bug -e fixes; this shows the check above can fail);
#   - maildrop `xfilter "tbert filter -p -e -H all -d HEAD"` + `if (/^X-Spam-Flag: YES/) to spam/`: the same.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
TESTS=$(cd "${TBERT_TESTS_DIR:-$(dirname "$0")}" && pwd)
MODEL=$TESTS/models/bert_tiny_shape
D=$TESTS/data/mail
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1 # check, checks, fails
tl_require_tools procmail maildrop
tl_workdir tbert_mda
W=$TL_WORK
export TBERT_CACHE=$W/cache
MSGS=(alternative crlf html_only nested qp_latin1 rfc2047 attachment_only bad_bytes cp1252_8bit shift_jis utf8_base64)
for f in "${MSGS[@]}"; do [ -f "$D/$f.eml" ] || { echo "FAIL committed fixture $D/$f.eml is missing"; exit 1; }; done
mkdir -p "$W/ham" "$W/spam"
for f in "${MSGS[@]:0:6}"; do cp "$D/$f.eml" "$W/ham/"; done
for f in "${MSGS[@]:6}"; do cp "$D/$f.eml" "$W/spam/"; done
"$BIN" train --device cpu --model "$MODEL" --ham "$W/ham" --spam "$W/spam" --out "$W/head" --max-len 32 --lexical-dim 512 \
    --epochs 30 --seed 7 --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; echo "FAIL tbert train"; exit 1; }
FILTER="$BIN filter --device cpu --model $MODEL -d $W/head"

mkmaildir() { mkdir -p "$1/cur" "$1/new" "$1/tmp"; }
# delivered FOLDER NAME MSG: the one file in FOLDER/new that holds MSG's Subject line (line endings aside)
delivered() {
    local subj f
    subj=$(grep -a -m1 '^Subject:' "$3" | tr -d '\r')
    for f in "$1"/new/*; do [ -f "$f" ] && [ "$(grep -a -m1 '^Subject:' "$f" | tr -d '\r')" = "$subj" ] && echo "$f"; done
}
# the text without CRs and without trailing blank lines (procmail ends a delivered message with one)
norm() { tr -d '\r' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'; }
verify() { # verify MDA INBOX SPAMDIR: each message where its verdict sends it, with our headers, else unchanged
    local mda=$1 inbox=$2 spamdir=$3 f m rc want got n
    n=0
    for f in "${MSGS[@]}"; do
        m=$D/$f.eml
        $FILTER < "$m"
        rc=$?
        want=$inbox; [ $rc -eq 0 ] && want=$spamdir
        got=$(delivered "$want" "$f" "$m")
        checks "$mda: $f.eml (filter exit $rc) delivered to $(basename "$want") with one X-Spam-Flag and one X-TBert-Spam" \
            '[ -n "$got" ] && [ "$(echo "$got" | wc -l)" -eq 1 ] && [ "$(grep -c "^X-Spam-Flag: " "$got")" -eq 1 ] &&
             [ "$(grep -c "^X-TBert-Spam: " "$got")" -eq 1 ] && grep -q "^X-Spam-Flag: $([ $rc -eq 0 ] && echo YES || echo NO)" "$got" &&
             cmp -s <(grep -av "^X-Spam-\|^X-TBert-Spam:" "$got" | norm) <(norm < "$m")'
        [ $rc -eq 0 ] && n=$((n + 1))
    done
    checks "$mda: both folders used ($n spam of ${#MSGS[@]})" '[ $n -ge 1 ] && [ $n -lt ${#MSGS[@]} ]'
}

# ---- procmail
mkmaildir "$W/pm/inbox"; mkmaildir "$W/pm/spam"
cat > "$W/procmailrc" << EOF2
SHELL=/bin/sh
TBERT_CACHE=$W/cache
DEFAULT=$W/pm/inbox/
LOGFILE=$W/procmail.log
:0fw
| $FILTER -p -e -H all
:0
* ^X-Spam-Flag: YES
$W/pm/spam/
EOF2
for f in "${MSGS[@]}"; do procmail -m "$W/procmailrc" < "$D/$f.eml"; done
verify procmail "$W/pm/inbox" "$W/pm/spam"

# ---- procmail without -e: the ham messages lose our header (the failure -e exists for)
mkmaildir "$W/pm2/inbox"; mkmaildir "$W/pm2/spam"
sed -e "s| -p -e -H all| -p -H all|" -e "s|$W/pm/|$W/pm2/|g" "$W/procmailrc" > "$W/procmailrc2"
m=$D/crlf.eml
$FILTER < "$m"
rc=$?
procmail -m "$W/procmailrc2" < "$m"
got=$(delivered "$W/pm2/inbox" crlf "$m")
checks "procmail without -e: the ham message (exit $rc) is delivered without our header" \
    '[ $rc -eq 1 ] && [ -n "$got" ] && ! grep -q "^X-TBert-Spam:" "$got"'

# ---- maildrop
mkmaildir "$W/md/inbox"; mkmaildir "$W/md/spam"
cat > "$W/mailfilter" << EOF2
TBERT_CACHE="$W/cache"
DEFAULT="$W/md/inbox/"
xfilter "$FILTER -p -e -H all"
if (/^X-Spam-Flag: YES/)
{
    to "$W/md/spam/"
}
EOF2
chmod 600 "$W/mailfilter"
for f in "${MSGS[@]}"; do maildrop "$W/mailfilter" < "$D/$f.eml" || echo "maildrop exit $? for $f"; done
verify maildrop "$W/md/inbox" "$W/md/spam"

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
