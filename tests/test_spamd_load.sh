#!/usr/bin/env bash
# benchmarks/spamd_load (the load generator of benchmarks/bench_serve.sh) against references it does not share
# code with:
#   - the bytes it sends: a Python one-connection server records the request; it must be exactly
#     "CHECK SPAMC/1.5\r\nContent-length: N\r\n\r\n" + the file's bytes, N its size;
#   - how it reads answers: the same fake server answers "Spam: True ; 7.0 / 5.0" (spam), "Spam: False ..."
#     (ham), EX_TEMPFAIL, no Spam: line, not SPAMD at all, nothing: each counted as its verdict or an error,
#     errors named on stderr and exit 1;
#   - against `tbert serve --spamd` (the committed tests/data/mail messages, a head trained here): spam= and
#     ham= equal the labels `tbert score` gives the same messages (one request each at concurrency 4; three
#     rounds with --requests at concurrency 16), and --exec 'spamc -x -c ...' counts exit status 1 (spam) and 0
#     (ham) the same, and so does --unix on a server listening on a unix socket; the HTTP port (not spamd) gives
#     one error per request; the server's /metrics counts every request and the batcher's busy seconds;
#   - the summary line: p50 <= p99 <= max, msg_per_s = requests / wall_s (to its printed rounding);
#   - bad usage: exit 2, one stderr line naming the problem, nothing on stdout.
SERVE_TOOLS=(spamc curl)
. "$(dirname "$0")/serve_common.sh"
LOAD=${TBERT_BUILD_DIR:?TBERT_BUILD_DIR not set}/benchmarks/spamd_load
[ -x "$LOAD" ] || { echo "FAIL $LOAD was not built (benchmarks/CMakeLists.txt builds it with the project)"; exit 1; }
MSGS=("$D"/alternative.eml "$D"/crlf.eml "$D"/html_only.eml "$D"/nested.eml "$D"/attachment_only.eml "$D"/bad_bytes.eml
      "$D"/cp1252_8bit.eml "$D"/utf8_base64.eml "$D/maildir/cur/1000.a:2,S" "$D/maildir/new/1001.b")
N=${#MSGS[@]}
val() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" "$2"; } # val KEY FILE: a value of spamd_load's summary line

# ---- the request on the wire and the reading of answers: a fake spamd (one connection per answer given)
cat > "$W/fake.py" << 'EOF'
import socket, sys
answers = [a.encode().decode("unicode_escape").encode("latin-1") for a in sys.argv[2:]]
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
for i, a in enumerate(answers):
    c, _ = s.accept()
    req = b""
    while True: # the client shuts its write side after the request: read to EOF
        b = c.recv(65536)
        if not b: break
        req += b
    open(sys.argv[1] + ".%d" % i, "wb").write(req)
    c.sendall(a); c.close()
EOF
fake() { # fake OUT ANSWER...: starts the fake server (its port in FPORT), one answer per connection
    "$PY" "$W/fake.py" "$@" > "$W/fport" &
    FAKE=$!
    for _ in $(seq 1 100); do [ -s "$W/fport" ] && break; sleep 0.05; done
    FPORT=$(cat "$W/fport")
}
M=$D/crlf.eml
fake "$W/req" 'SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: True ; 7.0 / 5.0\r\n\r\n' \
    'SPAMD/1.1 0 EX_OK\r\nSpam: False ; -2.5 / 5.0\r\n\r\n' 'SPAMD/1.1 75 EX_TEMPFAIL busy\r\n' \
    'SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n' 'HTTP/1.1 200 OK\r\n\r\n' ''
"$LOAD" --port "$FPORT" --requests 6 "$M" > "$W/fake.out" 2> "$W/fake.err"
rc=$?
wait "$FAKE"
{ printf 'CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n' "$(stat -c %s "$M")"; cat "$M"; } > "$W/req.want"
check "request bytes: CHECK SPAMC/1.5, Content-length, blank line, the file" cmp "$W/req.0" "$W/req.want"
check "fake answers: spam=1 ham=1 errors=4 ($(cat "$W/fake.out"))" \
    [ "$(val spam "$W/fake.out")/$(val ham "$W/fake.out")/$(val errors "$W/fake.out")" = 1/1/4 ]
check "fake answers: exit status 1 with errors (got $rc)" [ "$rc" -eq 1 ]
for why in "answer is not 0 EX_OK" "answer has no Spam: line" "answer does not start with SPAMD/1.x" "empty answer"; do
    check "fake answers: stderr names '$why'" grep -q "crlf.eml: $why" "$W/fake.err"
done

# ---- against tbert serve
train "$W/head" 42
"$BIN" score --device cpu --model "$MODEL" --head "$W/head" --quiet --out "$W/ref.jsonl" "${MSGS[@]}" 2> /dev/null
S=$(grep -c '"label":"spam"' "$W/ref.jsonl")
H=$(grep -c '"label":"ham"' "$W/ref.jsonl")
check "reference: tbert score labels all $N messages ($S spam, $H ham; both present)" [ $((S + H)) -eq "$N" -a "$S" -gt 0 -a "$H" -gt 0 ]
LOG=$W/serve.log
start_server "$LOG" --spamd 127.0.0.1:0 --http 127.0.0.1:0 || { echo "FAIL tbert serve did not start"; exit 1; }
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")
HPORT=$(sed -n 's/.*listening on http 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")

"$LOAD" --port "$PORT" --concurrency 4 "${MSGS[@]}" > "$W/d1.out"
rc=$?
cat "$W/d1.out"
check "direct, concurrency 4: exit 0, requests=$N, spam=$S ham=$H errors=0" \
    [ "$rc/$(val requests "$W/d1.out")/$(val spam "$W/d1.out")/$(val ham "$W/d1.out")/$(val errors "$W/d1.out")" = "0/$N/$S/$H/0" ]
check "summary: p50 <= p99 <= max, msg_per_s = requests / wall_s" "$PY" -c '
import sys
v = dict(kv.split("=") for kv in open(sys.argv[1]).read().split())
p50, p99, mx, n, w, r = (float(v[k]) for k in ("p50_ms", "p99_ms", "max_ms", "requests", "wall_s", "msg_per_s"))
sys.exit(0 if 0 < p50 <= p99 <= mx and abs(r - n / w) <= 0.05 + 0.002 * r else 1)' "$W/d1.out"

printf '%s\n' "${MSGS[@]}" > "$W/list"
"$LOAD" --port "$PORT" --concurrency 16 --requests $((3 * N)) --files "$W/list" > "$W/d3.out"
rc=$?
cat "$W/d3.out"
check "direct, --files, --requests $((3 * N)), concurrency 16: spam=$((3 * S)) ham=$((3 * H)) errors=0" \
    [ "$rc/$(val spam "$W/d3.out")/$(val ham "$W/d3.out")/$(val errors "$W/d3.out")" = "0/$((3 * S))/$((3 * H))/0" ]

"$LOAD" --exec "spamc -x -d 127.0.0.1 -p $PORT -c" --concurrency 4 "${MSGS[@]}" > "$W/e.out"
rc=$?
cat "$W/e.out"
check "--exec spamc -c: exit1 (spam)=$S exit0 (ham)=$H errors=0" \
    [ "$rc/$(val exit1 "$W/e.out")/$(val exit0 "$W/e.out")/$(val errors "$W/e.out")" = "0/$S/$H/0" ]

"$LOAD" --port "$HPORT" --concurrency 2 "${MSGS[@]}" > "$W/h.out" 2> "$W/h.err"
rc=$?
check "the HTTP port is not spamd: errors=$N, exit 1" [ "$rc/$(val errors "$W/h.out")" = "1/$N" ]
check "at most 5 errors named on stderr" [ "$(wc -l < "$W/h.err")" -eq 5 ]

curl -s "http://127.0.0.1:$HPORT/metrics" > "$W/metrics.txt"
n_spamd=$(sed -n 's/^tbert_requests_total{protocol="spamd"} //p' "$W/metrics.txt")
check "server counted every spamd request ($n_spamd = $((5 * N)))" [ "${n_spamd:-0}" = $((5 * N)) ]
busy=$(sed -n 's/^tbert_batcher_busy_seconds_total //p' "$W/metrics.txt")
check "metrics: the batcher's busy seconds ($busy) > 0, window seconds present" \
    "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" "${busy:-0}"
grep -q '^tbert_batch_window_seconds_total ' "$W/metrics.txt" || fail "tbert_batch_window_seconds_total missing"
kill -TERM "$SERVER"
wait "$SERVER"
SERVER=
check "the server log is clean" log_clean "$LOG"

# ---- a unix socket (--unix), on a second server
start_server "$W/serve2.log" --spamd "unix:$W/spamd.sock" || { echo "FAIL tbert serve on a unix socket did not start"; exit 1; }
"$LOAD" --unix "$W/spamd.sock" --concurrency 3 "${MSGS[@]}" > "$W/u1.out"
rc=$?
cat "$W/u1.out"
check "--unix: spam=$S ham=$H errors=0" [ "$rc/$(val spam "$W/u1.out")/$(val ham "$W/u1.out")/$(val errors "$W/u1.out")" = "0/$S/$H/0" ]
kill -TERM "$SERVER"
wait "$SERVER"
SERVER=

# ---- bad usage
usage() { # usage WHAT ARGS...: exit 2, one stderr line containing spamd_load, nothing on stdout
    local what=$1
    shift
    "$LOAD" "$@" > "$W/u.out" 2> "$W/u.err"
    local rc=$? named=0
    grep -q '^spamd_load: ' "$W/u.err" && named=1
    check "usage: $what (exit $rc; $(head -1 "$W/u.err"))" \
        [ "$rc" -eq 2 -a ! -s "$W/u.out" -a "$(wc -l < "$W/u.err")" -eq 1 -a "$named" -eq 1 ]
}
usage "no server" "$M"
usage "no messages" --port 1
usage "two servers" --port 1 --exec true "$M"
usage "--concurrency 0" --port 1 --concurrency 0 "$M"
usage "--port 70000" --port 70000 "$M"
usage "unknown option" --bogus "$M"
usage "a missing file" --port 1 "$W/absent.eml"
usage "--files of a missing list" --port 1 --files "$W/absent.list"
check "--help: exit 0, usage on stdout" bash -c '"$1" --help > "$2" && grep -q "^usage: spamd_load" "$2"' _ "$LOAD" "$W/help.out"
tl_exit "$fails"
