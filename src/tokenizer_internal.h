/* Internals shared by the tokenizer modules (vocab.c, normalizer.c, pretokenizer.c, wordpiece.c,
 * tokenizer.c) and their unit tests. The stages follow Hugging Face `tokenizers`:
 * raw bytes -> UTF-8 decode (errors="replace") -> special literals -> BertNormalizer -> BertPreTokenizer -> WordPiece. */
#ifndef TBERT_TOKENIZER_INTERNAL_H
#define TBERT_TOKENIZER_INTERNAL_H

#include "tbert/tokenizer.h"

#define TBERT_NORM_MAX 12          /* most code points one input code point can become (" c " / NFD) */
#define TBERT_NORM_BOUNDARY 0xFFFFFFFFu /* marker: a starter was removed (ends a canonical-ordering run) */
#define TBERT_MAX_SPECIALS 5

enum { ASCII_DROP = 0, ASCII_WS, ASCII_PUNCT, ASCII_WORD };

typedef struct {
    uint32_t hash;
    int32_t id; /* -1: empty slot */
} vocab_slot;

struct tbert_vocab {
    tbert_tokenizer_opts opts;
    bool strip; /* strip_accents resolved against lowercase */
    char *data; /* vocab.txt bytes; each token NUL-terminated in place */
    const char **tokens;
    uint32_t *token_len;
    int32_t n;
    vocab_slot *slots;
    size_t mask; /* slots: mask + 1 entries */
    size_t max_token_len;
    int32_t cls, sep, pad, unk, mask_id;
    char hash[65];
    /* how every ASCII byte goes through normalizer + pre-tokenizer under these opts */
    uint8_t ascii_class[128];
    uint8_t ascii_norm[128];
    struct {
        const char *lit;
        size_t len;
        int32_t id;
    } specials[TBERT_MAX_SPECIALS];
    int n_specials;
};

/* ---- vocab.c ---- */
/* The vocabulary's hash table: open addressing with linear probing over v->slots. */
uint32_t tbert_vocab_hash_bytes(const char *s, size_t len);
/* id of the token s[0..len), -1 when not in the vocabulary */
int32_t tbert_vocab_lookup(const tbert_vocab *v, const char *s, size_t len);

/* ---- normalizer.c ---- */
/* Decodes one code point at s[i] (i < n) as Python's errors="replace" does (maximal invalid subpart ->
 * U+FFFD); returns the index after it. Never reads past s[n-1]. */
size_t tbert_utf8_decode(const uint8_t *s, size_t n, size_t i, uint32_t *cp);
/* Appends the UTF-8 bytes of cp (<= 0x10FFFF, not a surrogate) to out; returns the byte count (1..4). */
int tbert_utf8_encode(uint32_t cp, char *out);
/* BertNormalizer on one code point: writes 0..TBERT_NORM_MAX code points to out and, per code point, the
 * canonical combining class that NFD's reordering uses (0 outside strip_accents). Removed starters
 * appear as TBERT_NORM_BOUNDARY. CJK ideographs come out as ' ' c ' ' when handle_chinese_chars. */
int tbert_normalize_cp(const tbert_tokenizer_opts *o, bool strip, uint32_t cp, uint32_t *out, uint8_t *ccc);
/* The whole normalizer on a text (for tests and diagnostics): the UTF-8 string HF's
 * normalizer.normalize_str gives. Caller frees *out. */
tbert_status tbert_normalize_text(const tbert_tokenizer_opts *o, const char *text, size_t len, char **out, size_t *out_len,
                                  tbert_error *err);
bool tbert_opts_strip(const tbert_tokenizer_opts *o);

/* ---- pretokenizer.c ---- */
/* Receives each pre-token. `word` has 2 writable bytes before it (WordPiece puts "##" there). When
 * nchars > max_input_chars_per_word the bytes are not kept (len 0): the word is [UNK]. A special literal
 * arrives with special_id >= 0 and no bytes. Return false to stop (limit reached or out of memory). */
typedef bool (*tbert_word_fn)(void *ctx, char *word, size_t len, size_t nchars, int32_t special_id);
/* Splits text (raw bytes) into pre-tokens: special literals, then normalized words split on whitespace and
 * punctuation. Returns false when a callback stopped it or on out-of-memory (*oom set). */
bool tbert_pretokenize(const tbert_vocab *v, const char *text, size_t len, tbert_word_fn fn, void *ctx, bool *oom);

/* ---- wordpiece.c ---- */
/* Greedy longest-match-first WordPiece of one word (w has 2 writable bytes before it, its bytes may be
 * overwritten). Appends ids (or one [UNK]) to out; false on out-of-memory. */
bool tbert_wordpiece(const tbert_vocab *v, char *w, size_t len, tbert_i32vec *out);

/* ---- tokenizer.c ---- */
/* tbert_tokenize that stops after the word during which out reaches `limit` ids (SIZE_MAX: all). */
tbert_status tbert_tokenize_limit(const tbert_vocab *v, const char *text, size_t len, size_t limit, tbert_i32vec *out,
                                  tbert_error *err);

#endif
