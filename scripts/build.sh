#!/usr/bin/env bash
# scripts/build.sh NAME [cmake args...]: configures and builds build/NAME.
#   cuda: -DTBERT_CUDA=ON   cpu: -DTBERT_CUDA=OFF   asan: CPU + AddressSanitizer/UBSan   auto: TBERT_CUDA=AUTO
#   emu: the emulated CUDA device (kernels/emu, no toolkit needed) + AddressSanitizer/UBSan
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:?usage: scripts/build.sh cuda|cpu|asan|emu|auto [cmake args]}
shift
case "$name" in
    cuda) args=(-DTBERT_CUDA=ON) ;;
    cpu) args=(-DTBERT_CUDA=OFF) ;;
    asan) args=(-DTBERT_CUDA=OFF -DTBERT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
    emu) args=(-DTBERT_CUDA=EMU -DTBERT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
    auto) args=(-DTBERT_CUDA=AUTO) ;;
    *) echo "scripts/build.sh: unknown configuration '$name'" >&2; exit 2 ;;
esac
jobs=$(nproc 2>/dev/null || echo 2)
py=""
[ -x "$root/.venv/bin/python" ] && py="-DTBERT_PYTHON=$root/.venv/bin/python"
cmake -S "$root" -B "$root/build/$name" "${args[@]}" $py "$@" >&2
cmake --build "$root/build/$name" -j"$jobs" >&2
echo "$root/build/$name"
