#!/usr/bin/env bash
# Learning one message (issue 14 Target: <= 5 s on 2 cores into a head trained on the 6,046-message corpus):
# trains a head on the whole SpamAssassin corpus (ham: easy_ham, easy_ham_2, hard_ham; spam: spam, spam_2),
# then times `tbert learn --spam` of one new message (a hard_ham message with one line added, so that its hash
# is new), its --unlearn and a --rollback; beside it, in the same run, bogofilter trained on the same corpus
# (bogofilter -n/-s) registering the same message (-s), and a plain `tbert train` of the same set from the store.
#
# usage: benchmarks/bench_learn.sh TBERT [MODEL] [TRAIN ARGS...]
#   MODEL        default minilm
#   TRAIN ARGS   default: --layers 1 --max-len 64 --windows 1 (MiniLM's width, one layer: the first encoding
#                of 6,046 messages takes minutes instead of hours on 2 busy cores; the learn step encodes one
#                message, and what it costs beyond that does not depend on the encoder's depth)
# Needs bogofilter and the shared corpus (../shared/data or $TBERT_SHARED_DATA). TBERT_CACHE is a private
# temp folder unless BENCH_CACHE names one to reuse (the store then keeps the corpus encoded across runs).
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
WORK=$(mktemp -d /tmp/tbert_bench_learn_XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export TBERT_CACHE=${BENCH_CACHE:-$WORK/cache}
[ "$MODEL" = minilm ] && [ ! -d "$TBERT_CACHE/models/minilm" ] && [ -d "$HOME/.cache/tbert/models/minilm" ] &&
    mkdir -p "$TBERT_CACHE/models" && ln -sfn "$HOME/.cache/tbert/models/minilm" "$TBERT_CACHE/models/minilm"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
MSG=$WORK/new.eml
first=$(find "$C/hard_ham" -maxdepth 1 -type f | LC_ALL=C sort | head -1)
{ cat "$first"; printf '\nbench_learn %s\n' "$(date +%s%N)"; } > "$MSG"
H=$WORK/head
echo "machine: $(nproc) cores, $(uname -m); $(date -u +%F); model $MODEL ${ARGS[*]}"

t=$(now)
"$TBERT" train --device cpu --model "$MODEL" "${ARGS[@]}" --ham "$C/easy_ham" "$C/easy_ham_2" "$C/hard_ham" \
    --spam "$C/spam" "$C/spam_2" --out "$H" --quiet 2> "$WORK/train.err" || { cat "$WORK/train.err"; exit 1; }
echo "train (first, encodes what the store lacks): $(since "$t") s"
t=$(now)
"$TBERT" train --device cpu --model "$MODEL" "${ARGS[@]}" --ham "$C/easy_ham" "$C/easy_ham_2" "$C/hard_ham" \
    --spam "$C/spam" "$C/spam_2" --out "$WORK/head2" --quiet 2> /dev/null
echo "train again (all rows from the store): $(since "$t") s"
for step in "--spam $MSG" "--spam --unlearn $MSG"; do
    t=$(now)
    # shellcheck disable=SC2086
    out=$("$TBERT" learn --device cpu --quiet --head "$H" $step 2> /dev/null)
    echo "tbert learn $step: $(since "$t") s  ($out)"
done
t=$(now)
"$TBERT" learn --head "$H" --rollback > /dev/null
echo "tbert learn --rollback: $(since "$t") s"

# the peer: bogofilter trained on the same corpus, then one message registered
B=$WORK/bogo
mkdir -p "$B"
t=$(now)
for d in easy_ham easy_ham_2 hard_ham; do find "$C/$d" -maxdepth 1 -type f | LC_ALL=C sort; done | bogofilter -d "$B" -n -b
for d in spam spam_2; do find "$C/$d" -maxdepth 1 -type f | LC_ALL=C sort; done | bogofilter -d "$B" -s -b
echo "bogofilter training on the corpus: $(since "$t") s"
t=$(now)
bogofilter -d "$B" -s < "$MSG"
echo "bogofilter -s (one message): $(since "$t") s"
