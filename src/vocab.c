/* Vocabulary: vocab.txt (one token per line, id = 0-based line number; a repeated token maps to its last
 * line, as HF's WordPiece::read_file does), a hash table for lookups, the special tokens, the per-ASCII
 * byte tables of the fast path, and tokenizer_config.json. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tokenizer_internal.h"
#include "unicode_props.h"

#define VOCAB_MAX_BYTES ((size_t)256 << 20)
#define CONFIG_MAX_BYTES ((size_t)16 << 20)
#define MAX_WORD_CHARS_CAP 1000000

tbert_tokenizer_opts tbert_tokenizer_default_opts(void) {
    return (tbert_tokenizer_opts){.clean_text = true,
                                  .handle_chinese_chars = true,
                                  .lowercase = true,
                                  .strip_accents = -1,
                                  .max_input_chars_per_word = 100};
}

uint32_t tbert_vocab_hash_bytes(const char *s, size_t len) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t x;
        memcpy(&x, s, 8);
        h = (h ^ x) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        len -= 8;
    }
    uint64_t x = 0;
    memcpy(&x, s, len);
    h = (h ^ x) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0xff51afd7ed558ccdull;
    return (uint32_t)(h ^ (h >> 32));
}

/* Length of s without trailing White_Space (Rust's str::trim_end). */
static size_t trim_end_len(const char *s, size_t len) {
    const uint8_t *u = (const uint8_t *)s;
    while (len > 0) {
        size_t start = len - 1;
        while (start > 0 && (u[start] & 0xC0) == 0x80 && len - start < 4) start--;
        uint32_t cp;
        size_t end = tbert_utf8_decode(u, len, start, &cp);
        if (end != len || cp == 0xFFFD || !(uc_flags_raw(cp) & UC_WS)) break;
        len = start;
    }
    return len;
}

static void vocab_insert(tbert_vocab *v, int32_t id) {
    uint32_t h = tbert_vocab_hash_bytes(v->tokens[id], v->token_len[id]);
    for (size_t i = h & v->mask;; i = (i + 1) & v->mask) {
        vocab_slot *sl = &v->slots[i];
        if (sl->id < 0) {
            sl->hash = h;
            sl->id = id;
            return;
        }
        if (sl->hash == h && v->token_len[sl->id] == v->token_len[id] &&
            !memcmp(v->tokens[sl->id], v->tokens[id], v->token_len[id])) {
            sl->id = id; /* later line wins */
            return;
        }
    }
}

int32_t tbert_vocab_lookup(const tbert_vocab *v, const char *s, size_t len) {
    uint32_t h = tbert_vocab_hash_bytes(s, len);
    for (size_t i = h & v->mask;; i = (i + 1) & v->mask) {
        const vocab_slot *sl = &v->slots[i];
        if (sl->id < 0) return -1;
        if (sl->hash == h && v->token_len[sl->id] == len && !memcmp(v->tokens[sl->id], s, len)) return sl->id;
    }
}

static void build_ascii_tables(tbert_vocab *v) {
    for (uint32_t b = 0; b < 128; b++) {
        uint32_t out[TBERT_NORM_MAX];
        uint8_t ccc[TBERT_NORM_MAX];
        int n = tbert_normalize_cp(&v->opts, v->strip, b, out, ccc);
        v->ascii_norm[b] = (uint8_t)b;
        if (n == 0) {
            v->ascii_class[b] = ASCII_DROP;
            continue;
        }
        uint32_t c = out[0]; /* ASCII never expands */
        unsigned f = uc_flags(c);
        v->ascii_norm[b] = (uint8_t)c;
        v->ascii_class[b] = (f & UC_WS) ? ASCII_WS : (f & UC_PUNCT) ? ASCII_PUNCT : ASCII_WORD;
    }
}

static tbert_status validate_opts(const tbert_tokenizer_opts *o, const char *path, tbert_error *err) {
    if (o->max_input_chars_per_word < 1 || o->max_input_chars_per_word > MAX_WORD_CHARS_CAP)
        return tbert_fail(err, TBERT_E_ARG, "%s: max_input_chars_per_word must be 1..%d, got %d", path, MAX_WORD_CHARS_CAP,
                          o->max_input_chars_per_word);
    if (o->strip_accents < -1 || o->strip_accents > 1)
        return tbert_fail(err, TBERT_E_ARG, "%s: strip_accents must be -1, 0 or 1", path);
    return TBERT_OK;
}

static tbert_status parse_lines(tbert_vocab *v, size_t len, const char *path, tbert_error *err) {
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += v->data[i] == '\n';
    if (len > 0 && v->data[len - 1] != '\n') lines++;
    if (lines == 0) return tbert_fail(err, TBERT_E_FORMAT, "%s: empty vocabulary", path);
    if (lines > INT32_MAX / 4) return tbert_fail(err, TBERT_E_FORMAT, "%s: too many lines (%zu)", path, lines);
    v->tokens = tbert_malloc_array(lines, sizeof *v->tokens);
    v->token_len = tbert_malloc_array(lines, sizeof *v->token_len);
    size_t slots = 16;
    while (slots < lines * 2) slots *= 2;
    v->slots = tbert_malloc_array(slots, sizeof *v->slots);
    if (!v->tokens || !v->token_len || !v->slots) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    v->mask = slots - 1;
    for (size_t i = 0; i < slots; i++) v->slots[i].id = -1;
    size_t pos = 0;
    for (size_t id = 0; id < lines; id++) {
        char *s = v->data + pos;
        char *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos;
        pos += l + (nl ? 1 : 0);
        l = trim_end_len(s, l);
        s[l] = '\0'; /* the '\n' (or the file's terminating NUL) or a trimmed byte */
        v->tokens[id] = s;
        v->token_len[id] = (uint32_t)l;
        if (l > v->max_token_len) v->max_token_len = l;
    }
    v->n = (int32_t)lines;
    for (int32_t id = 0; id < v->n; id++) vocab_insert(v, id);
    return TBERT_OK;
}

static tbert_status find_specials(tbert_vocab *v, const char *path, tbert_error *err) {
    static const char *const names[TBERT_MAX_SPECIALS] = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"};
    int32_t *dst[TBERT_MAX_SPECIALS] = {&v->cls, &v->sep, &v->pad, &v->unk, &v->mask_id};
    for (int k = 0; k < TBERT_MAX_SPECIALS; k++) {
        int32_t id = tbert_vocab_lookup(v, names[k], strlen(names[k]));
        *dst[k] = id;
        if (id < 0) {
            if (k < 4) return tbert_fail(err, TBERT_E_FORMAT, "%s: the vocabulary has no %s token", path, names[k]);
            continue;
        }
        v->specials[v->n_specials].lit = names[k];
        v->specials[v->n_specials].len = strlen(names[k]);
        v->specials[v->n_specials].id = id;
        v->n_specials++;
    }
    return TBERT_OK;
}

tbert_status tbert_vocab_load(const char *vocab_path, const tbert_tokenizer_opts *opts, tbert_vocab **out, tbert_error *err) {
    *out = NULL;
    tbert_tokenizer_opts o = opts ? *opts : tbert_tokenizer_default_opts();
    tbert_status s = validate_opts(&o, vocab_path, err);
    if (s) return s;
    tbert_vocab *v = calloc(1, sizeof *v);
    if (!v) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", vocab_path);
    v->opts = o;
    v->strip = tbert_opts_strip(&o);
    size_t len;
    s = tbert_read_file(vocab_path, VOCAB_MAX_BYTES, &v->data, &len, err);
    if (!s) {
        tbert_sha256_hex(v->data, len, v->hash);
        s = parse_lines(v, len, vocab_path, err);
    }
    if (!s) s = find_specials(v, vocab_path, err);
    if (s) {
        tbert_vocab_free(v);
        return s;
    }
    build_ascii_tables(v);
    *out = v;
    return TBERT_OK;
}

/* tokenizer_config.json: do_lower_case, strip_accents (null = follow lowercasing), tokenize_chinese_chars. */
static tbert_status read_tokenizer_config(const char *path, tbert_tokenizer_opts *o, tbert_error *err) {
    char *text;
    size_t len;
    tbert_status s = tbert_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
    if (s) return s;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: not a JSON object", path);
    }
    const struct {
        const char *key;
        bool *dst;
    } bools[] = {{"do_lower_case", &o->lowercase}, {"tokenize_chinese_chars", &o->handle_chinese_chars}};
    for (size_t k = 0; k < sizeof bools / sizeof bools[0] && !s; k++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, bools[k].key);
        if (!it || cJSON_IsNull(it)) continue;
        if (!cJSON_IsBool(it)) s = tbert_fail(err, TBERT_E_FORMAT, "%s: \"%s\" must be true or false", path, bools[k].key);
        else *bools[k].dst = cJSON_IsTrue(it);
    }
    const cJSON *sa = cJSON_GetObjectItemCaseSensitive(root, "strip_accents");
    if (!s && sa && !cJSON_IsNull(sa)) {
        if (!cJSON_IsBool(sa)) s = tbert_fail(err, TBERT_E_FORMAT, "%s: \"strip_accents\" must be true, false or null", path);
        else o->strip_accents = cJSON_IsTrue(sa) ? 1 : 0;
    }
    cJSON_Delete(root);
    return s;
}

tbert_status tbert_vocab_load_model_dir(const char *dir, tbert_vocab **out, tbert_error *err) {
    *out = NULL;
    char path[4096];
    tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) >= sizeof path)
        return tbert_fail(err, TBERT_E_ARG, "%s: path too long", dir);
    if (tbert_is_regular_file(path)) {
        tbert_status s = read_tokenizer_config(path, &o, err);
        if (s) return s;
    }
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    if (!tbert_is_regular_file(path)) return tbert_fail(err, TBERT_E_IO, "%s: no vocab.txt in the model folder", dir);
    return tbert_vocab_load(path, &o, out, err);
}

void tbert_vocab_free(tbert_vocab *v) {
    if (!v) return;
    free(v->data);
    free(v->tokens);
    free(v->token_len);
    free(v->slots);
    free(v);
}

int32_t tbert_vocab_size(const tbert_vocab *v) { return v->n; }
int32_t tbert_vocab_id(const tbert_vocab *v, const char *token, size_t len) { return tbert_vocab_lookup(v, token, len); }
const char *tbert_vocab_token(const tbert_vocab *v, int32_t id) { return id >= 0 && id < v->n ? v->tokens[id] : NULL; }
int32_t tbert_vocab_cls(const tbert_vocab *v) { return v->cls; }
int32_t tbert_vocab_sep(const tbert_vocab *v) { return v->sep; }
int32_t tbert_vocab_pad(const tbert_vocab *v) { return v->pad; }
int32_t tbert_vocab_unk(const tbert_vocab *v) { return v->unk; }
const tbert_tokenizer_opts *tbert_vocab_opts(const tbert_vocab *v) { return &v->opts; }
const char *tbert_vocab_hash(const tbert_vocab *v) { return v->hash; }
