#!/usr/bin/env bash
# Hand test of docs/mail.md's MTA recipes in a throwaway bare Debian 12 (NOT a ctest: it installs MTAs, one
# replacing the other). Run from the project root as root:
#   ../shared/tools/fresh-debian.sh "$PWD" ../shared "bash tests/hand/mta_recipes.sh"
# Inside the chroot it
#   1. installs the build dependencies (scripts/install-deps.sh) and builds the tbert binary (cpu),
#   2. runs tests/test_postfix_milter.sh through ctest (CI=true: it installs postfix + swaks itself),
#   3. Exim: removes postfix, installs exim4-daemon-heavy, writes /etc/exim4/exim4.conf (the chroot's; the
#      recipe's spamd_address and DATA ACL, Maildir delivery as nobody), feeds one spam-ish and one ham-ish
#      message through `exim4 -odf -bs` with swaks --pipe (no daemon, no port) and prints the delivered
#      headers: X-Spam-Score from $spam_score, X-Spam-Bar/-Report, and a reject above $spam_score_int 100;
#   3b. runs the Postfix test again with Exim installed: it must fail without replacing Exim (apt --no-remove);
#   4. Dovecot Sieve: installs dovecot-sieve, runs each message through spamc against `tbert serve --spamd`
#      and the recipe's Sieve script through pigeonhole's sieve-test, which prints the action taken.
# No service is started by a package (a policy-rc.d that says 101 is put in place first): the chroot shares
# the machine's network, so exim and dovecot must not bind port 25/143 there. Output: a log on stdout.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
step() { echo "=== $* ($(date -u +%H:%M:%S))"; }
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

step "tests/test_postfix_milter.sh (ctest, CI=$CI)"
ctest --test-dir build/cpu -R '^test_postfix_milter$' --output-on-failure
PF_RC=$?
echo "postfix test: ctest exit $PF_RC"

# a head and a spamd server for the Exim and Sieve parts (the same head as the serve tests)
W=$(mktemp -d /tmp/mta_hand.XXXXXX)
chmod 755 "$W"
HAM=("$D/alternative.eml" "$D/crlf.eml" "$D/html_only.eml" "$D/nested.eml" "$D/qp_latin1.eml" "$D/rfc2047.eml" "$D/maildir")
SPAM=("$D/attachment_only.eml" "$D/bad_bytes.eml" "$D/cp1252_8bit.eml" "$D/shift_jis.eml" "$D/utf8_base64.eml" "$D/three.mbox")
TBERT_CACHE=$W/cache "$BIN" train --device cpu --model "$MODEL" --ham "${HAM[@]}" --spam "${SPAM[@]}" --out "$W/head" \
    --max-len 32 --lexical-dim 512 --epochs 30 --seed 42 --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; exit 1; }
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN" serve --device cpu --model "$MODEL" --head "$W/head" --spamd "127.0.0.1:$PORT" 2> "$W/serve.log" &
SERVER=$!
trap 'kill $SERVER 2> /dev/null; rm -rf /tmp/mta_hand.*' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$W/serve.log" && break; sleep 0.1; done
cat "$W/serve.log"
SPAM_MSG=$D/utf8_base64.eml
HAM_MSG=$D/alternative.eml
for m in "$SPAM_MSG" "$HAM_MSG"; do echo "tbert filter on $(basename "$m"): $("$BIN" filter -p -H all --device cpu --model "$MODEL" -d "$W/head" < "$m" | grep '^X-Spam-Status')"; done

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

step "Dovecot Sieve (through spamc)"
apt-get install -y -qq --no-install-recommends dovecot-sieve spamc > /tmp/dovecot-apt.log 2>&1 || { tail -20 /tmp/dovecot-apt.log; exit 1; }
dpkg-query -W dovecot-sieve dovecot-core
mkdir "$W/sieve" && chown nobody:nogroup "$W/sieve" # sieve-test saves the compiled script beside it
cat > "$W/sieve/spam.sieve" << 'EOF'
require ["fileinto"];
if header :is "X-Spam-Flag" "YES" { fileinto "Spam"; stop; }
EOF
for m in "$SPAM_MSG" "$HAM_MSG"; do
    spamc -d 127.0.0.1 -p "$PORT" < "$m" > "$W/through-spamc.eml"
    echo "--- $(basename "$m") through spamc: $(grep -E '^X-Spam-(Flag|Status)' "$W/through-spamc.eml" | tr '\n' ' ')"
    chmod 644 "$W/through-spamc.eml"
    # sieve-test refuses to run as root without a mail_uid: run it as nobody
    runuser -u nobody -- sieve-test "$W/sieve/spam.sieve" "$W/through-spamc.eml" 2>&1
done
step "done (postfix test exit $PF_RC)"
exit $PF_RC
