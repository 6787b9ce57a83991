#!/usr/bin/env bash
# scripts/man-pages.sh TBERT_BINARY OUT_DIR VERSION: writes OUT_DIR/tbert.1 and OUT_DIR/tbert-SUBCOMMAND.1 for
# every subcommand `tbert --help` lists, from the program's own --help text (so the man pages never drift
# from it). Run by the build (CMakeLists.txt, target tbert_man); installed to share/man/man1.
set -euo pipefail
bin=${1:?usage: man-pages.sh TBERT_BINARY OUT_DIR VERSION}
out=${2:?usage: man-pages.sh TBERT_BINARY OUT_DIR VERSION}
version=${3:?usage: man-pages.sh TBERT_BINARY OUT_DIR VERSION}
mkdir -p "$out"
date=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d)

# roff-safe text: backslashes doubled, a leading '.' or "'" guarded by \&
esc() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"; }

page() { # page NAME SUMMARY HELP_TEXT_FILE
    local name=$1 summary=$2 help=$3 up
    up=$(echo "$name" | tr '[:lower:]' '[:upper:]')
    {
        printf '.TH %s 1 "%s" "tbert %s" "User Commands"\n' "$up" "$date" "$version"
        printf '.SH NAME\n%s \\- %s\n' "$name" "$(printf '%s' "$summary" | esc)"
        printf '.SH SYNOPSIS\n.nf\n'
        grep -m1 '^usage:' "$help" | sed 's/^usage: *//' | esc
        grep -A3 '^usage:' "$help" | tail -n +2 | sed -n '/^ \{5,\}tbert /p' | sed 's/^ *//' | esc
        printf '.fi\n.SH DESCRIPTION\n.nf\n'
        awk '!u && /^usage:/ { u = 1; next } u == 1 && /^     +tbert / { next } { if (u) u = 2; print }' "$help" | esc
        printf '.fi\n.SH EXIT STATUS\n'
        if [ "$name" = tbert-filter ]; then
            printf 'As bogofilter: 0 spam, 1 ham, 2 unsure, 3 error (with \\fB\\-p \\-e\\fR: 0 unless an error).\n'
        else
            printf '0 success; 1 the run finished but a check it was asked for failed; 2 bad usage or input it cannot\n'
            printf 'work with, with one line on stderr naming the file and the problem.\n'
        fi
        printf '.SH SEE ALSO\n'
        [ "$name" = tbert ] || printf '.BR tbert (1),\n'
        printf 'README.md and docs/ in the tbert sources (installed under share/doc/tbert).\n'
    } > "$out/$name.1"
}

"$bin" --help > "$out/.tbert.help" 2>&1 || true
grep -q '^usage:' "$out/.tbert.help" || { echo "man-pages.sh: '$bin --help' printed no usage line" >&2; exit 1; }
page tbert "a BERT text classifier for spam: train, score, filter and serve" "$out/.tbert.help"
# subcommands: the lines "  NAME  SUMMARY" of tbert --help
n=0
while read -r sub summary; do
    "$bin" "$sub" --help > "$out/.$sub.help" 2>&1 || { echo "man-pages.sh: '$bin $sub --help' failed" >&2; exit 1; }
    page "tbert-$sub" "$summary" "$out/.$sub.help"
    n=$((n + 1))
done < <(sed -n 's/^  \([a-z][a-z]*\)  \+\(.*\)$/\1 \2/p' "$out/.tbert.help")
rm -f "$out"/.*.help
[ $n -ge 5 ] || { echo "man-pages.sh: found only $n subcommands in '$bin --help'" >&2; exit 1; }
