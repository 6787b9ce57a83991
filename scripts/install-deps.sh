#!/usr/bin/env bash
# Installs the Debian packages tbert's build, tests and benchmarks need (a fresh Debian 12 has none of them).
# The CUDA toolkit (nvcc) is taken as given. Safe to run again: apt-get skips what is installed.
set -euo pipefail

# A debootstrap minbase has the Priority: required set (coreutils, util-linux, mount, e2fsprogs, findutils,
# diffutils, grep, sed, mawk, libc-bin: what tests/*.sh and scripts/*.sh call besides the list below) and
# nothing else: curl for models/fetch.sh and data/fetch.sh; binutils (readelf) comes with build-essential.
packages=(
    build-essential cmake git pkg-config ca-certificates curl python3 python3-venv python3-pip unzip
    libcjson-dev libutf8proc-dev libopenblas-dev libcmocka-dev
    libgmime-3.0-dev libxml2-dev libglib2.0-dev zlib1g-dev
    clang libclang-rt-14-dev
    bogofilter
    libmicrohttpd-dev libmilter-dev spamc miltertest
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present" >&2
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 2; }
    sudo=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
