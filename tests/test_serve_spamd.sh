#!/usr/bin/env bash
# tbert serve's spamd protocol and HTTP API with the real clients: Debian's `spamc` and curl (docs/mail.md).
# A head is trained here on the committed test messages (tests/data/mail) with the small committed model
# tests/models/bert_tiny_shape; `tbert serve --spamd 127.0.0.1:0 --http 127.0.0.1:0` picks free ports and
# prints them in its "listening on" lines. Checked against independent references:
#   - the score spamc prints (-c, -R) equals 5 + logit(p) - logit(threshold), clamped to +-50, rounded to one
#     decimal (a ham never shows 5.0), with p from `tbert score` on the same message and the threshold from
#     metrics.json; |printed - formula| <= 0.05 + 1e-3 (one-decimal rounding; p printed with 6 decimals;
#     batches of different size agree to 1e-5 in p); spamc -c's exit status (1 spam, 0 ham) equals the label;
#   - spamc -y gives TBERT_SPAM/TBERT_HAM as the label; spamc -R gives p (within 1e-5), the threshold and
#     the head id (sha256 of best.safetensors, first 16 hex digits);
#   - PROCESS (spamc) and HEADERS: exactly one of each of our headers, forged ones gone, and the message
#     otherwise byte for byte the same; X-Spam-Level has floor(score) stars;
#   - PING (spamc -K), TELL (spamc -L spam / -L forget: learned.jsonl gets the message, its sha256 and class);
#     a zlib-compressed request (Debian's spamc is built without -z: serve_abuse.py sends it) gives the same
#     answer; spamc -u USER is accepted;
#   - a 600 KB message is scored on its first 500 KB, says so, and PROCESS gives all 600 KB back;
#   - malformed, vanishing, slow and 1,000 concurrent clients (tests/serve_abuse.py): protocol errors, no
#     hang, and the server still answers; SIGHUP under load swaps the head without a failed request;
#     SIGTERM answers the request in flight, refuses new connections, exits 0; --user (as root); the
#     allow-list end to end (a peer on this machine's address off loopback: EX_NOPERM, then --allow);
#   - HTTP: POST /score gives the same p and score, /health, /metrics counts, /learn, 404/405.
SERVE_TOOLS=(spamc curl)
. "$(dirname "$0")/serve_common.sh"
train "$W/head" 42
THR=$("$PY" -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['threshold']))" "$W/head/metrics.json")
HEAD_ID=$(sha256sum "$W/head/best.safetensors" | cut -c1-16)
MSGS=("$D"/*.eml "$D/maildir/cur/1000.a:2,S" "$D/maildir/new/1001.b")
"$BIN" score --device cpu --model "$MODEL" --head "$W/head" --quiet --out "$W/ref.jsonl" "${MSGS[@]}" 2> /dev/null
check "reference scores from tbert score" [ "$(wc -l < "$W/ref.jsonl")" -eq ${#MSGS[@]} ]

# ---- the server
LOG=$W/serve.log
start_server "$LOG" --spamd 127.0.0.1:0 --http 127.0.0.1:0 --timeout 2 || { echo "FAIL tbert serve did not start"; exit 1; }
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")
HPORT=$(sed -n 's/.*listening on http 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")
check "listening lines name the ports ($PORT, $HPORT)" [ "${PORT:-0}" -gt 0 -a "${HPORT:-0}" -gt 0 ]

# expected "score/5.0" (one decimal; a ham never reaches 5.0), from p and the threshold
expect() { # expect P LABEL
    "$PY" - "$1" "$2" "$THR" << 'EOF'
import math, sys
p, label, t = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
lg = lambda x: -math.inf if x <= 0 else math.inf if x >= 1 else math.log(x / (1 - x))
s = max(-50.0, min(50.0, 5 + lg(p) - lg(t)))
if label == "spam": s = max(s, 5.0)
r = math.floor(s * 10 + 0.5) / 10
if label != "spam" and r >= 5.0: r = 4.9
print("%.4f" % r)
EOF
}
near() { "$PY" -c "import sys; sys.exit(0 if abs(float(sys.argv[1]) - float(sys.argv[2])) <= float(sys.argv[3]) else 1)" "$@"; }

n_spam=0 n_ham=0 bad_c=0 bad_y=0 bad_r=0 bad_h=0
for i in "${!MSGS[@]}"; do
    m=${MSGS[$i]}
    rec=$(sed -n "$((i + 1))p" "$W/ref.jsonl")
    p=$(echo "$rec" | grep -o '"score":[0-9.]*' | cut -d: -f2)
    label=$(echo "$rec" | grep -o '"label":"[a-z]*"' | cut -d'"' -f4)
    want=$(expect "$p" "$label")
    got=$(spamc -d 127.0.0.1 -p "$PORT" -c < "$m")
    rc=$?
    [ "$label" = spam ] && n_spam=$((n_spam + 1)) || n_ham=$((n_ham + 1))
    if ! near "${got%/*}" "$want" 0.051 || [ "${got#*/}" != "5.0" ] || [ "$rc" -ne "$([ "$label" = spam ] && echo 1 || echo 0)" ]; then
        echo "     $m: spamc -c '$got' rc $rc, want $want/5.0 ($label, p=$p)"
        bad_c=$((bad_c + 1))
    fi
    sym=$(spamc -d 127.0.0.1 -p "$PORT" -y < "$m")
    [ "$sym" = "TBERT_$(echo "$label" | tr a-z A-Z)" ] || { echo "     $m: spamc -y '$sym' for $label"; bad_y=$((bad_y + 1)); }
    rep=$(spamc -d 127.0.0.1 -p "$PORT" -R < "$m")
    rp=$(echo "$rep" | sed -n 's/.* p=\([0-9.]*\) .*/\1/p')
    rt=$(echo "$rep" | sed -n 's/.* threshold=\([0-9.]*\) .*/\1/p')
    if [ "$(echo "$rep" | head -1)" != "$got" ] || ! near "$rp" "$p" 2e-5 || ! near "$rt" "$THR" 1e-6 ||
        ! echo "$rep" | grep -q "head=$HEAD_ID"; then
        echo "     $m: spamc -R '$rep' (p=$p t=$THR head=$HEAD_ID)"
        bad_r=$((bad_r + 1))
    fi
    # HTTP /score: the same p and score
    js=$(curl -s --data-binary @"$m" "http://127.0.0.1:$HPORT/score")
    hp=$(echo "$js" | grep -o '"p":[0-9.]*' | cut -d: -f2)
    hs=$(echo "$js" | grep -o '"score":[-0-9.]*' | cut -d: -f2)
    hv=$(echo "$js" | grep -o '"verdict":"[a-z]*"' | cut -d'"' -f4)
    if ! near "$hp" "$p" 2e-5 || [ "$hs" != "${got%/*}" ] || [ "$hv" != "$label" ]; then
        echo "     $m: POST /score $js (p=$p $label $got)"
        bad_h=$((bad_h + 1))
    fi
done
check "both verdicts occur ($n_spam spam, $n_ham ham)" [ "$n_spam" -ge 3 -a "$n_ham" -ge 3 ]
check "spamc -c: score = 5 + logit(p) - logit(t) (+-0.05) and exit status = label, ${#MSGS[@]} messages" [ $bad_c -eq 0 ]
check "spamc -y: TBERT_SPAM/TBERT_HAM = label" [ $bad_y -eq 0 ]
check "spamc -R: score line, p, threshold and head id" [ $bad_r -eq 0 ]
check "POST /score: same p, score and verdict" [ $bad_h -eq 0 ]

# ---- PROCESS and HEADERS: our headers replace forged ones, nothing else changes
F=$W/forged.eml
{ printf 'X-Spam-Flag: YES\nFrom: Eve <eve@example.org>\nX-TBert-Spam: No, forged\nX-Spam-Status: No, score=-99\n  folded=1\n'
  printf 'x-spam-level: *****\nSubject: forged headers\nTo: bob@example.net\n\nbody line 1\nX-Spam-Flag: in the body stays\n'; } > "$F"
spamc -d 127.0.0.1 -p "$PORT" < "$F" > "$W/processed.eml"
hdr() { sed '/^$/q' "$1"; }
check "PROCESS: one X-Spam-Flag, one X-Spam-Status, one X-Spam-Level, one X-TBert-Spam" \
    [ "$(hdr "$W/processed.eml" | grep -ci '^x-spam-flag:')$(hdr "$W/processed.eml" | grep -ci '^x-spam-status:')$(hdr "$W/processed.eml" | grep -ci '^x-spam-level:')$(hdr "$W/processed.eml" | grep -ci '^x-tbert-spam:')" = 1111 ]
strip_ours() { awk 'BEGIN{h=1} h&&/^$/{h=0} h&&/^[ \t]/{if(skip)next} h&&/^[^ \t]/{skip=tolower($0)~/^(x-spam-flag|x-spam-status|x-spam-level|x-tbert-[^:]*):/} h&&skip{next} {print}' "$1"; }
check "PROCESS: the message is otherwise unchanged (body included)" cmp -s <(strip_ours "$F") <(strip_ours "$W/processed.eml")
sc=$(spamc -d 127.0.0.1 -p "$PORT" -c < "$F")
sc=${sc%/*}
stars=$(grep '^X-Spam-Level:' "$W/processed.eml" | sed 's/^X-Spam-Level: *//' | tr -d '\r')
want_stars=$("$PY" -c "import math,sys; s=float(sys.argv[1]); print('*' * max(0, int(math.floor(s))) if s >= 1 else '')" "$sc")
check "X-Spam-Level: floor($sc) stars ('$stars')" [ "$stars" = "$want_stars" ]
check "X-Spam-Status carries the same score" grep -q "^X-Spam-Status: .*score=$sc required=5.0 tests=TBERT_" "$W/processed.eml"
spamc -d 127.0.0.1 -p "$PORT" --headers < "$F" > "$W/headers.eml"
check "HEADERS (spamc --headers): the same message as PROCESS" cmp -s "$W/processed.eml" "$W/headers.eml"
spamc -d 127.0.0.1 -p "$PORT" < "$D/crlf.eml" > "$W/crlf.out"
check "PROCESS keeps CRLF line ends for a CRLF message" [ "$(grep -c $'\r$' "$W/crlf.out")" -eq "$(wc -l < "$W/crlf.out")" ]

# ---- PING, -u, -z, TELL
check "spamc -K: PONG" [ "$(spamc -d 127.0.0.1 -p "$PORT" -K)" = "SPAMD/1.5 0" ]
a=$(spamc -d 127.0.0.1 -p "$PORT" -c < "$D/shift_jis.eml")
check "spamc -u someone: one global head, the same answer" [ "$(spamc -d 127.0.0.1 -p "$PORT" -u someone -c < "$D/shift_jis.eml")" = "$a" ]
out=$(spamc -d 127.0.0.1 -p "$PORT" -L spam < "$D/crlf.eml")
check "spamc -L spam: 'Message successfully un/learned'" [ "$out" = "Message successfully un/learned" ]
out=$(spamc -d 127.0.0.1 -p "$PORT" -L forget < "$D/rfc2047.eml")
check "spamc -L forget: 'Message successfully un/learned'" [ "$out" = "Message successfully un/learned" ]
curl -s --data-binary @"$D/html_only.eml" "http://127.0.0.1:$HPORT/learn?class=ham" > "$W/learn.json"
check "POST /learn?class=ham: learned" grep -q '"learned":true' "$W/learn.json"
"$PY" - "$W/head/learned.jsonl" "$D/crlf.eml" "$D/rfc2047.eml" "$D/html_only.eml" << 'EOF'
import base64, hashlib, json, os, stat, sys
path = sys.argv[1]
rows = [json.loads(l) for l in open(path)]
want = [("learn", "spam", sys.argv[2], "spamd"), ("forget", "any", sys.argv[3], "spamd"), ("learn", "ham", sys.argv[4], "http")]
ok = len(rows) == 3
for r, (act, cls, f, via) in zip(rows, want):
    raw = open(f, "rb").read()
    ok &= (r["action"], r["class"], r["via"], r["sha256"], r["bytes"]) == (act, cls, via, hashlib.sha256(raw).hexdigest(), len(raw))
    ok &= base64.b64decode(r["message_b64"]) == raw
ok &= stat.S_IMODE(os.stat(path).st_mode) == 0o600
print(("ok   " if ok else "FAIL ") + "learned.jsonl: 3 lines (TELL learn, TELL forget, /learn) with action, class, sha256, bytes, the message; mode 0600")
sys.exit(0 if ok else 1)
EOF
[ $? -eq 0 ] || fails=$((fails + 1))

# ---- a message over 500 KB: scored on its first 500 KB, all of it given back by PROCESS
BIG=$W/big.eml
{ printf 'From: a@example.org\nSubject: big\n\n'; for _ in $(seq 1 12000); do echo "line of filler text to make the message large ok"; done; } > "$BIG"
check "the big message is over 500 KB" [ "$(stat -c %s "$BIG")" -gt 512000 ]
spamc -d 127.0.0.1 -p "$PORT" -s 2000000 < "$BIG" > "$W/big.out"
check "PROCESS of 600 KB: every byte back" cmp -s <(strip_ours "$BIG") <(strip_ours "$W/big.out")
check "PROCESS of 600 KB: says it was truncated" grep -q '^X-TBert-Spam: .*truncated' "$W/big.out"
check "log says the message was scored on its first part" grep -q "scored the first part only" "$LOG"
curl -s --data-binary @"$BIG" "http://127.0.0.1:$HPORT/score" > "$W/big.json"
check "POST /score of 600 KB: truncated:true" grep -q '"truncated":true' "$W/big.json"

# ---- HTTP odds and ends
check "GET /health" [ "$(curl -s "http://127.0.0.1:$HPORT/health")" = "{\"status\":\"ok\",\"head\":\"$HEAD_ID\"}" ]
check "GET /nope: 404" [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HPORT/nope")" = 404 ]
check "GET /score: 405" [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HPORT/score")" = 405 ]
check "POST /learn?class=eggs: 400" [ "$(curl -s -o /dev/null -w '%{http_code}' --data x "http://127.0.0.1:$HPORT/learn?class=eggs")" = 400 ]
curl -s "http://127.0.0.1:$HPORT/metrics" > "$W/metrics.txt"
n_http=$(sed -n 's/^tbert_requests_total{protocol="http"} //p' "$W/metrics.txt")
check "GET /metrics: http requests counted ($n_http = ${#MSGS[@]} + 1)" [ "$n_http" = $((${#MSGS[@]} + 1)) ]
check "GET /metrics: latency and batch-size histograms" grep -q '^tbert_latency_seconds_bucket{le="+Inf"}' "$W/metrics.txt"
grep -q '^tbert_batch_size_count ' "$W/metrics.txt" || { echo "FAIL batch size histogram"; fails=$((fails + 1)); }

# ---- misbehaving clients, then 1,000 at once
ulimit -n 4096 2> /dev/null || true
"$PY" "$TESTS/serve_abuse.py" 127.0.0.1 "$PORT" "$D/crlf.eml" 2 1000 "$HPORT"
[ $? -eq 0 ] || fails=$((fails + 1))
check "the server is alive after the abuse" kill -0 "$SERVER"
rss=$(awk '/^VmRSS/ {print $2}' /proc/"$SERVER"/status)
echo "     server resident memory after 1,000 clients: $((rss / 1024)) MB"
check "tempfail refusals were logged" grep -q "refused a connection: over --max-connections" "$LOG"

# ---- the allow-list, end to end, when this machine has an address off loopback
EXT=$(hostname -I 2> /dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' | grep -v '^127\.' | head -1)
if [ -n "$EXT" ]; then
    SAVED=$SERVER
    start_server "$W/allow.log" --spamd 0.0.0.0:0 || { echo "FAIL tbert serve on 0.0.0.0 did not start"; exit 1; }
    APORT=$(sed -n 's/.*listening on spamd 0\.0\.0\.0:\([0-9]*\).*/\1/p' "$W/allow.log")
    out=$("$PY" -c "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.recv(200).decode().strip())" "$EXT" "$APORT" 2>&1)
    check "a peer off loopback ($EXT) without --allow: EX_NOPERM ('$out')" [ "${out#SPAMD/1.5 77 }" != "$out" ]
    check "... while loopback is still served" [ -n "$(spamc -d 127.0.0.1 -p "$APORT" -c < "$D/crlf.eml")" ]
    kill -TERM "$SERVER"; wait "$SERVER"
    start_server "$W/allow2.log" --spamd 0.0.0.0:0 --allow "$EXT/32" || { echo "FAIL tbert serve --allow did not start"; exit 1; }
    APORT=$(sed -n 's/.*listening on spamd 0\.0\.0\.0:\([0-9]*\).*/\1/p' "$W/allow2.log")
    check "the same peer with --allow $EXT/32: answered" [ -n "$(spamc -d "$EXT" -p "$APORT" -c < "$D/crlf.eml")" ]
    kill -TERM "$SERVER"; wait "$SERVER"
    SERVER=$SAVED
else
    echo "     allow-list not checked end to end: no IPv4 address off loopback here"
fi

# ---- SIGHUP under load: a new head is swapped in, no request fails
train "$W/head_b" 7
( ok=0; bad=0; for _ in $(seq 1 60); do if spamc -x -d 127.0.0.1 -p "$PORT" -c < "$D/crlf.eml" > /dev/null; [ $? -le 1 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi; done
  echo "$ok $bad" > "$W/load.txt" ) &
LOADER=$!
sleep 0.2
cp "$W/head_b/best.safetensors" "$W/head/best.safetensors.new" && mv "$W/head/best.safetensors.new" "$W/head/best.safetensors"
kill -HUP "$SERVER"
wait $LOADER
read -r ok bad < "$W/load.txt"
check "SIGHUP under load: 60 requests, $bad failed" [ "$bad" -eq 0 -a "$ok" -eq 60 ]
NEW_ID=$(sha256sum "$W/head_b/best.safetensors" | cut -c1-16)
for _ in $(seq 1 50); do grep -q "reloaded: head $NEW_ID" "$LOG" && break; sleep 0.1; done
spamc -d 127.0.0.1 -p "$PORT" -R < "$D/crlf.eml" > "$W/report_b.txt"
check "SIGHUP: reloaded, and REPORT names the new head $NEW_ID" grep -q "head=$NEW_ID" "$W/report_b.txt"

# ---- SIGTERM: a request in flight is still answered, new connections are refused, exit 0
"$PY" - "$PORT" "$D/crlf.eml" "$W/drain.txt" << 'EOF' &
import socket, sys, time
port, msg, out = int(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(msg) + msg[:10])
open(out + ".started", "w").close()
time.sleep(1.5)  # SIGTERM arrives meanwhile
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    refused = "new connection accepted"
except OSError:
    refused = "new connection refused"
s.sendall(msg[10:])
s.shutdown(socket.SHUT_WR)
ans = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    ans += b
open(out, "w").write(refused + "\n" + ans.decode("latin-1"))
EOF
DRAINER=$!
for _ in $(seq 1 50); do [ -e "$W/drain.txt.started" ] && break; sleep 0.1; done
sleep 0.3
kill -TERM "$SERVER"
wait "$SERVER"
rc=$?
SERVER=
wait $DRAINER
check "SIGTERM: the request in flight was answered" grep -q "^SPAMD/1.1 0 EX_OK" "$W/drain.txt"
check "SIGTERM: new connections refused while draining" grep -q "^new connection refused" "$W/drain.txt"
check "SIGTERM: exit status 0" [ $rc -eq 0 ]
check "SIGTERM: 'drained' logged" grep -q "drained; exiting" "$LOG"

# ---- --user (as root only): the process runs as nobody once the socket is bound, and still answers
if [ "$(id -u)" = 0 ] && id nobody > /dev/null 2>&1; then
    chmod 711 "$W"
    mkdir -m 777 "$W/u"
    start_server "$W/user.log" --spamd "unix:$W/u/spamd.sock" --user nobody || { echo "FAIL --user nobody did not start"; exit 1; }
    check "--user nobody: the server runs as nobody" [ "$(proc_user "$SERVER")" = nobody ]
    check "--user nobody: the socket is nobody's" [ "$(stat -c %U "$W/u/spamd.sock")" = nobody ]
    check "--user nobody: spamc -U gets an answer" [ -n "$(spamc -U "$W/u/spamd.sock" -c < "$D/crlf.eml")" ]
    kill -TERM "$SERVER"; wait "$SERVER"; SERVER=
    check "--user nobody: the socket is removed at exit" [ ! -e "$W/u/spamd.sock" ]
else
    echo "     --user not checked: needs root and a user 'nobody'"
fi

# ---- usage errors
"$BIN" serve --head "$W/head" 2> "$W/e1"
check "no listener: exit 2 with one line" [ $? -eq 2 -a "$(wc -l < "$W/e1")" -eq 1 ]
"$BIN" serve --head "$W/head" --spamd 127.0.0.1:0 --allow 10.0.0.0/33 2> /dev/null
check "bad --allow: exit 2" [ $? -eq 2 ]
"$BIN" serve --head "$W/head" --milter 192.0.2.1:8891 2> /dev/null
check "a TCP milter off loopback: exit 2" [ $? -eq 2 ]
"$BIN" serve --head "$W/head" --spamd 127.0.0.1:0 --user no-such-user-tbert --model "$MODEL" 2> "$W/e2"
check "--user with an unknown user: exit 2" [ $? -eq 2 ]
"$BIN" serve --model "$MODEL" --head "$W/nonexistent" --spamd 127.0.0.1:0 2> /dev/null
check "missing head: exit 2" [ $? -eq 2 ]
"$BIN" serve --help | grep -q -- "--max-connections"
check "--help lists the options" [ $? -eq 0 ]

check "no sanitizer report in the server logs" log_clean "$W"/*.log
echo "$fails failure(s)"
[ $fails -eq 0 ]
