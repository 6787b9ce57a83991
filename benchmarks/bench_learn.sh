#!/usr/bin/env bash
# Learning one message (issue 14 Target: <= 5 s on 2 cores into a head trained on the 6,046-message corpus):
# trains a head on the whole SpamAssassin corpus (ham: easy_ham, easy_ham_2, hard_ham; spam: spam, spam_2),
# then times `tbert learn --spam` of one new message (a hard_ham message with one line added, so that its hash
# is new): the warm start (the default: src/learn_warm.c) and the full retrain (--full) side by side, the
# warm --unlearn and a --rollback; beside it, in the same run, bogofilter trained on the same corpus
# (bogofilter -n/-s) registering the same message (-s). Every step prints wall seconds and CPU seconds
# (user + sys, from /usr/bin/time: on a shared machine the CPU seconds are the steadier number), and the
# learned message's score before and after (tbert score) with the head's out-of-fold operating point.
#
# usage: benchmarks/bench_learn.sh TBERT [MODEL] [TRAIN ARGS...]
#   MODEL        default minilm
#   TRAIN ARGS   default: --layers 1 --max-len 64 --windows 1 (MiniLM's width, one layer: the first encoding
#                of 6,046 messages takes minutes instead of hours on 2 busy cores; the learn step encodes one
#                message, and what it costs beyond that does not depend on the encoder's depth)
# Needs bogofilter, /usr/bin/time and the shared corpus (../shared/data or $TBERT_SHARED_DATA). TBERT_CACHE is
# a private temp folder unless BENCH_CACHE names one to reuse (the store then keeps the corpus encoded).
set -euo pipefail
TBERT=$(realpath "${1:?usage: bench_learn.sh TBERT [MODEL] [TRAIN ARGS...]}")
MODEL=${2:-minilm}
shift $(($# >= 2 ? 2 : 1))
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--layers 1 --max-len 64 --windows 1)
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${TBERT_SHARED_DATA:-$HERE/../../shared/data}
C=$DATA/mail/spamassassin
[ -d "$C" ] || { echo "bench_learn: corpus not found at $C" >&2; exit 2; }
command -v bogofilter > /dev/null || { echo "bench_learn: bogofilter not installed; refusing to run without the peer" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_learn: /usr/bin/time not installed (Debian: time)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/tbert_bench_learn_XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export TBERT_CACHE=${BENCH_CACHE:-$WORK/cache}
[ "$MODEL" = minilm ] && [ ! -d "$TBERT_CACHE/models/minilm" ] && [ -d "$HOME/.cache/tbert/models/minilm" ] &&
    mkdir -p "$TBERT_CACHE/models" && ln -sfn "$HOME/.cache/tbert/models/minilm" "$TBERT_CACHE/models/minilm"
MSG=$WORK/new.eml
first=$(find "$C/hard_ham" -maxdepth 1 -type f | LC_ALL=C sort | head -1)
{ cat "$first"; printf '\nbench_learn %s\n' "$(date +%s%N)"; } > "$MSG"
H=$WORK/head
echo "# bench_learn: $(date -u '+%a %b %d %Y %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); model $MODEL ${ARGS[*]}"
echo
echo "| step | wall s | CPU s (user+sys) | peak RSS MiB | result |"
echo "|---|---|---|---|---|"
timed() { # timed NAME RESULT-COMMAND -- CMD...: one table row; RESULT-COMMAND's output goes in the last column
    local name=$1 res=$2
    shift 3
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" > "$WORK/out" 2> "$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    read -r wall user sys rss < "$WORK/time"
    awk -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v x="$(eval "$res")" \
        'BEGIN { printf "| %s | %.2f | %.2f | %.0f | %s |\n", n, w, u + s, r / 1024, x }'
}
score() { "$TBERT" score --device cpu --quiet --model "$MODEL" --head "$1" "$MSG" 2> /dev/null | sed -n 's/.*"score":\([0-9.e-]*\).*/\1/p'; }
op() { # the head's promise: out-of-fold false positives / ham, recall, threshold
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); o=m['operating_point']; print('cut %.4f, out-of-fold FP %d/%d, recall %.4f, ROC-AUC %.5f' % (o['threshold'], o['false_positives'], o['n_negative'], o['recall'], m['val']['roc_auc']))" "$1/metrics.json"
}
TRAIN=("$TBERT" train --device cpu --model "$MODEL" "${ARGS[@]}" --ham "$C/easy_ham" "$C/easy_ham_2" "$C/hard_ham"
    --spam "$C/spam" "$C/spam_2" --quiet)
timed "tbert train (first: encodes what the store lacks)" 'op "$H"' -- "${TRAIN[@]}" --out "$H"
timed "tbert train again (all rows from the store)" 'echo "-"' -- "${TRAIN[@]}" --out "$WORK/head2"
cp -a "$H" "$WORK/head_full"
s0=$(score "$H")
timed "**tbert learn --spam (warm, default)**" 'echo "score $s0 -> $(score "$H"); $(op "$H")"' -- \
    "$TBERT" learn --device cpu --quiet --head "$H" --spam "$MSG"
timed "tbert learn --spam --unlearn (warm)" 'echo "score -> $(score "$H"); $(op "$H")"' -- \
    "$TBERT" learn --device cpu --quiet --head "$H" --spam --unlearn "$MSG"
timed "tbert learn --rollback" 'echo "score -> $(score "$H")"' -- "$TBERT" learn --head "$H" --rollback
timed "tbert learn --spam --full (retrain from scratch)" 'echo "score $s0 -> $(score "$WORK/head_full"); $(op "$WORK/head_full")"' -- \
    "$TBERT" learn --device cpu --quiet --head "$WORK/head_full" --full --spam "$MSG"

# the peer: bogofilter trained on the same corpus, then one message registered
B=$WORK/bogo
mkdir -p "$B"
bogotrain() {
    for d in easy_ham easy_ham_2 hard_ham; do find "$C/$d" -maxdepth 1 -type f | LC_ALL=C sort; done | bogofilter -d "$B" -n -b
    for d in spam spam_2; do find "$C/$d" -maxdepth 1 -type f | LC_ALL=C sort; done | bogofilter -d "$B" -s -b
}
export -f bogotrain
export B C
timed "bogofilter -n/-s on the corpus (peer)" 'echo "-"' -- bash -c bogotrain
spamicity() { { bogofilter -d "$B" -v < "$MSG" || true; } | sed -n 's/.*spamicity=\([0-9.]*\).*/\1/p'; } # exit 1 = ham
b0=$(spamicity)
timed "bogofilter -s, one message (peer)" 'echo "spamicity $b0 -> $(spamicity)"' -- bash -c 'bogofilter -d "$B" -s < "$0"' "$MSG"
