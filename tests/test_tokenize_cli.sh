#!/usr/bin/env bash
# Contract tests of `tbert tokenize` (issue 3): one line of ids per input line, [CLS]/[SEP] included,
# truncated to --max-len, in input order; LF ends a line, CR is text; --threads N gives the same bytes as 1;
# errors are one line on stderr with exit 2. Needs MiniLM's vocab.txt (77 without it).
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
CACHE=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
VOCAB=$CACHE/models/minilm/vocab.txt
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_external "$VOCAB" || tl_skip_external "$VOCAB not found (models/fetch.sh minilm)"
tl_require_fixture "$TESTS/data/tokenizer/sms_ids.txt"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
check() { # name expected actual
    if [ "$2" == "$3" ]; then echo "ok   $1"; else echo "FAIL $1"; echo "  expected: $(printf %q "$2")"; echo "  got     : $(printf %q "$3")"; fails=$((fails + 1)); fi
}
tok() { "$BIN" tokenize --vocab "$VOCAB" "$@"; }

check "special literal" "101 7592 101 2088 102" "$(printf 'hello [CLS] world\n' | tok)"
check "CR inside a line is text" "101 1037 1038 102" "$(printf 'a\rb\n' | tok)"
check "CRLF: the CR is whitespace" "101 1037 102
101 1038 102" "$(printf 'a\r\nb\r\n' | tok)"
check "empty lines" "101 102
101 102
101 1060 102" "$(printf '\n\nx\n' | tok)"
check "last line without LF" "101 1060 102" "$(printf 'x' | tok)"
check "no input, no output" "0" "$(printf '' | tok | wc -c)"
check "invalid UTF-8 (caf\\xe9 au)" "101 24689 8740 102" "$(printf 'caf\xe9 au\n' | tok)"
check "--max-len 4" "101 1996 4248 102" "$(printf 'the quick brown fox\n' | tok --max-len 4)"
check "--max-len 2" "101 102" "$(printf 'the quick brown fox\n' | tok --max-len 2)"
check "--model DIR" "$(printf 'Héllo World\n' | tok)" "$(printf 'Héllo World\n' | "$BIN" tokenize --model "$CACHE/models/minilm")"

# the SMS corpus: the CLI agrees with HF's ids (truncated to 128) and --threads 2 gives the same bytes
SMS=${TBERT_SHARED_DATA:-$TESTS/../../shared/data}/sms/SMSSpamCollection
if [ -f "$SMS" ]; then
    cut -f2- "$SMS" > "$TMP/sms.txt"
    awk -F'\t' '!/^#/ { n = split($2, a, " "); if (n > 128) { s = a[1]; for (i = 2; i <= 127; i++) s = s " " a[i]; print s " 102" } else print $2 }' \
        "$TESTS/data/tokenizer/sms_ids.txt" > "$TMP/want.txt"
    tok --threads 1 < "$TMP/sms.txt" > "$TMP/t1.txt"
    tok --threads 2 < "$TMP/sms.txt" > "$TMP/t2.txt"
    check "SMS ids == HF (max_len 128)" "same" "$(cmp -s "$TMP/want.txt" "$TMP/t1.txt" && echo same || diff "$TMP/want.txt" "$TMP/t1.txt" | head -4)"
    check "--threads 2 == --threads 1" "same" "$(cmp -s "$TMP/t1.txt" "$TMP/t2.txt" && echo same || echo differ)"
    # more than one 4 MiB read chunk: order and line boundaries across chunks
    for i in 1 2 3 4 5 6 7 8 9 10; do cat "$TMP/sms.txt"; done > "$TMP/sms10.txt"
    for i in 1 2 3 4 5 6 7 8 9 10; do cat "$TMP/want.txt"; done > "$TMP/want10.txt"
    tok --threads 2 < "$TMP/sms10.txt" > "$TMP/t10.txt"
    check "10x SMS across read chunks" "same" "$(cmp -s "$TMP/want10.txt" "$TMP/t10.txt" && echo same || echo differ)"
else
    tl_skip_part "$SMS not found: the corpus checks"
fi

# errors: exit 2, exactly one line on stderr
"$BIN" tokenize --vocab "$VOCAB" --bogus < /dev/null > "$TMP/out" 2> "$TMP/err"; rc=$?
check "unknown option exit 2" "2 1" "$rc $(wc -l < "$TMP/err")"
"$BIN" tokenize --vocab "$TMP/missing/vocab.txt" < /dev/null > "$TMP/out" 2> "$TMP/err"; rc=$?
check "missing vocab exit 2, one line" "2 1" "$rc $(wc -l < "$TMP/err")"
check "missing vocab message names the file" "1" "$(grep -c "$TMP/missing/vocab.txt" "$TMP/err")"
"$BIN" tokenize --vocab "$VOCAB" --max-len 1 < /dev/null > "$TMP/out" 2> "$TMP/err"; rc=$?
check "--max-len 1 exit 2" "2 1" "$rc $(wc -l < "$TMP/err")"
"$BIN" tokenize --vocab "$VOCAB" --threads 0 < /dev/null > "$TMP/out" 2> "$TMP/err"; rc=$?
check "--threads 0 exit 2" "2 1" "$rc $(wc -l < "$TMP/err")"
"$BIN" tokenize --model "$TMP/nomodel" < /dev/null > "$TMP/out" 2> "$TMP/err"; rc=$?
check "missing model folder exit 2" "2 1" "$rc $(wc -l < "$TMP/err")"
yes "hello world" | head -n 200000 > "$TMP/many.txt"
tok < "$TMP/many.txt" 2> "$TMP/err" | head -n 1 > /dev/null; rc=${PIPESTATUS[0]}
check "closed stdout: exit 2, one line (no SIGPIPE death)" "2 1" "$rc $(wc -l < "$TMP/err")"
"$BIN" tokenize --help > "$TMP/out" 2>&1; rc=$?
check "--help exit 0" "0 yes" "$rc $(grep -q -- '--max-len' "$TMP/out" && echo yes)"

[ "$fails" -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all tokenize CLI checks passed"
tl_exit 0
