#!/usr/bin/env bash
# tbert embed end to end: one row per input line (empty lines included), input order, .npy loads in numpy
# and holds exactly the f32 output, --data tables, errors exit 2 with one line; MiniLM on 64 SMS lines vs
# the transformers float64 reference (tokenizer + encoder) when the model and the corpus are present.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/bert_tiny_shape
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_python numpy
tl_require_fixture "$MODEL/model.safetensors" "$TESTS/data/encoder/minilm_sms_mean.json" "$TESTS/data/encoder/minilm_sms_mean.f64"

# 7 lines: empty lines (also first and last), a CRLF line, a very long line, no final newline
{
    printf '\n'
    printf 'Free entry in 2 a wkly comp to win FA Cup final tkts\n'
    printf '\n'
    printf 'Ok lar... Joking wif u oni...\r\n'
    for i in $(seq 1 200); do printf 'word%d ' "$i"; done
    printf '\n'
    printf 'Even my brother is not like to speak with me.\n'
    printf 'no newline at the end'
} > "$TMP/in.txt"
NLINES=7

"$BIN" embed --model "$MODEL" --quiet --out "$TMP/a.npy" < "$TMP/in.txt" || fail "embed npy exit $?"
"$BIN" embed --model "$MODEL" --quiet --format f32 < "$TMP/in.txt" > "$TMP/a.f32" || fail "embed f32 exit $?"
"$BIN" embed --model "$MODEL" --quiet --pool flatten --max-len 16 --format f32 < "$TMP/in.txt" > "$TMP/flat.f32" ||
    fail "embed flatten exit $?"
"$BIN" embed --model "$MODEL" --quiet --pool cls --normalize --threads 1 --batch 2 --out "$TMP/cls.npy" < "$TMP/in.txt" ||
    fail "embed cls exit $?"
# the same texts one per call, and in reverse order, to check input order
mapfile -t LINES < <(cat "$TMP/in.txt"; echo)
for i in $(seq 0 $((NLINES - 1))); do
    printf '%s\n' "${LINES[$i]}" | "$BIN" embed --model "$MODEL" --quiet --format f32 >> "$TMP/single.f32" ||
        fail "embed single line $i"
done
printf '%s\n' "${LINES[@]:0:$NLINES}" | tac > "$TMP/rev.txt"
"$BIN" embed --model "$MODEL" --quiet --format f32 < "$TMP/rev.txt" > "$TMP/rev.f32" || fail "embed reversed"
# a TSV table with a header and the texts in column 2 (no quoting in TSV)
{
    printf 'label\ttext\n'
    for i in $(seq 0 $((NLINES - 1))); do printf 'x\t%s\n' "${LINES[$i]%$'\r'}"; done
} > "$TMP/t.tsv"
sed 's/\r$//' "$TMP/in.txt" > "$TMP/in_nocr.txt"
"$BIN" embed --model "$MODEL" --quiet --format f32 < "$TMP/in_nocr.txt" > "$TMP/nocr.f32" || fail "embed nocr"
"$BIN" embed --model "$MODEL" --quiet --format f32 --data "$TMP/t.tsv" --header yes --text-col text > "$TMP/tsv.f32" ||
    fail "embed --data exit $?"

# a table of texts only, and JSONL (no label column by default)
printf 'hello\nworld\n' > "$TMP/texts.tsv"
printf '{"text": "hello"}\n{"text": "world", "label": "x"}\n' > "$TMP/t.jsonl"
"$BIN" embed --model "$MODEL" --quiet --format f32 --data "$TMP/texts.tsv" --label-col none > "$TMP/texts.f32" ||
    fail "embed texts-only table"
"$BIN" embed --model "$MODEL" --quiet --format f32 --data "$TMP/t.jsonl" > "$TMP/jsonl.f32" || fail "embed jsonl"
printf 'hello\nworld\n' | "$BIN" embed --model "$MODEL" --quiet --format f32 > "$TMP/hw.f32" || fail "embed hello world"
cmp -s "$TMP/texts.f32" "$TMP/hw.f32" || fail "texts-only table differs from stdin"
cmp -s "$TMP/jsonl.f32" "$TMP/hw.f32" || fail "JSONL table differs from stdin"

"$PY" - "$TMP" "$NLINES" <<'EOF' || fail "python checks"
import sys, numpy as np
tmp, n = sys.argv[1], int(sys.argv[2])
H, ok = 128, True
def check(cond, msg):
    global ok
    if not cond:
        print("FAIL:", msg, file=sys.stderr); ok = False
a = np.load(f"{tmp}/a.npy")
check(a.shape == (n, H) and a.dtype == np.float32, f"npy shape {a.shape} {a.dtype}")
check(b"'fortran_order': False" in open(f"{tmp}/a.npy", "rb").read(128), "npy not C order")
raw = open(f"{tmp}/a.npy", "rb").read()
check(raw[:8] == b"\x93NUMPY\x01\x00" and (10 + int.from_bytes(raw[8:10], "little")) % 64 == 0, "npy v1.0 header")
f = np.fromfile(f"{tmp}/a.f32", "<f4")
check(f.size == n * H and np.array_equal(f.reshape(n, H), a), "f32 output differs from npy")
check(np.all(np.isfinite(a)), "non-finite features")
# empty lines are [CLS][SEP] rows: rows 0 and 2 are the same and differ from the others. Same up to float32
# rounding, not bit for bit: the CPU encoder multiplies a thread's sequences in one GEMM, and OpenBLAS's
# micro-kernels (e.g. OPENBLAS_CORETYPE=Haswell) sum a row differently by its position in the block.
# atol 1e-5, rtol 1e-5.
check(np.allclose(a[0], a[2], rtol=1e-5, atol=1e-5) and not np.allclose(a[0], a[1]), "empty lines")
flat = np.fromfile(f"{tmp}/flat.f32", "<f4").reshape(n, 16, H)
check(np.all(flat[0, 2:] == 0) and np.any(flat[0, :2] != 0), "flatten: zeros beyond [CLS][SEP]")
check(np.all(flat[4] != 0), "flatten: the long line fills max_len")
cls = np.load(f"{tmp}/cls.npy")
check(cls.shape == (n, H) and np.allclose(np.linalg.norm(cls, axis=1), 1, atol=1e-5), "cls --normalize norms")
single = np.fromfile(f"{tmp}/single.f32", "<f4").reshape(n, H)
check(np.allclose(single, a, atol=1e-5, rtol=1e-5), f"batch vs one-by-one: {np.abs(single - a).max()}")
rev = np.fromfile(f"{tmp}/rev.f32", "<f4").reshape(n, H)
check(np.allclose(rev[::-1], a, atol=1e-5, rtol=1e-5), "reversed input does not give reversed rows")
tsv = np.fromfile(f"{tmp}/tsv.f32", "<f4")
nocr = np.fromfile(f"{tmp}/nocr.f32", "<f4")
check(tsv.size == n * H and np.allclose(tsv, nocr, atol=1e-5, rtol=1e-5), "--data TSV differs from stdin")
sys.exit(0 if ok else 1)
EOF

# empty input: a valid (0, H) matrix
"$BIN" embed --model "$MODEL" --quiet --out "$TMP/empty.npy" < /dev/null || fail "empty input exit $?"
"$PY" -c "import numpy as np,sys; a=np.load(sys.argv[1]); sys.exit(0 if a.shape==(0,128) else 1)" "$TMP/empty.npy" ||
    fail "empty input shape"

# errors: exit 2, one line on stderr, and no partial --out file
expect_error() {
    local what=$1; shift
    "$@" > "$TMP/err.out" 2> "$TMP/err.txt" < "$TMP/in.txt"
    local rc=$?
    [ "$rc" -eq 2 ] || fail "$what: exit $rc, expected 2"
    [ "$(wc -l < "$TMP/err.txt")" -eq 1 ] || fail "$what: stderr is not one line: $(cat "$TMP/err.txt")"
}
expect_error "bad --pool" "$BIN" embed --model "$MODEL" --pool max
expect_error "bad --format" "$BIN" embed --model "$MODEL" --format csv
expect_error "missing model" "$BIN" embed --model "$TMP/nope"
expect_error "no pooler" "$BIN" embed --model "$TESTS/models/bf16_nopooler" --pool pooler --quiet
expect_error "--max-len too big" "$BIN" embed --model "$MODEL" --max-len 65 --quiet
expect_error "--layers too many" "$BIN" embed --model "$MODEL" --layers 3 --quiet
expect_error "bad --threads" "$BIN" embed --model "$MODEL" --threads 0
expect_error "missing --data" "$BIN" embed --model "$MODEL" --data "$TMP/none.tsv" --quiet
expect_error "unknown option" "$BIN" embed --model "$MODEL" --bogus
expect_error "tf32 on cpu" "$BIN" embed --model "$MODEL" --device cpu --precision tf32 --quiet
if ! "$BIN" --version | grep -Eq "CUDA backend: .*(device\(s\)|EMULATED)"; then
    expect_error "cuda without CUDA" "$BIN" embed --model "$MODEL" --device cuda --quiet --out "$TMP/x.npy"
    [ -e "$TMP/x.npy" ] && fail "a failed run left an --out file"
fi
"$BIN" embed --help | grep -q -- "--pool" || fail "--help"

# MiniLM end to end (tokenizer + encoder) on 64 SMS lines vs transformers, when model and corpus exist
SMS=${TBERT_SHARED_DATA:-$TESTS/../../shared/data}/sms/SMSSpamCollection
MINILM=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}/models/minilm
if [ -f "$SMS" ] && [ -f "$MINILM/model.safetensors" ]; then
    "$PY" - "$SMS" "$TESTS/data/encoder/minilm_sms_mean" "$BIN" <<'EOF' || fail "MiniLM SMS vs transformers"
import json, subprocess, sys, numpy as np
sms, base, binary = sys.argv[1:4]
g = json.load(open(base + ".json"))
data = np.fromfile(base + ".f64", "<f8")
a = g["arrays"]["mean"]
ref = data[a["offset"]:a["offset"] + 64 * 384].reshape(64, 384)
lines = open(sms, "rb").read().split(b"\n")
texts = [lines[i - 1].split(b"\t", 1)[1] for i in g["lines"]]
out = subprocess.run([binary, "embed", "--quiet", "--format", "f32", "--max-len", "128"],
                     input=b"\n".join(texts) + b"\n", capture_output=True, check=True)
x = np.frombuffer(out.stdout, "<f4").reshape(-1, 384)
bad = np.abs(x - ref) > 1e-4 + 1e-4 * np.abs(ref)
print(f"MiniLM SMS mean: max |diff| {np.abs(x - ref).max():.3g}, "
      f"||diff||/||ref|| {np.linalg.norm(x - ref) / np.linalg.norm(ref):.3g}, {bad.sum()} outside 1e-4+1e-4|ref|",
      file=sys.stderr)
sys.exit(1 if bad.any() or x.shape != (64, 384) else 0)
EOF
else
    tl_skip_part "MiniLM ($MINILM) or the SMS corpus ($SMS) absent: the end-to-end MiniLM check"
fi

[ "$fails" -eq 0 ] || { echo "$fails failure(s)" >&2; exit 1; }
echo "test_embed_cli: ok" >&2
tl_exit 0
