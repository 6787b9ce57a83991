#!/usr/bin/env bash
# tbert serve's unix-socket service options: --socket-mode and --socket-owner USER[:GROUP] (also USER: and
# :GROUP, names or numbers) on the spamd, HTTP and milter sockets (the milter's is made by the child process).
#   - the modes and owners stat(1) shows are the ones asked for; spamc still talks through the socket;
#   - bad specs (unknown user or group, ':', an empty USER with no GROUP) exit 2 with one error line naming it;
#   - with --user, the milter socket (made by the child running as that user) cannot go to another user or to
#     a group the user is not in: exit 2 at startup, not a child that keeps dying;
#   - as root: --socket-owner nobody:nogroup, and --user nobody with --socket-owner nobody: (the login group):
#     spamd and milter sockets belong to nobody:nogroup after the privilege drop, and remain answerable.
# The ownership parts need root (chown to another user/group); without root they run with the caller's own
# group, which an unprivileged process may give.
SERVE_TOOLS=(spamc)
. "$(dirname "$0")/serve_common.sh"
train "$W/head" 42
chmod 755 "$W"

# ---- modes, and an owner of the caller's own group (any user may do that)
MYGRP=$(id -gn)
S1=$W/s1
mkdir -m 777 "$S1"
start_server "$W/serve1.log" --spamd "unix:$S1/spamd.sock" --http "unix:$S1/http.sock" --milter "unix:$S1/milter.sock" \
    --socket-mode 640 --socket-owner ":$MYGRP" || { echo "FAIL tbert serve did not start"; exit 1; }
for sock in spamd http milter; do
    check "--socket-mode 640: $sock socket is mode 640" [ "$(stat -c %a "$S1/$sock.sock")" = 640 ]
    check "--socket-owner :$MYGRP: $sock socket's group" [ "$(stat -c %G "$S1/$sock.sock")" = "$MYGRP" ]
done
answers() { spamc -U "$1" -c < "$D/crlf.eml" | grep -q '/5\.0$'; } # answers SOCKET: spamd answered (spamc says 0/0 if not)
check "spamc through the 640 socket (as its owner)" answers "$S1/spamd.sock"
kill -TERM "$SERVER"; wait "$SERVER"; SERVER=

# ---- bad specs: exit 2, one line naming the problem
bad() { # bad SPEC EXPECTED_TEXT [more serve args]
    local spec=$1 want=$2; shift 2
    "$BIN" serve --device cpu --model "$MODEL" --head "$W/head" --spamd "unix:$W/bad.sock" --socket-owner "$spec" "$@" 2> "$W/bad.err"
    local rc=$?
    # one error line, the last (a chown refused at bind time comes after serve's "loaded" log line)
    [ $rc -eq 2 ] && [ "$(grep -c -- '--socket-owner' "$W/bad.err")" -eq 1 ] && tail -n1 "$W/bad.err" | grep -q -- "$want" ||
        { echo "     exit $rc: $(cat "$W/bad.err")"; return 1; }
}
check "--socket-owner no_such_user_tb: exit 2" bad no_such_user_tb "no such user 'no_such_user_tb'"
check "--socket-owner :no_such_group_tb: exit 2" bad :no_such_group_tb "no such group 'no_such_group_tb'"
check "--socket-owner ':': exit 2" bad : "expects USER\[:GROUP\]"
check "--socket-owner :4294967295 (the \"unchanged\" id, not a group): exit 2" bad :4294967295 "no such group '4294967295'"
check "--socket-owner '': exit 2" bad "" "expects USER\[:GROUP\]"

if [ "$(id -u)" != 0 ]; then
    check "not root: --socket-owner root (another user): exit 2, chown refused, naming the socket" \
        bad root "bad.sock: --socket-owner root: chown"
    echo "$fails failure(s) (the root-only parts were not run: not root)"
    [ $fails -eq 0 ]
    exit
fi

# ---- as root: another user and group; --user with the milter
id nobody > /dev/null 2>&1 && getent group nogroup > /dev/null ||
    { echo "FAIL the user nobody / group nogroup are missing (Debian's base system has them)"; exit 1; }
S2=$W/s2
mkdir -m 777 "$S2"
start_server "$W/serve2.log" --spamd "unix:$S2/spamd.sock" --milter "unix:$S2/milter.sock" --socket-owner nobody:nogroup ||
    { echo "FAIL tbert serve did not start"; exit 1; }
for sock in spamd milter; do
    check "--socket-owner nobody:nogroup: $sock socket is nobody:nogroup 660" [ "$(stat -c '%U:%G %a' "$S2/$sock.sock")" = "nobody:nogroup 660" ]
done
kill -TERM "$SERVER"; wait "$SERVER"; SERVER=

check "--user nobody --socket-owner root: the milter socket cannot be given away: exit 2" \
    bad root "made by --user nobody, who cannot give it to another user" --user nobody --milter "unix:$S2/m.sock"
check "--user nobody --socket-owner :root (not nobody's group): exit 2" \
    bad :root "--user nobody is not in that group" --user nobody --milter "unix:$S2/m.sock"

start_server "$W/serve3.log" --spamd "unix:$S2/spamd.sock" --milter "unix:$S2/milter.sock" --user nobody \
    --socket-owner nobody: || { echo "FAIL tbert serve --user nobody did not start"; exit 1; }
check "--user nobody: runs as nobody" [ "$(proc_user "$SERVER")" = nobody ]
for sock in spamd milter; do
    check "--user nobody --socket-owner nobody: $sock socket is nobody:nogroup" [ "$(stat -c '%U:%G' "$S2/$sock.sock")" = "nobody:nogroup" ]
done
check "spamc as root through nobody's socket" answers "$S2/spamd.sock"
kill -TERM "$SERVER"; wait "$SERVER"; rc=$?; SERVER=
check "SIGTERM: exit 0, the sockets removed" [ $rc -eq 0 -a ! -e "$S2/spamd.sock" -a ! -e "$S2/milter.sock" ]
check "no sanitizer report in the server logs" log_clean "$W"/*.log
echo "$fails failure(s)"
[ $fails -eq 0 ]
