#!/usr/bin/env bash
# data/fetch.sh NAME: makes a labelled corpus available and prints its path as the last line.
# Looks in data/ first, then in the mirror folder ($TBERT_DATA_MIRROR, default ../shared/data when it
# exists), then downloads from the official source. Fails with a clear message when none works.
#   sms   SMS Spam Collection v.1 (label<TAB>text, 5,574 lines)
#   seed  the 656-message set of the original tutorial (Type<TAB>Message header)
#   mail  SpamAssassin public corpus folders (mirror only: easy_ham, easy_ham_2, hard_ham, spam, spam_2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
name=${1:-sms}
mirror=${TBERT_DATA_MIRROR:-}
if [ -z "$mirror" ] && [ -d "$root/../shared/data" ]; then mirror=$(cd "$root/../shared/data" && pwd); fi
die() { echo "data/fetch.sh: $*" >&2; exit 2; }

case "$name" in
    sms) local_path="$here/SMSSpamCollection"; mirror_rel=sms/SMSSpamCollection
         url=https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip ;;
    seed) local_path="$here/spam.csv"; mirror_rel=seed/spam.csv; url="" ;;
    mail) local_path="$here/spamassassin"; mirror_rel=mail/spamassassin; url="" ;;
    *) die "unknown data set '$name' (known: sms, seed, mail)" ;;
esac

if [ -e "$local_path" ]; then echo "$local_path"; exit 0; fi
if [ -n "$mirror" ] && [ -e "$mirror/$mirror_rel" ]; then echo "$mirror/$mirror_rel"; exit 0; fi
[ -n "$url" ] || die "$name: not in $here and no mirror has $mirror_rel (set TBERT_DATA_MIRROR to a folder that does)"
command -v curl >/dev/null || die "$name: not found locally or in a mirror, and curl is missing to download $url"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "data/fetch.sh: downloading $url" >&2
curl -fsSL --connect-timeout 10 --max-time 120 -o "$tmp/d.zip" "$url" \
    || die "$name: not found locally or in a mirror, and the download from $url failed"
python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extract("SMSSpamCollection", sys.argv[2])' "$tmp/d.zip" "$tmp" \
    || die "$name: the downloaded archive has no SMSSpamCollection"
mv "$tmp/SMSSpamCollection" "$local_path"
echo "$local_path"
