#!/usr/bin/env bash
# Downloads the Debian packages (runtime + -dev) that tbert's build needs into the git-ignored .gpu-deps/, for a
# lent GPU machine: that machine has CUDA, cuBLAS, CMake, a C compiler and Python with torch, but none of our
# Debian libraries and no package registry (CONVENTIONS.md, "A lent GPU"). benchmarks/gpu_check.sh unpacks these
# with dpkg -x into a prefix under /tmp (never into /) and points pkg-config, CMake and LD_LIBRARY_PATH there.
#
# Run it here (a Debian 12 machine with network), then carry .gpu-deps with each device call.
# It checks the set before it finishes: every pkg-config module the build asks for resolves inside the unpacked
# prefix, and every shared library in it finds its DT_NEEDED libraries in the prefix or in the C runtime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.gpu-deps"

packages=(
    # pkg-config itself (the GPU image may lack it)
    pkgconf pkgconf-bin libpkgconf3
    # the build's modules (CMakeLists.txt: libcjson libutf8proc openblas gmime-3.0 libxml-2.0 glib-2.0 zlib; cmocka)
    libcjson1 libcjson-dev
    libutf8proc2 libutf8proc-dev
    libopenblas0 libopenblas0-pthread libopenblas-dev libopenblas-pthread-dev libgfortran5 libquadmath0
    libcmocka0 libcmocka-dev
    libgmime-3.0-0 libgmime-3.0-dev libgpgme11 libassuan0 libgpg-error0 libidn2-0 libunistring2
    libxml2 libxml2-dev libicu72 liblzma5
    libglib2.0-0 libglib2.0-dev libffi8 libffi-dev libpcre2-8-0 libpcre2-dev
    libmount1 libmount-dev libblkid1 libblkid-dev libselinux1 libselinux1-dev libsepol2 libsepol-dev
    zlib1g zlib1g-dev
)
modules=(libcjson libutf8proc openblas gmime-3.0 libxml-2.0 glib-2.0 zlib cmocka)

command -v apt-get >/dev/null || { echo "gpu-deps: apt-get not found (run this on the Debian machine)" >&2; exit 2; }
mkdir -p "$dest"
rm -f "$dest"/*.deb
echo "gpu-deps: downloading ${#packages[@]} packages into $dest" >&2
(cd "$dest" && apt-get download -q "${packages[@]}" >&2)

# ---- self-check in a scratch prefix ----
prefix="$(mktemp -d /tmp/tbert-gpu-deps-check.XXXXXX)"
trap 'rm -rf "$prefix"' EXIT
for f in "$dest"/*.deb; do dpkg -x "$f" "$prefix"; done
lib="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread"
export PKG_CONFIG_LIBDIR="$lib/openblas-pthread/pkgconfig:$lib/pkgconfig:$prefix/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$prefix"
pc="$prefix/usr/bin/pkgconf"
[ -x "$pc" ] || { echo "gpu-deps: pkgconf missing from the downloaded set" >&2; exit 1; }
"$pc" --cflags --libs "${modules[@]}" >/dev/null || { echo "gpu-deps: a pkg-config module does not resolve in the set" >&2; exit 1; }
base='^(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux-x86-64|libresolv)\.so'
missing=0
while IFS= read -r so; do
    while IFS= read -r need; do
        [[ "$need" =~ $base ]] && continue
        if [ ! -e "$lib/$need" ] && [ ! -e "$lib/openblas-pthread/$need" ] && [ ! -e "$prefix/lib/x86_64-linux-gnu/$need" ]; then
            echo "gpu-deps: $(basename "$so") needs $need, which is not in the set" >&2
            missing=1
        fi
    done < <(readelf -d "$so" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done < <(find "$prefix" -name '*.so*' -type f)
[ "$missing" = 0 ] || exit 1
size="$(du -sh "$dest" | cut -f1)"
echo "gpu-deps: ok: $(ls "$dest"/*.deb | wc -l) packages, $size in $dest (carry it: carry=[\".gpu-deps\"])" >&2
echo "$dest"
