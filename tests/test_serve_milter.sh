#!/usr/bin/env bash
# tbert serve's milter with Debian's miltertest (tests/serve_milter.lua plays the MTA): for every committed
# test message, with forged X-Spam-Flag / X-TBert-Spam headers added,
#   - the milter deletes the forged headers and adds X-Spam-Flag, X-Spam-Status, X-Spam-Level, X-TBert-Spam;
#     X-Spam-Status's score equals 5 + logit(p) - logit(threshold) (one decimal, +-0.05) for the p in
#     X-TBert-Spam and the head's threshold from metrics.json, and that p is within 0.02 of `tbert score`'s p
#     for the file (the milter sees the header fields as the MTA hands them over, unfolded);
#   - the same server's spamd on a unix socket (spamc -U) answers beside the milter;
#   - with --milter-reject-above / --milter-quarantine-above placed between the p's seen in the first pass,
#     the message above the reject cut is rejected (the filter's own reply code), the one between the cuts quarantined, the rest not;
#   - SIGKILL of the milter child: the parent restarts it and the milter answers again; SIGHUP keeps it
#     answering; SIGTERM stops the child, removes the sockets and exits 0.
SERVE_TOOLS=(miltertest spamc)
. "$(dirname "$0")/serve_common.sh"
train "$W/head" 42
THR=$("$PY" -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['threshold']))" "$W/head/metrics.json")
MSGS=("$D"/*.eml)
"$BIN" score --device cpu --model "$MODEL" --head "$W/head" --quiet --out "$W/ref.jsonl" "${MSGS[@]}" 2> /dev/null
check "reference scores from tbert score" [ "$(wc -l < "$W/ref.jsonl")" -eq ${#MSGS[@]} ]

LOG=$W/serve.log
MS=$W/milter.sock
start_server "$LOG" --milter "unix:$MS" --spamd "unix:$W/spamd.sock" || { echo "FAIL tbert serve did not start"; exit 1; }
check "the milter socket exists" [ -S "$MS" ]

through_milter() { # through_milter MESSAGE OUT: the message with forged headers of ours, through miltertest
    { printf 'X-Spam-Flag: YES\nX-TBert-Spam: No, forged\n'; cat "$1"; } > "$W/forged.eml"
    miltertest -D sock="unix:$MS" -D msg="$W/forged.eml" -D out="$2" -s "$TESTS/serve_milter.lua" > "$W/mt.log" 2>&1 ||
        { cat "$W/mt.log"; return 1; }
}
field() { sed -n "s/^$1=//p" "$2"; }

bad=0 bad_spamd=0
: > "$W/pass1.txt"
for i in "${!MSGS[@]}"; do
    m=${MSGS[$i]}
    ref_p=$(sed -n "$((i + 1))p" "$W/ref.jsonl" | grep -o '"score":[0-9.]*' | cut -d: -f2)
    if ! through_milter "$m" "$W/r.txt"; then
        echo "     $m: miltertest failed"
        bad=$((bad + 1))
        continue
    fi
    tb=$(field add.X-TBert-Spam "$W/r.txt")
    st=$(field add.X-Spam-Status "$W/r.txt")
    p=$(echo "$tb" | sed -n 's/.*score=\([0-9.]*\),.*/\1/p')
    echo "$p $m" >> "$W/pass1.txt"
    "$PY" - "$p" "$ref_p" "$THR" "$st" "$(field add.X-Spam-Flag "$W/r.txt")" "$(field add.X-Spam-Level "$W/r.txt")" \
        "$(field del.X-Spam-Flag "$W/r.txt")" "$(field del.X-TBert-Spam "$W/r.txt")" "$(field reply "$W/r.txt")" << 'EOF'
import math, re, sys
p, ref_p, t = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
status, flag, level, del_flag, del_tb, reply = sys.argv[4:10]
lg = lambda x: -math.inf if x <= 0 else math.inf if x >= 1 else math.log(x / (1 - x))
spam = p >= t
s = max(-50.0, min(50.0, 5 + lg(p) - lg(t)))
m = re.match(r"(Yes|No), score=(-?[0-9.]+) required=5\.0 tests=TBERT_(SPAM|HAM) ", status)
# p is printed with 4 decimals: allow one-decimal rounding (0.05), the "a ham shows at most 4.9" rule, and
# 5e-5 in p through the logit's slope
slope = 5e-5 / max(min(p, 1 - p) * (1 - min(p, 1 - p)), 1e-6)
ham_cap = m is not None and m.group(1) == "No" and float(m.group(2)) == 4.9 and s < 5
ok = bool(m) and (abs(float(m.group(2)) - s) <= 0.0501 + slope or ham_cap) and (m.group(1) == "Yes") == (float(m.group(2)) >= 5)
ok = ok and abs(p - ref_p) <= 0.02 and flag == ("YES" if m.group(1) == "Yes" else "NO")
ok = ok and level == "*" * max(0, math.floor(float(m.group(2)))) if m else False
ok = ok and del_flag == "true" and del_tb == "true" and reply == "c"
if not ok:
    print("     milter: p=%g ref_p=%g t=%g status=%r flag=%r level=%r deleted=%s/%s reply=%r" % (p, ref_p, t, status, flag, level, del_flag, del_tb, reply))
sys.exit(0 if ok else 1)
EOF
    [ $? -eq 0 ] || bad=$((bad + 1))
    # the same server's spamd on its unix socket gives the same X-Spam-Status for the same bytes
    { printf 'X-Spam-Flag: YES\nX-TBert-Spam: No, forged\n'; cat "$m"; } | spamc -U "$W/spamd.sock" --headers > "$W/h.txt"
    [ -n "$(grep '^X-Spam-Status:' "$W/h.txt")" ] || { echo "     $m: spamd over unix socket gave no X-Spam-Status"; bad_spamd=$((bad_spamd + 1)); }
done
check "milter: forged headers deleted, ours added, score = formula(p), p = tbert score's (+-0.02), ${#MSGS[@]} messages" [ $bad -eq 0 ]
check "spamd on a unix socket beside the milter answers" [ $bad_spamd -eq 0 ]
check "the milter's requests are logged one line each" [ "$(grep -c '^tbert serve: milter ' "$LOG")" -ge ${#MSGS[@]} ]

# ---- the child dies: the parent restarts it
CHILD=$(children_of "$SERVER" | head -1)
check "a milter child process runs" [ -n "$CHILD" ]
kill -KILL "$CHILD"
for _ in $(seq 1 100); do [ "$(grep -c 'listening on milter' "$LOG")" -ge 2 ] && break; sleep 0.1; done
check "killed child: restarted (logged)" grep -q "milter child died of signal 9; restarting it" "$LOG"
check "killed child: the milter answers again" through_milter "$D/crlf.eml" "$W/r2.txt"
check "killed child: ... with our headers" grep -q "^add.X-Spam-Status=" "$W/r2.txt"
kill -HUP "$SERVER"
for _ in $(seq 1 100); do grep -q "reloaded: head" "$LOG" && break; sleep 0.1; done
check "SIGHUP: reloaded; the milter answers" through_milter "$D/crlf.eml" "$W/r3.txt"

# ---- reject and quarantine at cuts between the p's of the first pass
sort -g "$W/pass1.txt" > "$W/sorted.txt"
n=$(wc -l < "$W/sorted.txt")
P1=$(sed -n "${n}p" "$W/sorted.txt" | cut -d' ' -f1); M1=$(sed -n "${n}p" "$W/sorted.txt" | cut -d' ' -f2)
P2=$(sed -n "$((n - 1))p" "$W/sorted.txt" | cut -d' ' -f1); M2=$(sed -n "$((n - 1))p" "$W/sorted.txt" | cut -d' ' -f2)
P3=$(sed -n "$((n - 2))p" "$W/sorted.txt" | cut -d' ' -f1); M3=$(sed -n "$((n - 2))p" "$W/sorted.txt" | cut -d' ' -f2)
REJ=$("$PY" -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$P1" "$P2")
QUA=$("$PY" -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$P2" "$P3")
kill -TERM "$SERVER"
wait "$SERVER"
rc=$?
SERVER=
check "SIGTERM: exit 0" [ $rc -eq 0 ]
check "SIGTERM: the milter socket is gone" [ ! -e "$MS" ]
check "SIGTERM: no milter child left" [ -z "$(procs_matching "--milter-upstream $W")" ]
if [ "$("$PY" -c "import sys; print(int(float(sys.argv[1]) - float(sys.argv[2]) > 0.004 and float(sys.argv[2]) - float(sys.argv[3]) > 0.004))" "$P1" "$P2" "$P3")" = 1 ]; then
    start_server "$W/serve2.log" --milter "unix:$MS" --milter-reject-above "$REJ" --milter-quarantine-above "$QUA" ||
        { echo "FAIL tbert serve did not start"; exit 1; }
    through_milter "$M1" "$W/a.txt"; through_milter "$M2" "$W/b.txt"; through_milter "$M3" "$W/c.txt"
    check "p=$P1 > --milter-reject-above $REJ: rejected (a reply code of its own)" [ "$(field replycode "$W/a.txt")" = true ]
    check "p=$P2 between the cuts: quarantined, not rejected" [ "$(field quarantine "$W/b.txt")$(field replycode "$W/b.txt")" = truefalse ]
    check "p=$P3 below both: neither" [ "$(field quarantine "$W/c.txt")$(field replycode "$W/c.txt")" = falsefalse ]
    kill -TERM "$SERVER"
    wait "$SERVER"
    SERVER=
else
    echo "FAIL the three highest p's ($P1 $P2 $P3) are too close to place the cuts between them"
    fails=$((fails + 1))
fi

"$BIN" serve --model "$MODEL" --head "$W/head" --milter 127.0.0.1:0 2> "$W/e1"
check "--milter with port 0: exit 2 (libmilter cannot report the port)" [ $? -eq 2 ]
check "no sanitizer report in the server logs" log_clean "$W"/*.log
echo "$fails failure(s)"
[ $fails -eq 0 ]
