#!/usr/bin/env bash
# Fuzzing (issue 8): builds the libFuzzer targets of tests/fuzz/ with clang + ASan + UBSan and runs each.
#
# usage: scripts/fuzz.sh [SECONDS] [--targets a,b,...] [--build DIR] [--jobs N]
#        scripts/fuzz.sh --seeds      refresh the committed seed corpora tests/fuzz/corpus/ from the fixtures
# SECONDS per target (default 60). The working corpus grows in BUILD/fuzz-corpus/<target> (seeded from
# tests/fuzz/corpus/<target>); crashing inputs land in BUILD/fuzz-artifacts/<target>/. A summary table
# (target, seconds, executions, corpus size, findings) is printed and written to BUILD/fuzz-summary.md.
# Copy a crashing input into tests/fuzz/regressions/<target>/ so ctest (test_fuzz_regressions) replays it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER=60
BUILD=${TBERT_FUZZ_BUILD:-$ROOT/build-fuzz}
TARGETS="tokenizer safetensors config vocab table message html mbox recipe checkpoint threshold shard spamd"
SEEDS=0
JOBS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) SEEDS=1 ;;
        --targets) TARGETS=${2//,/ }; shift ;;
        --build) BUILD=$2; shift ;;
        --jobs) JOBS=$2; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        [0-9]*) SECONDS_PER=$1 ;;
        *) echo "fuzz.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
command -v clang > /dev/null || { echo "fuzz.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER=clang -DTBERT_FUZZ=ON -DTBERT_SANITIZE=ON -DTBERT_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log" >&2; exit 2; }
cmake --build "$BUILD" -j"$JOBS" --target fuzzers fuzz_make_seeds > "$BUILD.build.log" 2>&1 || { tail -30 "$BUILD.build.log" >&2; exit 2; }

make_seeds() { # refresh tests/fuzz/corpus from fixtures (small files only)
    local C=$ROOT/tests/fuzz/corpus T=$ROOT/tests
    rm -rf "$C" && mkdir -p "$C"
    "$BUILD/tests/fuzz/fuzz_make_seeds" "$C"
    mkdir -p "$C"/{tokenizer,config,vocab,table,message,html,mbox}
    # tokenizer: two option bytes + a text of the golden edge cases (every 8th case)
    local i=0 b64
    sed -n 's/.*"b64": "\([^"]*\)".*/\1/p' "$T/data/tokenizer/edge_cases.jsonl" | awk 'NR % 8 == 1' | while read -r b64; do
        { printf "\\x$(printf %02x $((i * 7 % 32)))\\x$(printf %02x $((i * 13 % 256)))"; printf %s "$b64" | base64 -d; } > "$C/tokenizer/edge_$i"
        i=$((i + 1))
    done
    for d in "$T"/models/*/; do
        n=$(basename "$d")
        cp "$d/config.json" "$C/config/$n.json"
        { cat "$d/tokenizer_config.json" 2>/dev/null || true; printf '\n--VOCAB--\n'; head -n 200 "$d/vocab.txt"; } > "$C/vocab/$n"
    done
    head -n 120 "$T/data/tokenizer/cased_vocab.txt" > "$C/vocab/cased_vocab_only"
    # tables: option byte (format/header/columns) + a table
    { printf '\x01'; head -c 2000 "$T/data/head/tiny.tsv"; } > "$C/table/tiny_tsv"
    printf '\x02label,text\nham,"a ""quoted"", text"\nspam,"multi\nline"\n' > "$C/table/csv_quotes"
    printf '\x03{"text": "hello \\u00e9", "label": "ham"}\n{"text": "win", "label": "spam"}\n' > "$C/table/jsonl"
    printf '\x04Type\tMessage\nham\t"starts with a quote\nspam\tfree\n' > "$C/table/tsv_header"
    for f in "$T"/data/mail/*.eml; do cp "$f" "$C/message/"; done
    cp "$T/data/mail/three.mbox" "$C/mbox/"
    cp "$T/data/mail/html_only.eml" "$C/mbox/"
    printf '<html><head><style>p{}</style><script>x()</script></head><body><p>Hello&nbsp;<b>world</b></p><div>a<br>b</div>&#x1F600;</body></html>' > "$C/html/page.html"
    printf '<p>unclosed <table><tr><td>cell</td><td>&amp;' > "$C/html/broken.html"
    # spamd: request heads (and the same bytes as a message through serve's header rewrite)
    mkdir -p "$C/spamd"
    printf 'CHECK SPAMC/1.5\r\nContent-length: 40\r\nUser: bob\r\n\r\nFrom: a@b\r\nX-Spam-Flag: YES\r\n\r\nhello there\r\n' > "$C/spamd/check"
    printf 'TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: 5\r\n\r\nhello' > "$C/spamd/tell"
    printf 'PING SPAMC/1.5\r\n\r\n' > "$C/spamd/ping"
    printf 'PROCESS SPAMC/1.2\nCompress: zlib\nContent-length: 0\n\n' > "$C/spamd/process_lf"
    printf 'X-Spam-Status: No,\n\tscore=1\nSubject: s\n\nbody\n' > "$C/spamd/message"
    echo "seed corpora written to tests/fuzz/corpus ($(find "$C" -type f | wc -l) files, $(du -sh "$C" | cut -f1))"
}
if [ "$SEEDS" = 1 ]; then make_seeds; exit 0; fi

dict_for() {
    case "$1" in
        config|vocab|safetensors|recipe|checkpoint) echo "-dict=$ROOT/tests/fuzz/json.dict" ;;
        message|mbox|html) echo "-dict=$ROOT/tests/fuzz/mime.dict" ;;
        table) echo "-dict=$ROOT/tests/fuzz/json.dict" ;;
        *) echo "" ;;
    esac
}

export TBERT_TESTS_DIR=$ROOT/tests
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
SUMMARY=$BUILD/fuzz-summary.md
{
    echo "| target | seconds | executions | exec/s | corpus | findings |"
    echo "|---|---|---|---|---|---|"
} > "$SUMMARY"
found=0
for t in $TARGETS; do
    exe=$BUILD/tests/fuzz/fuzz_$t
    [ -x "$exe" ] || { echo "fuzz.sh: $exe was not built" >&2; exit 2; }
    work=$BUILD/fuzz-corpus/$t
    art=$BUILD/fuzz-artifacts/$t
    mkdir -p "$work" "$art"
    seeds=$ROOT/tests/fuzz/corpus/$t
    [ -d "$seeds" ] || seeds=
    log=$BUILD/fuzz-$t.log
    # shellcheck disable=SC2046
    "$exe" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        $(dict_for "$t") -artifact_prefix="$art/" "$work" ${seeds:+"$seeds"} > "$log" 2>&1 &
    pid=$!
    wait "$pid" || true
    rm -rf "/dev/shm/tbert_fuzz_vocab_$pid" "/tmp/tbert_fuzz_vocab_$pid" # the vocab target's folder (libFuzzer skips atexit)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    # a crash stops the run before the final stats: take the last status line instead
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    findings=$(find "$art" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    corpus=$(find "$work" -type f | wc -l)
    echo "| $t | $SECONDS_PER | ${execs:-?} | ${rate:-?} | $corpus | $findings |" >> "$SUMMARY"
    echo "fuzz_$t: ${execs:-?} executions, corpus $corpus, findings $findings (log $log)"
    if [ "$findings" -gt 0 ]; then
        found=1
        find "$art" -type f | sed 's/^/    /'
        grep -m3 -E 'ERROR: |runtime error|fuzz invariant' "$log" | sed 's/^/    /' || true
    fi
done
cat "$SUMMARY"
[ "$found" = 0 ] || { echo "fuzz.sh: findings above; copy each input into tests/fuzz/regressions/<target>/ once fixed" >&2; exit 1; }
