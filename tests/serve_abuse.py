"""Misbehaving spamd clients for tests/test_serve_spamd.sh (stdlib only; loopback only; stops by itself).

usage: serve_abuse.py HOST PORT MESSAGE_FILE TIMEOUT_S N_CONCURRENT [HTTP_PORT]

Each case prints "ok   ..." or "FAIL ..."; the exit status is the number of failures (capped at 100).
Cases: malformed request lines and headers (each must get a "SPAMD/1.1 76" protocol error), clients that
vanish mid-headers / mid-message / with a reset, a client too slow to finish its request (must be closed
within 4 x TIMEOUT_S + slack), and N_CONCURRENT clients connected at once that each send a CHECK (each
must get an answer: EX_OK, or EX_TEMPFAIL beyond --max-connections, or a closed connection; none may hang).
With HTTP_PORT also malformed HTTP (a garbage request line, a 100 KB header, a body that stops short): an
error status or a closed connection, and GET /health still answers 200.
"""
import os
import selectors
import socket
import struct
import sys
import time
import zlib

HOST, PORT = sys.argv[1], int(sys.argv[2])
MSG = open(sys.argv[3], "rb").read()
TIMEOUT = float(sys.argv[4])
N_CONC = int(sys.argv[5])
fails = 0


def check(what, cond):
    global fails
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        fails += 1


def exchange(data, wait=10.0, shut=True):
    """Sends data, half-closes, returns everything the server says until it closes."""
    s = socket.create_connection((HOST, PORT), timeout=wait)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        return out
    except (ConnectionResetError, BrokenPipeError):
        return b"<reset>"
    finally:
        s.close()


def protocol_error(what, data):
    out = exchange(data)
    check(what + " -> SPAMD/1.1 76 (" + out[:50].decode("latin-1").strip() + ")", out.startswith(b"SPAMD/1.1 76 "))


req = b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(MSG) + MSG
protocol_error("garbage request line", b"HELLO THERE\r\n\r\n")
protocol_error("unknown verb", b"FROB SPAMC/1.5\r\nContent-length: 0\r\n\r\n")
protocol_error("internal MILTER verb on the public port", b"MILTER SPAMC/1.5\r\nContent-length: 0\r\n\r\n")
protocol_error("SPAMC/2.0", b"CHECK SPAMC/2.0\r\nContent-length: 0\r\n\r\n")
protocol_error("request line of 20,000 bytes", b"CHECK " + b"A" * 20000 + b"\r\n\r\n")
protocol_error("header line of 20,000 bytes", b"CHECK SPAMC/1.5\r\nX-Long: " + b"B" * 20000 + b"\r\n\r\n")
protocol_error("100 header lines", b"CHECK SPAMC/1.5\r\n" + b"X-H: 1\r\n" * 100 + b"\r\n")
protocol_error("missing Content-length", b"CHECK SPAMC/1.5\r\nUser: x\r\n\r\n" + MSG)
protocol_error("negative Content-length", b"CHECK SPAMC/1.5\r\nContent-length: -5\r\n\r\n")
protocol_error("Content-length not a number", b"CHECK SPAMC/1.5\r\nContent-length: 12abc\r\n\r\n")
protocol_error("unknown Compress", b"CHECK SPAMC/1.5\r\nCompress: lzma\r\nContent-length: 0\r\n\r\n")
protocol_error("TELL without Set/Remove", b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nContent-length: 0\r\n\r\n")
protocol_error("TELL with a bad Message-class", b"TELL SPAMC/1.5\r\nMessage-class: eggs\r\nSet: local\r\nContent-length: 0\r\n\r\n")
plain = exchange(req)
z = zlib.compress(MSG)
out = exchange(b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(z) + z)
check("Compress: zlib gives the same answer as the plain message", out == plain and b"Spam: " in out)
out = exchange(b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: 20\r\n\r\n" + os.urandom(20))
check("zlib body that is no zlib -> SPAMD/1.1 65", out.startswith(b"SPAMD/1.1 65 "))
out = exchange(b"CHECK SPAMC/1.5\r\nContent-length: 4096\r\n\r\n" + bytes(range(256)) * 16)
check("4 KB of binary bytes as a message -> an answer (%s)" % out[:24], out.startswith(b"SPAMD/1.1 "))
out = exchange(b"CHECK SPAMC/1.2\nContent-length: %d\n\n" % len(MSG) + MSG)
check("bare LF line ends are accepted", out.startswith(b"SPAMD/1.1 0 EX_OK") and b"Spam: " in out)

# clients that vanish
for what, data in [("mid request line", b"CHE"), ("mid headers", b"CHECK SPAMC/1.5\r\nContent-le"),
                   ("mid message", b"CHECK SPAMC/1.5\r\nContent-length: 100000\r\n\r\n" + MSG[:100])]:
    s = socket.create_connection((HOST, PORT))
    s.sendall(data)
    s.close()
    check("client vanished " + what + " (closed)", True)
s = socket.create_connection((HOST, PORT))
s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 100000\r\n\r\n" + MSG[:100])
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # RST
check("client vanished mid message with a reset", True)
out = exchange(req)
check("the server still answers after them", out.startswith(b"SPAMD/1.1 0 EX_OK"))

# a client too slow to finish: the server closes it (4 x --timeout for the whole request)
s = socket.create_connection((HOST, PORT), timeout=4 * TIMEOUT + 10)
t0 = time.time()
s.sendall(b"CHECK SPAMC/1.5\r\n")
closed = False
try:
    while True:
        time.sleep(min(TIMEOUT / 2, 1.0))
        s.sendall(b"X-Slow: 1\r\n")  # one header now and then: each read is within the timeout
        if time.time() - t0 > 4 * TIMEOUT + 10:
            break
except (BrokenPipeError, ConnectionResetError):
    closed = True
if not closed:
    try:
        closed = s.recv(100) is not None  # EOF or an error line
    except (socket.timeout, ConnectionResetError):
        closed = False
el = time.time() - t0
s.close()
check("a trickling client is closed after %.1f s (limit 4 x %g s + 2 s closing + 6 s slack)" % (el, TIMEOUT), closed and el <= 4 * TIMEOUT + 8)

# many clients at once
socks = []
t0 = time.time()
for i in range(N_CONC):
    try:
        c = socket.create_connection((HOST, PORT), timeout=30)
        socks.append(c)
    except OSError as e:
        check("connect %d: %s" % (i, e), False)
        break
sent = 0
for c in socks:
    try:
        c.sendall(req)
        c.shutdown(socket.SHUT_WR)
        sent += 1
    except OSError:
        pass
sel = selectors.DefaultSelector()
for c in socks:
    c.setblocking(False)
    sel.register(c, selectors.EVENT_READ, b"")
answers = {"ok": 0, "tempfail": 0, "closed": 0, "other": 0}
bufs = {c: b"" for c in socks}
deadline = time.time() + 120
while sel.get_map() and time.time() < deadline:
    for key, _ in sel.select(timeout=1):
        c = key.fileobj
        try:
            b = c.recv(65536)
        except (ConnectionResetError, BlockingIOError):
            b = b""
        if b:
            bufs[c] += b
            continue
        sel.unregister(c)
        o = bufs[c]
        k = ("ok" if o.startswith(b"SPAMD/1.1 0 EX_OK") and b"Spam: " in o else "tempfail" if o.startswith(b"SPAMD/1.5 75")
             else "closed" if not o else "other")
        answers[k] += 1
        c.close()
hung = len(sel.get_map())
for key in list(sel.get_map().values()):
    key.fileobj.close()
print("     %d clients at once: %s, %d still open after 120 s, %.1f s" % (len(socks), answers, hung, time.time() - t0))
check("%d concurrent clients: none hangs, none gets a malformed answer" % N_CONC, hung == 0 and answers["other"] == 0)
check("%d concurrent clients: at least 64 scored" % N_CONC, answers["ok"] >= 64)
out = exchange(req)
check("the server still answers after the crowd", out.startswith(b"SPAMD/1.1 0 EX_OK"))

if len(sys.argv) > 6:
    HPORT = int(sys.argv[6])

    def http(data, wait=10.0):
        s = socket.create_connection((HOST, HPORT), timeout=wait)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
            return out
        except (ConnectionResetError, BrokenPipeError):
            return b""
        finally:
            s.close()

    def status(out):
        return int(out.split(b" ")[1]) if out.startswith(b"HTTP/1.") and len(out.split(b" ")) > 1 else 0

    for what, data in [("garbage request line", b"GARBAGE\r\n\r\n"),
                       ("100 KB header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"A" * 100000 + b"\r\n\r\n"),
                       ("body shorter than its Content-Length", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + MSG[:50]),
                       ("bad Content-Length", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n")]:
        out = http(data)
        st = status(out)
        check("HTTP %s -> an error status or a closed connection (%s)" % (what, st or "closed"), st == 0 or st >= 400)
    out = http(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check("HTTP: GET /health still answers 200", status(out) == 200)
sys.exit(min(fails, 100))
