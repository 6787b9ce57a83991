# shellcheck shell=bash
# Sourced by the learn/retrain shell tests (test_learn.sh, test_serve_retrain.sh): generated mail that a small
# head separates, and single messages written in the ham's words that it misses.
#   mk FILE SUBJECT BODY FROM   writes one RFC 5322 message (Message-ID from FILE's name)
#   learn_mail DIR              DIR/ham/h1..h24.eml and DIR/spam/s1..s24.eml, distinct texts from two word lists
mk() {
    printf 'From: %s\nTo: me@example.org\nSubject: %s\nMessage-ID: <%s@x>\nDate: Mon, 1 Dec 2025 10:00:00 +0000\n\n%s\n' \
        "$4" "$2" "$(basename "$1")" "$3" > "$1"
}

learn_mail() {
    local dir=$1 i k b
    local hw=(meeting project report agenda budget review schedule minutes draft team quarterly notes lunch colleague deadline)
    local sw=(viagra winner prize cheap pills casino lottery free offer click bitcoin discount unsubscribe million urgent)
    mkdir -p "$dir/ham" "$dir/spam"
    for i in $(seq 1 24); do
        b=""; for k in 1 2 3 4 5 6 7 8; do b="$b ${hw[$(((i * 7 + k * 3) % 15))]}"; done
        mk "$dir/ham/h$i.eml" "re: ${hw[$((i % 15))]} ${hw[$(((i + 4) % 15))]}" "Hi, about the$b (item $i). Regards, Ann" "ann@corp.example"
        b=""; for k in 1 2 3 4 5 6 7 8; do b="$b ${sw[$(((i * 5 + k * 2) % 15))]}"; done
        mk "$dir/spam/s$i.eml" "${sw[$((i % 15))]} ${sw[$(((i + 3) % 15))]} now" "Dear friend,$b!!! act now, offer $i" "promo$i@spam.example"
    done
}
