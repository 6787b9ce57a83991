#!/usr/bin/env bash
# Hand test of docs/mail.md's MTA recipes in a throwaway bare Debian 12 (NOT a ctest: it installs MTAs, one
# replacing the other). Run from the project root as root:
#   ../shared/tools/fresh-debian.sh "$PWD" ../shared "bash tests/hand/mta_recipes.sh"
# (MTA_PARTS="postfix dovecot exim", the default, names the parts to run: e.g. "MTA_PARTS=dovecot bash ...")
# Inside the chroot it
#   1. installs the build dependencies (scripts/install-deps.sh) and builds the tbert binary (cpu),
#   2. [postfix] runs tests/test_postfix_milter.sh through ctest (CI=true: it installs postfix + swaks itself),
#   3. [dovecot] a delivering Dovecot: installs dovecot-core, dovecot-sieve and spamc, writes the recipe's
#      lines to /etc/dovecot/local.conf (Maildir, the sieve plugin for the LDA) and the recipe's Sieve script
#      to ~/.dovecot.sieve of a home under $W (the user nobody, HOME set), then
#      a. delivers a spam-ish and a ham-ish message (the ham one with a forged X-Spam-Flag: YES) as the user
#         would: `spamc -d 127.0.0.1 -p PORT | /usr/lib/dovecot/dovecot-lda` as nobody, and checks that the
#         spam one is in ~/Maildir/.Spam/new, the ham one in ~/Maildir/new, each with one X-Spam-Flag;
#         then the spam one again with no spamd listening (spamc passes it on unchanged: INBOX); then
#         both again into another home whose Sieve script files on X-Spam-Level "*****" instead;
#      b. Postfix in front: a private instance (as tests/test_postfix_milter.sh: `postfix -c $W/pf/etc`,
#         smtpd on 127.0.0.1 and a free port, chrooted) whose local(8) agent delivers to nobody@test.invalid
#         through `mailbox_command`; the same two messages sent with swaks, twice: with
#         `smtpd_milters` -> `tbert serve --milter` and `mailbox_command = dovecot-lda ...` (the Sieve rule
#         fires on the milter's X-Spam-Flag), then without the milter and
#         `mailbox_command = spamc ... | dovecot-lda ...`; the same checks each time;
#   4. [exim] Exim: removes postfix, installs exim4-daemon-heavy, writes /etc/exim4/exim4.conf (the chroot's;
#      the recipe's spamd_address and DATA ACL, Maildir delivery as nobody), feeds one spam-ish and one
#      ham-ish message through `exim4 -odf -bs` with swaks --pipe (no daemon, no port) and prints the
#      delivered headers: X-Spam-Score from $spam_score, X-Spam-Bar/-Report, and a reject above
#      $spam_score_int 100;
#   4b. runs the Postfix test again with Exim installed: it must fail without replacing Exim (apt --no-remove).
# No service is started by a package (a policy-rc.d that says 101 is put in place first): the chroot shares
# the machine's network, so exim and dovecot must not bind port 25/143 there; dovecot-lda needs no daemon.
# Output: a log on stdout; PASS/FAIL lines for the Dovecot checks; exit 1 when a check or the Postfix test
# failed.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
. "$ROOT/tests/util/postfix_private.sh"
step() { echo "=== $* ($(date -u +%H:%M:%S))"; }
PARTS=" ${MTA_PARTS:-postfix dovecot exim} "
part() { [[ $PARTS == *" $1 "* ]]; }
FAILS=0
ok() { # ok DESCRIPTION COMMAND...: one PASS or FAIL line, failures counted
    if "${@:2}"; then echo "PASS $1"; else echo "FAIL $1"; FAILS=$((FAILS + 1)); fi
}
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
export DEBIAN_FRONTEND=noninteractive

step "build dependencies"
bash scripts/install-deps.sh > /tmp/deps.log 2>&1 || { tail -20 /tmp/deps.log; exit 1; }
step "build tbert (cpu)"
cmake -S . -B build/cpu -DTBERT_CUDA=OFF -DTBERT_PYTHON=python3 > /tmp/cmake.log 2>&1 &&
    cmake --build build/cpu -j"$(nproc)" --target tbert_cli > /tmp/build.log 2>&1 || { tail -30 /tmp/cmake.log /tmp/build.log; exit 1; }
BIN=$ROOT/build/cpu/tbert
MODEL=$ROOT/tests/models/bert_tiny_shape
D=$ROOT/tests/data/mail

PF_RC=0
if part postfix; then
    step "tests/test_postfix_milter.sh (ctest, CI=$CI)"
    ctest --test-dir build/cpu -R '^test_postfix_milter$' --output-on-failure
    PF_RC=$?
    echo "postfix test: ctest exit $PF_RC"
fi

# a head and a spamd server for the Dovecot and Exim parts (the same head as the serve tests)
W=$(mktemp -d /tmp/mta_hand.XXXXXX)
chmod 755 "$W"
HAM=("$D/alternative.eml" "$D/crlf.eml" "$D/html_only.eml" "$D/nested.eml" "$D/qp_latin1.eml" "$D/rfc2047.eml" "$D/maildir")
SPAM=("$D/attachment_only.eml" "$D/bad_bytes.eml" "$D/cp1252_8bit.eml" "$D/shift_jis.eml" "$D/utf8_base64.eml" "$D/three.mbox")
TBERT_CACHE=$W/cache "$BIN" train --device cpu --model "$MODEL" --ham "${HAM[@]}" --spam "${SPAM[@]}" --out "$W/head" \
    --max-len 32 --lexical-dim 512 --epochs 30 --seed 42 --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; exit 1; }
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN" serve --device cpu --model "$MODEL" --head "$W/head" --spamd "127.0.0.1:$PORT" 2> "$W/serve.log" &
SERVER=$!
MILTER= PF_UP=false
pf_stop() { pf_private_stop "$W/pf"; } # the private Postfix only (tests/util/postfix_private.sh)
trap 'pf_stop; kill $SERVER $MILTER 2> /dev/null; rm -rf /tmp/mta_hand.*' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$W/serve.log" && break; sleep 0.1; done
cat "$W/serve.log"
SPAM_MSG=$D/utf8_base64.eml
HAM_MSG=$D/alternative.eml
for m in "$SPAM_MSG" "$HAM_MSG"; do echo "tbert filter on $(basename "$m"): $("$BIN" filter -p -H all --device cpu --model "$MODEL" -d "$W/head" < "$m" | grep '^X-Spam-Status')"; done

if part dovecot; then
    step "Dovecot: the LDA with the sieve plugin, spamc in the pipe"
    apt-get install -y -qq --no-install-recommends dovecot-core dovecot-sieve spamc > /tmp/dovecot-apt.log 2>&1 ||
        { tail -20 /tmp/dovecot-apt.log; exit 1; }
    dpkg-query -W dovecot-core dovecot-sieve spamc
    # the recipe's Dovecot lines (docs/mail.md): Debian's dovecot.conf reads local.conf last
    cat > /etc/dovecot/local.conf << 'EOF'
mail_location = maildir:~/Maildir
lda_mailbox_autocreate = yes
protocol lda {
  mail_plugins = $mail_plugins sieve
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
}
EOF
    echo "--- doveconf -n (what the LDA reads)"
    doveconf -n | sed -n '/^mail_location/p;/^lda_/p;/^protocol lda/,/^}/p;/^plugin/,/^}/p'
    # mkhome DIR: a home for the user nobody with the recipe's Sieve script (HOME is set when delivering:
    # nobody's own home is /nonexistent)
    mkhome() {
        mkdir -p "$1"
        cat > "$1/.dovecot.sieve" << 'EOF'
require ["fileinto"];
if header :is "X-Spam-Flag" "YES" { fileinto "Spam"; stop; }
EOF
        chown -R nobody:nogroup "$1"
    }
    HAM_FORGED=$W/ham-forged.eml # a forged verdict that tbert must drop before Sieve sees the message
    { printf 'X-Spam-Flag: YES\n'; cat "$HAM_MSG"; } > "$HAM_FORGED"
    chmod 644 "$HAM_FORGED"
    nfiles() { find "$1" -type f 2> /dev/null | wc -l; }
    head_of() { sed -n '1,/^$/p' "$1"; }
    subj() { head_of "$1" | grep -m1 '^Subject:'; }
    is_msg() { [ "$(subj "$1")" = "$(subj "$2")" ]; } # is_msg DELIVERED ORIGINAL: the same Subject line
    # flag_is FILE VALUE: the message's header holds exactly one X-Spam-Flag, and it is VALUE
    flag_is() { [ "$(head_of "$1" | grep -ci '^X-Spam-Flag:')" = 1 ] && head_of "$1" | grep -q "^X-Spam-Flag: $2\$"; }
    show() { head_of "$1" | grep -E '^(X-Spam-(Flag|Status|Level)|X-TBert-Spam|Delivered-To|Return-Path|Subject):'; }
    landed() { # landed WHAT HOME: the spam one alone in ~/Maildir/.Spam/new, the ham one alone in ~/Maildir/new
        local h=$2/Maildir f
        echo "--- $1: the Maildir"; (cd "$h" 2> /dev/null && find . -path '*/new/*' -type f | sort)
        ok "$1: one message in ~/Maildir/.Spam/new" [ "$(nfiles "$h/.Spam/new")" = 1 ]
        ok "$1: one message in ~/Maildir/new" [ "$(nfiles "$h/new")" = 1 ]
        if [ "$(nfiles "$h/.Spam/new")" != 1 ] || [ "$(nfiles "$h/new")" != 1 ]; then
            for f in "$h"/new/* "$h"/.Spam/new/*; do [ -f "$f" ] && echo "--- $f:" && show "$f"; done
            return
        fi
        S=$(find "$h/.Spam/new" -type f) I=$(find "$h/new" -type f)
        echo "--- .Spam/new:"; show "$S"
        echo "--- new:"; show "$I"
        ok "$1: .Spam/new holds $(basename "$SPAM_MSG") ($(subj "$S"))" is_msg "$S" "$SPAM_MSG"
        ok "$1: new holds $(basename "$HAM_MSG") ($(subj "$I"))" is_msg "$I" "$HAM_MSG"
        ok "$1: the spam one has one X-Spam-Flag: YES" flag_is "$S" YES
        ok "$1: the ham one has one X-Spam-Flag: NO (the forged YES gone)" flag_is "$I" NO
        ok "$1: X-Spam-Status: Yes / No" eval 'grep -q "^X-Spam-Status: Yes, score=" "$S" && grep -q "^X-Spam-Status: No, score=" "$I"'
        ok "$1: one X-TBert-Spam each" [ "$(grep -c "^X-TBert-Spam: " "$S")$(grep -c "^X-TBert-Spam: " "$I")" = 11 ]
    }

    # a. the pipe as the user's MTA runs it for the user (procmail's |, a .forward "|...", mailbox_command)
    H=$W/home
    mkhome "$H"
    deliver() { # deliver FILE SPAMD_PORT [HOME]
        runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME="${3:-$H}" USER=nobody sh -c \
            "spamc -d 127.0.0.1 -p $2 | /usr/lib/dovecot/dovecot-lda -f sender@example.org -o log_path=/dev/stderr -o info_log_path=/dev/stderr" \
            < "$1" 2>> "$W/lda.log"
    }
    deliver "$SPAM_MSG" "$PORT"
    rc=$?
    ok "spamc | dovecot-lda, $(basename "$SPAM_MSG"): exit $rc" [ $rc -eq 0 ]
    deliver "$HAM_FORGED" "$PORT"
    rc=$?
    ok "spamc | dovecot-lda, $(basename "$HAM_MSG") with a forged X-Spam-Flag: YES: exit $rc" [ $rc -eq 0 ]
    echo "--- dovecot-lda's log"; cat "$W/lda.log"
    landed "spamc | dovecot-lda" "$H"
    ok "dovecot-lda's log: sieve's fileinto stored one message into 'Spam'" \
        [ "$(grep -c "fileinto action: stored mail into mailbox 'Spam'" "$W/lda.log")" = 1 ]
    # spamd down: spamc hands the message on unchanged (exit 0, the pipe still delivers): INBOX, no flag
    DEAD=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    deliver "$SPAM_MSG" "$DEAD"
    rc=$?
    ok "no spamd listening: spamc | dovecot-lda still delivers (exit $rc)" [ $rc -eq 0 ]
    unflagged() { # one more message in ~/Maildir/new than the ham one, without X-Spam-Flag; .Spam unchanged
        local f n=0
        for f in "$H/Maildir/new"/*; do
            [ "$f" = "${I:-}" ] && continue
            n=$((n + 1))
            grep -q '^X-Spam-Flag' "$f" && return 1
        done
        [ $n -eq 1 ] && [ "$(nfiles "$H/Maildir/.Spam/new")" = 1 ]
    }
    ok "... to ~/Maildir/new, without X-Spam-Flag (.Spam/new unchanged)" unflagged
    tail -n 3 "$W/lda.log"
    # the same pipe, a Sieve rule on X-Spam-Level instead (floor(score) stars: five or more = spam)
    HL=$W/home-level
    mkhome "$HL"
    cat > "$HL/.dovecot.sieve" << 'EOF'
require ["fileinto"];
if header :contains "X-Spam-Level" "*****" { fileinto "Spam"; stop; }
EOF
    cat "$HL/.dovecot.sieve"
    deliver "$SPAM_MSG" "$PORT" "$HL"
    rc=$?
    deliver "$HAM_FORGED" "$PORT" "$HL"
    rc2=$?
    ok "spamc | dovecot-lda with the X-Spam-Level rule: exit $rc and $rc2" [ $rc -eq 0 -a $rc2 -eq 0 ]
    landed "X-Spam-Level rule" "$HL"

    # b. Postfix in front: the milter adds the headers (round 1), or spamc in mailbox_command (round 2)
    step "Dovecot behind Postfix: local(8)'s mailbox_command = dovecot-lda"
    need=()
    command -v swaks > /dev/null || need+=(swaks)
    [ -x /usr/sbin/postfix ] || need+=(postfix)
    if [ ${#need[@]} -gt 0 ]; then
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}" > /tmp/pf-apt.log 2>&1 ||
            { tail -20 /tmp/pf-apt.log; exit 1; }
    fi
    dpkg-query -W postfix swaks
    P=$W/pf
    mkdir -p "$P/etc" "$P/spool/tbert" "$P/data"
    chown postfix "$P/data"
    chmod 755 "$P/spool/tbert"
    : > "$W/lda-pf.log" && chown nobody:nogroup "$W/lda-pf.log"
    PFPORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    # as tests/test_postfix_milter.sh's private instance, but local(8) delivers test.invalid to the passwd
    # user (nobody) through mailbox_command (set per round below); HOME=... because nobody's home is
    # /nonexistent, and -o log_path because the chroot has no syslog: a real user's line has neither
    pf_private_conf "$P" "$PFPORT" tbert-hand-postfix local
    postconf -c "$P/etc" -e "mydestination = test.invalid"
    send() { swaks --server 127.0.0.1 --port "$PFPORT" --helo client.test.invalid --from sender@example.org \
        --to nobody@test.invalid --data "$1" --timeout 30 > "$W/swaks.log" 2>&1; }
    pf_round() { # pf_round WHAT HOME: swaks sends both messages to nobody@test.invalid; where did they land?
        local h=$2/Maildir f
        ok "$1: swaks, $(basename "$SPAM_MSG") accepted" send "$SPAM_MSG"
        ok "$1: swaks, $(basename "$HAM_MSG") with a forged X-Spam-Flag: YES accepted" send "$HAM_FORGED"
        for _ in $(seq 1 300); do
            [ $(($(nfiles "$h/.Spam/new") + $(nfiles "$h/new"))) -ge 2 ] && break
            sleep 0.1
        done
        sleep 1 # anything more that would arrive
        echo "--- Postfix's log (delivery lines)"; grep -E 'status=|milter' "$P/maillog" | sed 's/^.*postfix/postfix/'
        : > "$P/maillog"
        echo "--- dovecot-lda's log"; cat "$W/lda-pf.log"
        : > "$W/lda-pf.log"
        landed "$1" "$2"
    }
    # round 1: smtpd_milters -> tbert serve --milter (docs/mail.md's Postfix recipe), mailbox_command = dovecot-lda
    H1=$W/home-milter
    mkhome "$H1"
    postconf -c "$P/etc" -e "smtpd_milters = unix:/tbert/milter.sock" \
        "mailbox_command = HOME=$H1 /usr/lib/dovecot/dovecot-lda -f \"\$SENDER\" -a \"\$RECIPIENT\" -o log_path=$W/lda-pf.log"
    postfix -c "$P/etc" check || exit 1
    "$BIN" serve --device cpu --model "$MODEL" --head "$W/head" --milter "unix:$P/spool/tbert/milter.sock" \
        --socket-owner :postfix --socket-mode 660 2> "$W/milter.log" &
    MILTER=$!
    for _ in $(seq 1 100); do grep -q "listening on" "$W/milter.log" && break; sleep 0.1; done
    cat "$W/milter.log"
    PF_UP=true
    postfix -c "$P/etc" start || { cat "$P/maillog"; exit 1; }
    for _ in $(seq 1 100); do
        python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$PFPORT" 2> /dev/null && break
        sleep 0.1
    done
    postconf -c "$P/etc" -n smtpd_milters mailbox_command
    pf_round "milter + mailbox_command" "$H1"
    ok "milter: tbert serve logged both messages" [ "$(grep -c '^tbert serve: milter ' "$W/milter.log")" -ge 2 ]
    kill "$MILTER" && wait "$MILTER"
    MILTER=
    # round 2: no milter, spamc in mailbox_command (Postfix runs a command with shell syntax through /bin/sh)
    H2=$W/home-spamc
    mkhome "$H2"
    postconf -c "$P/etc" -e "smtpd_milters =" \
        "mailbox_command = /usr/bin/spamc -d 127.0.0.1 -p $PORT | HOME=$H2 /usr/lib/dovecot/dovecot-lda -f \"\$SENDER\" -a \"\$RECIPIENT\" -o log_path=$W/lda-pf.log"
    postfix -c "$P/etc" reload > /dev/null 2>&1
    sleep 1
    postconf -c "$P/etc" -n smtpd_milters mailbox_command
    pf_round "spamc | dovecot-lda in mailbox_command" "$H2"
    pf_stop
fi # dovecot

if part exim; then
    step "Exim (spamd_address)"
    apt-get purge -y -qq postfix > /dev/null 2>&1
    apt-get install -y -qq --no-install-recommends exim4-daemon-heavy swaks > /tmp/exim-apt.log 2>&1 || { tail -20 /tmp/exim-apt.log; exit 1; }
    mkdir -p /var/mail/tbert-test && chown nobody:nogroup /var/mail/tbert-test
    cat > /etc/exim4/exim4.conf << EOF
# the recipe of docs/mail.md (spamd_address + the DATA ACL), local Maildir delivery, nothing else
primary_hostname = exim-test.invalid
keep_environment =
domainlist local_domains = test.invalid
spamd_address = 127.0.0.1 $PORT
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data
never_users = root
begin acl
acl_check_rcpt:
  accept domains = +local_domains
  deny   message = relay not permitted
acl_check_data:
  warn  spam       = nobody:true
        add_header = X-Spam-Score: \$spam_score
        add_header = X-Spam-Score-Int: \$spam_score_int
        add_header = X-Spam-Bar: \$spam_bar
        add_header = X-Spam-Report: \$spam_report
  deny  message    = rejected as spam (score \$spam_score)
        spam       = nobody
        condition  = \${if >{\$spam_score_int}{100}}
  accept
begin routers
maildir:
  driver = accept
  domains = +local_domains
  local_parts = spam : ham
  transport = maildir
begin transports
maildir:
  driver = appendfile
  directory = /var/mail/tbert-test/\$local_part_data
  maildir_format
  create_directory
  user = nobody
  group = nogroup
  delivery_date_add
  envelope_to_add
  return_path_add
EOF
    exim4 -bV | grep -iE "^Exim version|^configuration file is" || exit 1
    exim_send() { swaks --pipe "/usr/sbin/exim4 -odf -bs" --from sender@example.org --to "$1" --data "$2"; }
    exim_send spam@test.invalid "$SPAM_MSG" > "$W/exim-spam.log" 2>&1; echo "swaks (spam) exit $?"
    exim_send ham@test.invalid "$HAM_MSG" > "$W/exim-ham.log" 2>&1; echo "swaks (ham) exit $?"
    for _ in $(seq 1 100); do
        [ -n "$(ls /var/mail/tbert-test/spam/new /var/mail/tbert-test/ham/new 2> /dev/null)" ] && break
        sleep 0.1
    done
    echo "--- Exim's mainlog"; tail -n 12 /var/log/exim4/mainlog; cat /var/log/exim4/paniclog 2> /dev/null
    for box in spam ham; do
        echo "--- Exim delivered to $box:"
        for f in /var/mail/tbert-test/$box/new/*; do sed -n '1,/^$/p' "$f" | grep -E '^(X-Spam|Received|Subject)'; done
    done
    # the deny line: a cut of 1.0 points above required (score_int 100 = 10.0 points is above any of ours here:
    # show the reject with a lower condition as well)
    sed -i 's/{\$spam_score_int}{100}/{\$spam_score_int}{50}/' /etc/exim4/exim4.conf
    exim_send spam@test.invalid "$SPAM_MSG" > "$W/exim-reject.log" 2>&1; echo "swaks (spam, deny above score_int 50) exit $?"
    grep -E '^ *<\*\* ' "$W/exim-reject.log"
    echo "--- tbert serve's log (Exim's requests)"; grep 'spamd' "$W/serve.log" | tail -4

    step "the Postfix test with Exim installed: it must refuse to install postfix, not replace Exim"
    ctest --test-dir build/cpu -R '^test_postfix_milter$' --output-on-failure > "$W/pf-vs-exim.log" 2>&1
    echo "ctest exit $? (a failure expected)"
    grep -E "^FAIL|E: " "$W/pf-vs-exim.log"
    dpkg-query -W -f='${Package} ${Status}\n' exim4-daemon-heavy postfix 2>&1
fi # exim

step "done (postfix test exit $PF_RC, $FAILS Dovecot check(s) failed)"
[ "$PF_RC" -eq 0 ] && [ "$FAILS" -eq 0 ]
