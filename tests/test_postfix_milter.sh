#!/usr/bin/env bash
# tbert serve's milter behind a real Postfix, with swaks as the sending client (issue 14: "Test with a real
# Postfix on loopback"). Runs only under CI=true or TBERT_TEST_MTA=1 (else exit 77: it installs packages and
# starts an MTA), as root. It never touches the system's Postfix:
#   - installs postfix and swaks with apt-get when missing (postfix preseeded to "No configuration", and
#     --no-remove: if another MTA is installed the install stops instead of replacing it);
#   - runs a PRIVATE instance: `postfix -c $W/etc` with its own main.cf/master.cf, queue_directory and
#     data_directory (master.lock) under $W, smtpd on 127.0.0.1 and an ephemeral port (never 25), every
#     other transport `error:` (nothing leaves the machine), local delivery by the `virtual` agent to Maildirs
#     under $W as the user nobody (no system user is changed), its log in $W/maillog (postlogd);
#   - starts and stops it itself (trap on exit: `postfix stop`, then SIGKILL to the master of $W's pid file);
#     checked at the end: the system's Postfix folders (every entry's mtime, mode, owner, size) and the
#     listeners on port 25 are as they were before.
# smtpd runs chrooted in the queue directory, as Debian's does, so docs/mail.md's recipe is what is tested:
# `tbert serve --milter unix:$W/spool/tbert/milter.sock --socket-owner :postfix --socket-mode 660`, and
# `smtpd_milters = unix:/tbert/milter.sock` (inside the chroot); smtpd runs as postfix, so the socket options
# are what let it connect. Checks:
#   - a spam-ish and a ham-ish message (the ham one with a forged X-Spam-Flag: YES) sent with swaks are
#     delivered with exactly one X-Spam-Flag/-Status/-Level and X-TBert-Spam each; the verdicts are YES for
#     the spam one and NO for the ham one, and agree with `tbert filter -p -H all` run on the delivered file
#     as the milter saw it (delivery's Return-Path/Delivered-To/X-Original-To and the Received: line Postfix
#     added removed: smtpd does not show a milter its own Received: header; ours stripped by filter itself):
#     same flag and exit status, p within 0.001; smtpd ran chrooted;
#   - the spam-ish message submitted locally (`sendmail -C $W/etc`: pickup and cleanup chrooted, as Debian's)
#     goes through non_smtpd_milters and arrives with one X-Spam-Flag: YES and one X-TBert-Spam;
#   - with --milter-reject-above between the two p's the spam one is refused at DATA (550 5.7.1, swaks fails)
#     and not delivered, the ham one still is; with --milter-quarantine-above there the spam one lands in
#     Postfix's hold queue, not in the Maildir.
SERVE_TOOLS=()
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
. "$TESTS/util/testlib.sh"
. "$TESTS/util/postfix_private.sh"
if [ "${CI:-}" != true ] && [ "${TBERT_TEST_MTA:-}" != 1 ]; then
    echo "$TL_NAME: skipped: installs and runs a private Postfix; runs under CI=true or TBERT_TEST_MTA=1 only" >&2
    exit 77
fi
[ "$(id -u)" = 0 ] || { echo "FAIL: $TL_NAME: needs root (Postfix's master starts as root)"; exit 1; }

need=()
command -v swaks > /dev/null || need+=(swaks)
[ -x /usr/sbin/postfix ] || need+=(postfix)
if [ ${#need[@]} -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections ||
        { echo "FAIL: $TL_NAME: debconf-set-selections failed"; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    aptlog=$(mktemp /tmp/tbert_mta_apt.XXXXXX)
    apt-get update -qq > /dev/null && apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}" > "$aptlog" 2>&1 ||
        { tail -20 "$aptlog"; rm -f "$aptlog"; echo "FAIL: $TL_NAME: apt-get install ${need[*]} failed (another MTA installed? this test never replaces one)"; exit 1; }
    rm -f "$aptlog"
fi
SERVE_TOOLS=(postfix swaks)
. "$TESTS/serve_common.sh"
PF_UP=false
pf_stop() { pf_private_stop "$W"; } # the private Postfix only (tests/util/postfix_private.sh)
trap 'pf_stop; cleanup' EXIT

# what must not change: the system's Postfix files, and who listens on port 25 (Postfix's default)
system_state() {
    find /etc/postfix /var/spool/postfix /var/lib/postfix -printf '%p %T@ %m %u %g %s\n' 2> /dev/null | LC_ALL=C sort
    awk '$4 == "0A" && $2 ~ /:0019$/ { print "listening on port 25:", $2 }' /proc/net/tcp /proc/net/tcp6 2> /dev/null
}
system_state > "$W/system-before.txt"
train "$W/head" 42
chmod 755 "$W" # Postfix's daemons (user postfix) and the virtual agent (nobody) walk into it

# ---- the private Postfix
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
NOBODY_UID=$(id -u nobody) NOBODY_GID=$(id -g nobody)
mkdir -p "$W/etc" "$W/spool/tbert" "$W/data" "$W/mail"
chown postfix "$W/data"
chown "$NOBODY_UID:$NOBODY_GID" "$W/mail"
chmod 755 "$W/spool/tbert" # the milter socket's folder inside smtpd's chroot, as docs/mail.md's recipe
printf 'spam@test.invalid spam/\nham@test.invalid ham/\nlocal@test.invalid local/\n' > "$W/etc/vmailbox"
pf_private_conf "$W" "$PORT" tbert-test-postfix virtual
postconf -c "$W/etc" -e "virtual_mailbox_domains = test.invalid" "virtual_mailbox_base = $W/mail" \
    "virtual_mailbox_maps = texthash:$W/etc/vmailbox" "virtual_uid_maps = static:$NOBODY_UID" \
    "virtual_gid_maps = static:$NOBODY_GID" "virtual_minimum_uid = 1" "smtpd_milters = unix:/tbert/milter.sock" \
    'non_smtpd_milters = $smtpd_milters'
postfix -c "$W/etc" check > "$W/pf-check.log" 2>&1 || { cat "$W/pf-check.log"; echo "FAIL postfix check"; exit 1; }
PF_UP=true # from here on the trap stops it, even after a start that failed half way
postfix -c "$W/etc" start > "$W/pf-start.log" 2>&1 || { cat "$W/pf-start.log" "$W/maillog" 2> /dev/null; echo "FAIL postfix start"; exit 1; }
for _ in $(seq 1 100); do
    "$PY" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$PORT" 2> /dev/null && break
    sleep 0.1
done
check "the private Postfix listens on 127.0.0.1:$PORT (not 25)" "$PY" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).close()" "$PORT"

MS=$W/spool/tbert/milter.sock
serve_milter() { # serve_milter LOG [options]: tbert serve's milter, reachable for Postfix's smtpd (group postfix)
    local log=$1; shift
    start_server "$log" --milter "unix:$MS" --socket-owner :postfix --socket-mode 660 "$@" ||
        { echo "FAIL tbert serve did not start"; exit 1; }
}
serve_stop() { kill -TERM "$SERVER"; wait "$SERVER"; SERVER=; }
send() { # send TO FILE: swaks to the private instance; its transcript in $W/swaks.log
    swaks --server 127.0.0.1 --port "$PORT" --helo client.test.invalid --from sender@example.org --to "$1" \
        --data "$2" --timeout 30 > "$W/swaks.log" 2>&1
}
delivered() { # delivered BOX N: waits (60 s at most) until the Maildir BOX/new holds N messages
    for _ in $(seq 1 600); do
        [ "$(find "$W/mail/$1/new" -type f 2> /dev/null | wc -l)" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
newest() { ls -t "$W/mail/$1/new"/* | head -1; }
hval() { sed -n "s/^$1: //p" "$2"; } # hval NAME FILE: the value(s) of a header field (unfolded ones only)

SPAM_MSG=$D/utf8_base64.eml
HAM_MSG=$W/ham.eml
{ printf 'X-Spam-Flag: YES\n'; cat "$D/alternative.eml"; } > "$HAM_MSG" # a forged verdict the milter must drop

serve_milter "$W/serve1.log"
check "the milter socket is group postfix, mode 660" [ "$(stat -c '%G %a' "$MS")" = "postfix 660" ]
check "swaks: the spam-ish message accepted" send spam@test.invalid "$SPAM_MSG"
check "swaks: the ham-ish message accepted" send ham@test.invalid "$HAM_MSG"
check "both delivered to the Maildirs" eval 'delivered spam 1 && delivered ham 1'
ps=() # the milter's p of the spam and the ham message
for box in spam ham; do
    f=$(newest $box)
    [ -n "$f" ] || { echo "FAIL nothing in $box"; fails=$((fails + 1)); continue; }
    for h in X-Spam-Flag X-Spam-Status X-Spam-Level X-TBert-Spam; do
        check "$box: exactly one $h" [ "$(grep -ci "^$h:" "$f")" -eq 1 ]
    done
    flag=$(hval X-Spam-Flag "$f")
    p=$(hval X-TBert-Spam "$f" | sed -n 's/.*score=\([0-9.]*\),.*/\1/p')
    ps+=("$p")
    want=YES; [ $box = ham ] && want=NO
    check "$box: X-Spam-Flag: $want (p=$p)" [ "$flag" = $want ]
    check "$box: X-Spam-Status agrees with the flag" grep -q "^X-Spam-Status: $([ "$flag" = YES ] && echo Yes || echo No), score=" "$f"
    # what the milter saw: the delivered file without what delivery prepended and without the Received: line
    # Postfix added (smtpd does not show a milter its own Received: header: with it p differs by 0.04 here);
    # filter strips our headers itself
    awk 'h == 0 && /^$/ { h = 1 } h == 0 && !r && /^Received:/ { r = 1; cont = 1; next }
         cont && /^[ \t]/ { next } { cont = 0 } h == 0 && /^(Return-Path|Delivered-To|X-Original-To):/ { next } { print }' \
        "$f" > "$W/seen.eml"
    "$BIN" filter -p -H all --device cpu --model "$MODEL" -d "$W/head" < "$W/seen.eml" > "$W/filtered.eml"
    frc=$?
    fflag=$(hval X-Spam-Flag "$W/filtered.eml")
    fp=$(hval X-TBert-Spam "$W/filtered.eml" | sed -n 's/.*score=\([0-9.]*\),.*/\1/p')
    want_rc=1; [ "$flag" = YES ] && want_rc=0
    check "$box: tbert filter on the same message: flag $fflag (exit $frc), p=$fp" [ "$fflag" = "$flag" -a "$frc" = "$want_rc" ]
    check "$box: |p(milter) - p(filter)| <= 0.001 (both printed with 4 decimals)" \
        "$PY" -c "import sys; sys.exit(not abs(float(sys.argv[1]) - float(sys.argv[2])) <= 0.001)" "$p" "${fp:-nan}"
done
chrooted_smtpd() { # an smtpd process of this instance whose root is its queue directory
    local f
    for f in /proc/[0-9]*; do
        [ "$(cat "$f/comm" 2> /dev/null)" = smtpd ] && [ "$(readlink "$f/root")" = "$W/spool" ] && return 0
    done
    return 1
}
check "smtpd ran chrooted in the queue directory (it found the socket as unix:/tbert/milter.sock)" chrooted_smtpd
check "the milter logged both messages" [ "$(grep -c '^tbert serve: milter ' "$W/serve1.log")" -ge 2 ]
# local submission (the sendmail command; pickup and cleanup chrooted): the recipe's non_smtpd_milters
check "sendmail -C (local submission) of the spam-ish message" \
    eval '/usr/sbin/sendmail -C "$W/etc" -f sender@example.org local@test.invalid < "$SPAM_MSG"'
check "... delivered through non_smtpd_milters with one X-Spam-Flag: YES and one X-TBert-Spam" \
    eval 'delivered local 1 && [ "$(grep -c "^X-Spam-Flag: YES$" "$(newest local)")$(grep -c "^X-TBert-Spam: " "$(newest local)")" = 11 ]'
serve_stop

# ---- reject, then quarantine, above a cut between the two p's
if [ ${#ps[@]} -eq 2 ] && "$PY" -c "import sys; sys.exit(not float(sys.argv[1]) - float(sys.argv[2]) > 0.004)" "${ps[0]}" "${ps[1]}"; then
    CUT=$("$PY" -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "${ps[0]}" "${ps[1]}")
    serve_milter "$W/serve2.log" --milter-reject-above "$CUT"
    send spam@test.invalid "$SPAM_MSG"
    rc=$?
    check "--milter-reject-above $CUT: swaks fails (exit $rc)" [ $rc -ne 0 ]
    check "... with 550 5.7.1 at the end of DATA" grep -q '<\*\* *550 5\.7\.1' "$W/swaks.log"
    check "the ham message still goes through" send ham@test.invalid "$HAM_MSG"
    check "... and is delivered" delivered ham 2
    check "the rejected one is not delivered" [ "$(find "$W/mail/spam/new" -type f | wc -l)" -eq 1 ]
    serve_stop
    serve_milter "$W/serve3.log" --milter-quarantine-above "$CUT"
    check "--milter-quarantine-above $CUT: swaks is told 250 (accepted)" send spam@test.invalid "$SPAM_MSG"
    held=0
    for _ in $(seq 1 100); do
        held=$(find "$W/spool/hold" -type f 2> /dev/null | wc -l)
        [ "$held" -ge 1 ] && break
        sleep 0.1
    done
    check "... the message is in Postfix's hold queue" [ "$held" -eq 1 ]
    sleep 1
    check "... and not in the Maildir" [ "$(find "$W/mail/spam/new" -type f | wc -l)" -eq 1 ]
    serve_stop
else
    echo "FAIL the spam message's p (${ps[0]:-}) is not above the ham message's (${ps[1]:-}): no cut between them"
    fails=$((fails + 1))
fi
check "no sanitizer report in the server logs" log_clean "$W"/serve*.log
if [ $fails -ne 0 ]; then
    echo "--- Postfix's log"; tail -40 "$W/maillog" 2> /dev/null
fi
pf_stop
pf_gone() { [ ! -e "$W/spool/pid/master.pid" ] || ! kill -0 "$(tr -d ' \n' < "$W/spool/pid/master.pid")" 2> /dev/null; }
check "the private Postfix stopped" pf_gone
system_state > "$W/system-after.txt"
check "the system's /etc/postfix, /var/spool/postfix, /var/lib/postfix and port 25 as before" \
    cmp -s "$W/system-before.txt" "$W/system-after.txt"
echo "$fails failure(s)"
[ $fails -eq 0 ]
