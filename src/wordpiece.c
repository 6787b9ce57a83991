/* WordPiece: greedy longest-match-first with "##" continuation pieces, as HF's models::wordpiece. Looks pieces
 * up in the vocabulary's hash table (src/vocab.c). */
#include <string.h>

#include "tokenizer_internal.h"

static inline size_t prev_boundary(const char *w, size_t start, size_t end) {
    do {
        end--;
    } while (end > start && ((unsigned char)w[end] & 0xC0) == 0x80);
    return end;
}

bool tbert_wordpiece(const tbert_vocab *v, char *w, size_t len, tbert_i32vec *out) {
    size_t n0 = out->n;
    size_t start = 0;
    while (start < len) {
        size_t end = len;
        /* no piece is longer than the longest vocabulary entry: start there (at a character boundary) */
        if (end - start > v->max_token_len) {
            end = start + v->max_token_len + 1;
            end = prev_boundary(w, start, end);
        }
        char *key = w + start;
        size_t extra = 0;
        if (start > 0) {
            key -= 2; /* bytes before start are consumed; the 2 bytes of headroom cover start == 1 */
            key[0] = '#';
            key[1] = '#';
            extra = 2;
        }
        int32_t id = -1;
        while (end > start) {
            id = tbert_vocab_lookup(v, key, end - start + extra);
            if (id >= 0) break;
            end = prev_boundary(w, start, end);
        }
        if (id < 0) {
            out->n = n0;
            return tbert_i32vec_push(out, v->unk);
        }
        if (!tbert_i32vec_push(out, id)) return false;
        start = end;
    }
    return true;
}
