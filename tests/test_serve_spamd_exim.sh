#!/usr/bin/env bash
# tbert serve's spamd answers as Exim reads them (found by the hand test in docs/mail.md: Exim's $spam_report
# began with "Content-length: 65"). Exim (src/spam.c, 4.96) sends "REPORT SPAMC/1.2", User and Content-length
# headers, and parses the answer with
#     sscanf("SPAMD/%7s 0 EX_OK\r\nContent-length: %*u\r\n\r\n%lf/%lf\r\n%n")            (spamd 2.5x), else
#     sscanf("SPAMD/%7s 0 EX_OK\r\nSpam: %*s ; %lf / %lf\r\n\r\n%n")                       (what spamd sends 1.2)
# and takes everything from %n on as the report. This test sends exactly that request over a raw socket and
# applies the second pattern (a whitespace run in a scanf format matches any whitespace, none included): the
# score and 5.0 parse, and the report is our one REPORT line ("tbert: spam p=... threshold=... head=...").
# Protocol 1.3 and later (spamc's 1.5) get Content-length before Spam:, as spamd sends them.
SERVE_TOOLS=()
. "$(dirname "$0")/serve_common.sh"
train "$W/head" 42
start_server "$W/serve.log" --spamd 127.0.0.1:0 || { echo "FAIL tbert serve did not start"; exit 1; }
PORT=$(sed -n 's/.*listening on spamd 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$W/serve.log")
for m in "$D/utf8_base64.eml" "$D/alternative.eml"; do
    "$PY" - "$PORT" "$m" << 'EOF'
import re, socket, sys
port, path = int(sys.argv[1]), sys.argv[2]
msg = open(path, "rb").read()
def ask(req):
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.sendall(req + msg)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out.decode("latin-1")
        out += b
fails = 0
def check(what, ok, got):
    global fails
    print(("ok   " if ok else "FAIL ") + what + ("" if ok else ": got %r" % got))
    fails += 0 if ok else 1
name = path.rsplit("/", 1)[-1]
# Exim's request, byte for byte (its user name "nobody" from `spam = nobody`)
a = ask(b"REPORT SPAMC/1.2\r\nUser: nobody\r\nContent-length: %d\r\n\r\n" % len(msg))
# scanf's "\r\n\r\n" in a format = any run of whitespace; "%*s" = a run of non-space
first = re.match(r"SPAMD/(\S{1,7}) 0 EX_OK\s*Content-length:", a)
m = re.match(r"SPAMD/(\S{1,7}) 0 EX_OK\s*Spam:\s*\S+\s*;\s*(-?[0-9.]+)\s*/\s*(-?[0-9.]+)\s*", a)
check(name + ": SPAMC/1.2 REPORT: not the spamd-2.5x form (no Content-length line first)", first is None, a[:80])
check(name + ": Exim's spamd pattern parses score and required 5.0", m is not None and float(m.group(3)) == 5.0, a[:120])
report = a[m.end():] if m else ""
check(name + ": Exim's $spam_report is our REPORT line", re.fullmatch(
    r"tbert: (spam|ham) p=[0-9.]+ threshold=[0-9.]+ head=[0-9a-f]{16}\r\n", report) is not None, report)
# spamc's protocol (1.5): Content-length first, then Spam:, then the body of that length
b = ask(b"REPORT SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(msg))
h, _, body = b.partition("\r\n\r\n")
lines = h.split("\r\n")
check(name + ": SPAMC/1.5: Content-length then Spam:, as spamd", len(lines) == 3 and lines[1].startswith("Content-length: ")
      and lines[2].startswith("Spam: ") and int(lines[1].split(": ")[1]) == len(body), h)
ok_score = m is not None and re.search(r"Spam: \S+ ; " + re.escape(m.group(2)) + " / 5.0$", lines[-1]) is not None
check(name + ": the same score in both", ok_score, (lines[-1], m.group(2) if m else None))
sys.exit(1 if fails else 0)
EOF
    [ $? -eq 0 ] || fails=$((fails + 1))
done
kill -TERM "$SERVER"; wait "$SERVER"; SERVER=
check "no sanitizer report in the server log" log_clean "$W/serve.log"
echo "$fails failure(s)"
[ $fails -eq 0 ]
