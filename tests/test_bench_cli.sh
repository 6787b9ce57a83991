#!/usr/bin/env bash
# tbert bench: synthetic (random weights for a config.json) and corpus modes report the work they did
# (sequences, tokens, FLOPs consistent with the workload), --json is one valid object, errors exit 2.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_python json
tl_require_fixture "$TESTS/models/deep4_f32/config.json"

CFG=$TESTS/models/deep4_f32/config.json
"$BIN" bench --random-weights "$CFG" --device cpu --batch 5 --seq-len 16 --iters 3 --warmup 1 --no-sgemm --json \
    > "$TMP/syn.json" 2> "$TMP/syn.err" || fail "synthetic bench exit $?"
printf 'one\ntwo words\n\nthree little words here\nfive\n' | awk '{print "x\t" $0}' > "$TMP/t.tsv"
"$BIN" bench --model "$TESTS/models/deep4_f32" --device cpu --data "$TMP/t.tsv" --label-col 1 --batch 2 --max-len 8 \
    --pool flatten --fixed-padding --no-sgemm --json > "$TMP/corpus.json" 2> "$TMP/corpus.err" &&
    fail "--label-col is not a bench option but was accepted"
"$BIN" bench --model "$TESTS/models/deep4_f32" --device cpu --data "$TMP/t.tsv" --batch 2 --max-len 8 \
    --pool flatten --fixed-padding --iters 2 --no-sgemm --json > "$TMP/corpus.json" 2> "$TMP/corpus.err" ||
    fail "corpus bench exit $? ($(cat "$TMP/corpus.err"))"

"$PY" - "$TMP" <<'EOF' || fail "JSON checks"
import json, sys
tmp = sys.argv[1]
ok = True
def check(c, m):
    global ok
    if not c:
        print("FAIL:", m, file=sys.stderr); ok = False
s = json.load(open(f"{tmp}/syn.json"))
# deep4_f32: L4 H32 A2 I64; 3 timed batches of 5 sequences of 16 tokens
check(s["sequences"] == 15 and s["batches"] == 3 and s["tokens"] == 240, f"synthetic counts {s}")
per_seq = 4 * (2 * 16 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 16 * 16 * 32)
check(abs(s["gflop"] * 1e9 - 15 * per_seq) <= 1e-6 * 15 * per_seq, f"synthetic FLOPs {s['gflop']}")
check(s["sequences_per_s"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mb"] > 0, "rates")
check(s["device"] == "cpu" and s["threads"] >= 1 and s["mode"] == "synthetic", "synthetic fields")
c = json.load(open(f"{tmp}/corpus.json"))
# 5 texts (one empty) x 2 passes, batches of 2 -> 3 batches per pass; fixed padding to 8 tokens
check(c["sequences"] == 10 and c["batches"] == 6, f"corpus counts {c}")
check(c["padded_tokens"] == 6 * 2 * 8 - 2 * 8, f"fixed padding {c['padded_tokens']}")
check(c["mode"] == "corpus" and c["pool"] == "flatten" and c["padding"] == "fixed", "corpus fields")
check(c["tokens"] < c["padded_tokens"] and c["tokens"] >= 2 * 10, "real tokens")
sys.exit(0 if ok else 1)
EOF

expect_error() {
    local what=$1; shift
    "$@" > /dev/null 2> "$TMP/err.txt"
    local rc=$?
    [ "$rc" -eq 2 ] || fail "$what: exit $rc, expected 2"
    [ "$(wc -l < "$TMP/err.txt")" -le 2 ] || fail "$what: stderr: $(cat "$TMP/err.txt")"
}
expect_error "missing config" "$BIN" bench --random-weights "$TMP/none.json" --device cpu
expect_error "seq-len beyond positions" "$BIN" bench --random-weights "$CFG" --device cpu --seq-len 37
expect_error "model and random" "$BIN" bench --random-weights "$CFG" --model "$TESTS/models/deep4_f32"
expect_error "data with random" "$BIN" bench --random-weights "$CFG" --data "$TMP/t.tsv"
expect_error "no pooler" "$BIN" bench --model "$TESTS/models/deep4_f32" --device cpu --pool pooler --seq-len 8
expect_error "bad pool" "$BIN" bench --pool max
expect_error "bad batch" "$BIN" bench --batch 0
"$BIN" bench --help | grep -q -- "--random-weights" || fail "--help"

[ "$fails" -eq 0 ] || { echo "$fails failure(s)" >&2; exit 1; }
echo "test_bench_cli: ok" >&2
