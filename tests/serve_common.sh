# Shared by tests/test_serve_spamd.sh and tests/test_serve_milter.sh (sourced): the tools, a work folder
# removed on exit (and the server killed), check(), a head trained on the committed test messages
# (tests/data/mail: 8 ham, 8 spam) with the small committed model, and start_server. Everything runs with
# --device cpu: these tests are about the protocols, the same in every build configuration.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/bert_tiny_shape
D=$TESTS/data/mail
TL_NAME=$(basename "$0" .sh)
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1 # check, fails
tl_require_tools "${SERVE_TOOLS[@]}"
W=$(mktemp -d /tmp/tbert_serve_test.XXXXXX)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill -KILL "$SERVER" 2> /dev/null; rm -rf "$W"; }
trap cleanup EXIT
export TBERT_CACHE=$W/cache

HAM=("$D/alternative.eml" "$D/crlf.eml" "$D/html_only.eml" "$D/nested.eml" "$D/qp_latin1.eml" "$D/rfc2047.eml" "$D/maildir")
SPAM=("$D/attachment_only.eml" "$D/bad_bytes.eml" "$D/cp1252_8bit.eml" "$D/shift_jis.eml" "$D/utf8_base64.eml" "$D/three.mbox")
train() { # train OUT SEED
    "$BIN" train --device cpu --model "$MODEL" --ham "${HAM[@]}" --spam "${SPAM[@]}" --out "$1" --max-len 32 --lexical-dim 512 \
        --epochs 30 --seed "$2" --quiet > "$W/train.log" 2>&1 || { cat "$W/train.log"; echo "FAIL tbert train"; exit 1; }
}

start_server() { # start_server LOG ARGS...: sets SERVER, waits for its "listening on" lines (one per listener)
    local log=$1; shift
    local want=0
    for a in "$@"; do case $a in --spamd | --http | --milter) want=$((want + 1)) ;; esac; done
    : > "$log" # exists before the first grep below, whoever runs first
    # no background retrain unless a test asks for one (--retrain-after N later on the line wins): the TELLs
    # of the protocol tests must not swap the head under their checks
    "$BIN" serve --device cpu --model "$MODEL" --head "$W/head" --retrain-after 0 "$@" 2> "$log" &
    SERVER=$!
    for _ in $(seq 1 300); do
        [ "$(grep -c "listening on" "$log")" -ge "$want" ] && return 0
        kill -0 "$SERVER" 2> /dev/null || { cat "$log"; return 1; }
        sleep 0.1
    done
    cat "$log"
    return 1
}

log_clean() { # log_clean LOG...: no sanitizer report (ASan/UBSan/LSan builds) in the server's logs
    ! grep -h -A5 -E "Sanitizer|runtime error:" "$@"
}

# From /proc, so that a minimal Debian without procps runs the tests too:
children_of() { # children_of PID: the PIDs whose parent is PID
    local f
    for f in /proc/[0-9]*/stat; do
        awk -v p="$1" '{ sub(/^.*\) /, ""); if ($2 == p) { split(FILENAME, a, "/"); print a[3] } }' "$f" 2> /dev/null
    done
}
procs_matching() { # procs_matching TEXT: PIDs whose command line contains TEXT
    local f
    for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2> /dev/null | grep -qF -- "$1" && basename "$(dirname "$f")"; done
}
proc_user() { id -nu "$(awk '/^Uid:/ { print $2 }' /proc/"$1"/status)"; } # proc_user PID: its real user's name
