#!/usr/bin/env bash
# tbert info: on the committed small models its --json output agrees with config.json (read by Python's json),
# sha256sum of model.safetensors, the parameter count summed from the safetensors header, and vocab.txt's
# line count; on broken folders it prints one line naming the file and exits 2.
set -u
bin=${TBERT_BIN:?TBERT_BIN not set}
tests=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
py=${TBERT_PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || py=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
bad() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
TESTS=$tests
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_python json struct numpy safetensors.numpy

checked=0
for dir in "$tests"/models/*/; do
    dir=${dir%/}
    [ -f "$dir/model.safetensors" ] || continue
    "$bin" info --model "$dir" --json >"$work/info.json" 2>"$work/err" || { bad "$dir: exit $? ($(cat "$work/err"))"; continue; }
    sha=$(sha256sum "$dir/model.safetensors" | cut -d' ' -f1)
    "$py" - "$work/info.json" "$dir" "$sha" <<'PY' || bad "$dir: info --json disagrees (see above)"
import json, struct, sys
info = json.load(open(sys.argv[1]))
folder, sha = sys.argv[2], sys.argv[3]
cfg = json.load(open(folder + "/config.json"))
errors = []
for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "type_vocab_size", "pad_token_id"):
    if info["config"][k] != cfg[k]:
        errors.append(f"{k}: {info['config'][k]} != {cfg[k]}")
if abs(info["config"]["layer_norm_eps"] - cfg.get("layer_norm_eps", 1e-12)) > 1e-18:
    errors.append("layer_norm_eps")
if info["weights_sha256"] != sha:
    errors.append("sha256")
raw = open(folder + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
header.pop("__metadata__", None)
import re
prefix = "bert." if "bert.embeddings.word_embeddings.weight" in header else ""
layer_re = re.compile(r"encoder\.layer\.(\d+)\.(attention\.(self\.(query|key|value)|output\.(dense|LayerNorm))|intermediate\.dense|output\.(dense|LayerNorm))\.(weight|bias|gamma|beta)$")
def used(name):
    if not name.startswith(prefix):
        return False
    n = name[len(prefix):]
    if re.fullmatch(r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight|embeddings\.LayerNorm\.(weight|bias|gamma|beta)|pooler\.dense\.(weight|bias)", n):
        return True
    m = layer_re.fullmatch(n)
    return bool(m) and int(m.group(1)) < cfg["num_hidden_layers"]
params = 0
dtypes = {}
unused = []
for name, t in header.items():
    dtypes[t["dtype"]] = dtypes.get(t["dtype"], 0) + 1
    if not used(name):
        unused.append(name)
        continue
    size = 1
    for d in t["shape"]:
        size *= d
    params += size
if info["parameters"] != params:
    errors.append(f"parameters {info['parameters']} != {params}")
if info["unused_tensors"] != len(unused) or {u.split(" (")[0] for u in info["unused_listed"]} != set(unused[:16]) and len(unused) <= 16:
    errors.append(f"unused {info['unused_tensors']} {info['unused_listed']} != {unused}")
if info["tensor_dtypes"] != dtypes:
    errors.append(f"dtypes {info['tensor_dtypes']} != {dtypes}")
pooler = any(k.endswith("pooler.dense.weight") for k in header)
if info["pooler"] != pooler:
    errors.append("pooler")
lines = sum(1 for _ in open(folder + "/vocab.txt", encoding="utf-8"))
if info["tokenizer"]["vocab_size"] != lines:
    errors.append(f"vocab {info['tokenizer']['vocab_size']} != {lines}")
if errors:
    print(folder, errors, file=sys.stderr)
    sys.exit(1)
PY
    "$bin" info --model "$dir" >"$work/text" 2>&1 && grep -q "^sha256: *$sha" "$work/text" || bad "$dir: text output lacks the sha256"
    checked=$((checked + 1))
done
echo "checked tbert info on $checked committed models"

# a BertForSequenceClassification-style file (bert. prefix, classifier.* tensors): loads, lists them as unused
src0=$(ls -d "$tests"/models/*/ | head -n1)
if [ -n "$src0" ]; then
    cp -r "${src0%/}" "$work/cls"
    "$py" - "$work/cls/model.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
d = load_file(sys.argv[1])
d = {("bert." + k if not k.startswith("bert.") else k): v for k, v in d.items()}
h = d["bert.embeddings.word_embeddings.weight"].shape[1]
d["classifier.weight"] = np.zeros((3, h), dtype=np.float32)
d["classifier.bias"] = np.zeros((3,), dtype=np.float32)
save_file(d, sys.argv[1])
PY
    "$bin" info --model "$work/cls" --json >"$work/cls.json" 2>"$work/err" || bad "classifier folder: $(cat "$work/err")"
    "$py" -c "
import json, sys
d = json.load(open('$work/cls.json'))
names = sorted(u.split(' (')[0] for u in d['unused_listed'])
sys.exit(0 if names == ['classifier.bias', 'classifier.weight'] and d['unused_tensors'] == 2 else 1)" \
        || bad "classifier folder: unused tensors not listed ($(cat "$work/cls.json"))"
    grep -q "unused: *classifier.weight (F32 \[3, " <("$bin" info --model "$work/cls") || bad "classifier folder: text output lacks the unused list"
    echo "classifier folder (bert. prefix + classifier.*): checked"
else
    bad "no committed model folder under $tests/models"
fi
[ "$checked" -gt 0 ] || bad "no committed models under $tests/models (committed fixtures)"

# the default model, when it is in the cache (CI fetches it): its published checksum and size
cache=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
if [ -f "$cache/models/minilm/model.safetensors" ]; then
    "$bin" info --json >"$work/minilm.json" 2>"$work/err" || bad "minilm: $(cat "$work/err")"
    "$py" -c "
import json, sys
d = json.load(open('$work/minilm.json'))
ok = (d['weights_sha256'] == '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db' and d['parameters'] == 22713216
      and d['config']['hidden_size'] == 384 and d['config']['num_hidden_layers'] == 6 and d['pooler'] is True
      and d['tensor_dtypes'] == {'F32': 103, 'I64': 1} and d['tokenizer']['vocab_size'] == 30522 and d['tokenizer']['lowercase'] is True)
sys.exit(0 if ok else 1)" || bad "minilm: unexpected info $(cat "$work/minilm.json")"
    echo "minilm (default model): checked"
else
    tl_skip_part "the MiniLM model is not in $cache/models (models/fetch.sh minilm)"
fi

# broken folders: exit 2, one line on stderr naming the file
src=$(ls -d "$tests"/models/*/ | head -n1)
src=${src%/}
expect_error() { # label needle
    "$bin" info --model "$work/m" >"$work/out" 2>"$work/err"
    local rc=$?
    [ "$rc" = 2 ] || bad "$1: exit $rc, want 2"
    [ "$(wc -l <"$work/err")" = 1 ] || bad "$1: stderr is not one line: $(cat "$work/err")"
    grep -q -- "$2" "$work/err" || bad "$1: message '$(cat "$work/err")' lacks '$2'"
    echo "$1: $(cat "$work/err")"
}
fresh() { rm -rf "$work/m"; cp -r "$src" "$work/m"; }

fresh; head -c 1000 "$src/model.safetensors" >"$work/m/model.safetensors"
expect_error "truncated weights" "$work/m/model.safetensors: header length"
fresh; rm "$work/m/vocab.txt"
expect_error "no vocab" "vocab.txt"
fresh; rm "$work/m/config.json"
expect_error "no config" "$work/m/config.json: cannot open"
fresh; sed -i 's/"gelu"/"gelu_new"/' "$work/m/config.json"
expect_error "gelu_new" "hidden_act 'gelu_new' is not supported"
fresh; printf 'not json' >"$work/m/config.json"
expect_error "bad config" "config.json: not valid JSON"
expect_error_dir() {
    "$bin" info --model "$1" >/dev/null 2>"$work/err"; local rc=$?
    [ "$rc" = 2 ] && [ "$(wc -l <"$work/err")" = 1 ] || bad "missing folder: exit $rc, $(cat "$work/err")"
}
expect_error_dir "$work/nope"
"$bin" info --bogus >/dev/null 2>&1; [ $? = 2 ] || bad "unknown option: exit status not 2"
"$bin" info --help | grep -q -- "--model" || bad "--help lacks --model"

[ "$fails" = 0 ] || { echo "$fails failure(s)" >&2; exit 1; }
echo "all tbert info checks passed"
tl_exit 0
