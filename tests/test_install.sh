#!/usr/bin/env bash
# cmake --install of this build into a temporary prefix (issue 14, "Install and docs"): the binary runs from
# there; one man page per subcommand that `tbert --help` lists, each rendering without a groff warning and
# carrying its subcommand's options (from its --help); README and docs; the systemd unit for tbert serve with
# ExecStart naming the installed binary; and, in a build with the CUDA plugin, PREFIX/lib/tbert/libtbert_cuda.so.
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
BUILD=$(dirname "$BIN")
TESTS=$(cd "${TBERT_TESTS_DIR:-$(dirname "$0")}" && pwd)
[ -f "$BUILD/cmake_install.cmake" ] || { echo "FAIL $BUILD has no cmake_install.cmake"; exit 1; }
command -v groff > /dev/null || { echo "FAIL groff is not installed (scripts/install-deps.sh installs groff-base)"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1 # check, checks, fails
tl_workdir tbert_install
W=$TL_WORK
P=$W/prefix

cmake --install "$BUILD" --prefix "$P" > "$W/install.log" 2>&1
rc=$?
[ $rc -eq 0 ] || cat "$W/install.log"
check "cmake --install exits 0" [ $rc -eq 0 ]
"$P/bin/tbert" --help > "$W/help.txt" 2>&1
check "PREFIX/bin/tbert --help exits 0" [ $? -eq 0 ]
subs=$(sed -n 's/^  \([a-z][a-z]*\)  .*/\1/p' "$W/help.txt")
checks "tbert --help lists the subcommands (score, filter, serve among them)" \
    '[ "$(echo "$subs" | wc -w)" -ge 8 ] && echo "$subs" | grep -qx score && echo "$subs" | grep -qx filter && echo "$subs" | grep -qx serve'
M=$P/share/man/man1
check "tbert.1 is installed" [ -f "$M/tbert.1" ]
for s in $subs; do
    page=$M/tbert-$s.1
    if [ ! -f "$page" ]; then
        check "tbert-$s.1 is installed" false
        continue
    fi
    groff -man -Tutf8 -ww "$page" > "$W/page.txt" 2> "$W/groff.err"
    rc=$?
    # every long option of the subcommand's --help is on its rendered page (groff may hyphenate at line
    # ends: compare with line breaks and hyphens at line ends removed)
    opts=$("$P/bin/tbert" "$s" --help | grep -o -- '--[a-z][a-z0-9-]*' | sort -u)
    flat=$(sed 's/\x1b\[[0-9;]*m//g; s/.\x08//g' "$W/page.txt" | tr -s ' \n' ' ')
    missing=0
    for o in $opts; do [[ "$flat" == *"$o"* ]] || { missing=$((missing + 1)); echo "  $s: $o not on the page"; }; done
    checks "tbert-$s.1 renders without warnings, NAME tbert-$s, $(echo "$opts" | wc -w) options all there" \
        '[ $rc -eq 0 ] && [ ! -s "$W/groff.err" ] && grep -q "tbert-$s" "$W/page.txt" && [ $missing -eq 0 ]'
done
checks "README.md and docs/mail.md under share/doc/tbert" \
    'cmp -s "$P/share/doc/tbert/README.md" "$TESTS/../README.md" && [ -f "$P/share/doc/tbert/mail.md" ]'
U=$P/lib/systemd/system/tbert-serve.service
checks "the systemd unit starts PREFIX/bin/tbert serve and reloads with SIGHUP" \
    'grep -q "^ExecStart=$P/bin/tbert serve " "$U" && grep -q "^ExecReload=/bin/kill -HUP \$MAINPID" "$U" && ! grep -q "@TBERT" "$U"'
if [ -f "$BUILD/libtbert_cuda.so" ]; then
    check "the CUDA plugin is installed as PREFIX/lib/tbert/libtbert_cuda.so" [ -f "$P/lib/tbert/libtbert_cuda.so" ]
else
    echo "ok   (no CUDA plugin in this build: nothing to install for it)"
fi

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
