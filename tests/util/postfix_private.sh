# A private Postfix instance's configuration, shared by tests/test_postfix_milter.sh (CI) and
# tests/hand/mta_recipes.sh (by hand in a fresh Debian); source it, then call:
#   pf_private_conf DIR PORT NAME AGENT
# writes DIR/etc/main.cf and DIR/etc/master.cf for an instance whose queue is DIR/spool, data DIR/data and log
# DIR/maillog (syslog_name NAME), that listens on 127.0.0.1:PORT only (smtpd chrooted, as Debian's, so a milter
# socket is named from inside DIR/spool), accepts from loopback, relays nowhere (every non-local transport is
# error:), delivers nothing by itself (mydestination empty) and runs AGENT (local or virtual) as its delivery
# agent. The caller makes DIR/etc, DIR/spool and DIR/data (owned by postfix) and adds its own main.cf
# lines with `postconf -c DIR/etc -e` (destinations, mailboxes, milters).
pf_private_conf() {
    local d=$1 port=$2 name=$3 agent=$4
    cat > "$d/etc/main.cf" << EOF
compatibility_level = 3.6
queue_directory = $d/spool
data_directory = $d/data
meta_directory = $(postconf -d -h meta_directory)
mail_owner = postfix
myhostname = mta-test.invalid
mydomain = invalid
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = \$myhostname ESMTP tbert test
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
default_transport = error:the tbert test instance delivers locally only
relay_transport = error:the tbert test instance delivers locally only
notify_classes =
biff = no
smtputf8_enable = no
milter_default_action = tempfail
milter_protocol = 6
syslog_name = $name
maillog_file = $d/maillog
maillog_file_prefixes = $d
EOF
    cat > "$d/etc/master.cf" << EOF
127.0.0.1:$port inet n - y - - smtpd
pickup    unix n - y 60 1 pickup
cleanup   unix n - y - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
$agent unix - n n - - $agent
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
}

# pf_private_stop DIR: when PF_UP is true, stops the instance configured in DIR (its own config dir, then its
# own master's pid: never another Postfix on the machine) and sets PF_UP=false
pf_private_stop() {
    ${PF_UP:-false} || return 0
    postfix -c "$1/etc" stop > /dev/null 2>&1
    local pid
    pid=$(tr -d ' \n' < "$1/spool/pid/master.pid" 2> /dev/null)
    for _ in $(seq 1 50); do [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null && kill -KILL "$pid"
    PF_UP=false
}
