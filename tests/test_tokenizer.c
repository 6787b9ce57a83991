/* Tokenizer tests: every golden case from Hugging Face `tokenizers` (tests/golden/make_tokenizer_golden.py)
 * token for token, per stage (normalizer, pre-tokenizer, WordPiece), invalid UTF-8, windows, batches,
 * special literals, vocabulary files, and threads sharing one vocabulary. Needs MiniLM's vocab.txt
 * ($TBERT_CACHE/models/minilm); exits 77 without it. */
#include <cjson/cJSON.h>
#include <glib.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tbert/fileio.h"
#include "tbert/tokenizer.h"
#include "testutil.h"
#include "tokenizer_internal.h"
#include "unicode_props.h"

#define NO_LIMIT (1 << 24)

static char g_minilm_vocab[PATH_MAX + 64];
static tbert_vocab *g_vocab; /* MiniLM, loaded once for the whole run (read-only) */

typedef struct {
    char *name;
    uint8_t *bytes;
    size_t len;
    int32_t *ids;
    size_t n_ids;
    char *norm; /* NULL when absent */
    char **words;
    int n_words; /* -1 when absent */
    tbert_tokenizer_opts opts;
} golden_case;

typedef struct {
    golden_case *c;
    size_t n;
} golden_set;

static void free_set(golden_set *s) {
    for (size_t i = 0; i < s->n; i++) {
        golden_case *c = &s->c[i];
        free(c->name);
        g_free(c->bytes);
        free(c->ids);
        free(c->norm);
        for (int k = 0; k < c->n_words; k++) free(c->words[k]);
        free(c->words);
    }
    free(s->c);
}

static golden_set load_jsonl(const char *rel) {
    char path[PATH_MAX];
    tu_tests_path(rel, path, sizeof path);
    char *text;
    size_t len;
    tbert_error err;
    if (tbert_read_file(path, 0, &text, &len, &err)) fail_msg("%s", err.msg);
    golden_set s = {0};
    size_t cap = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        if (s.n == cap) {
            cap = cap ? cap * 2 : 256;
            s.c = realloc(s.c, cap * sizeof *s.c);
            assert_non_null(s.c);
        }
        golden_case *c = &s.c[s.n++];
        memset(c, 0, sizeof *c);
        c->name = strdup(cJSON_GetObjectItem(j, "name")->valuestring);
        const char *b64 = cJSON_GetObjectItem(j, "b64")->valuestring;
        gsize blen = 0;
        c->bytes = *b64 ? g_base64_decode(b64, &blen) : g_malloc0(1);
        c->len = blen;
        cJSON *ids = cJSON_GetObjectItem(j, "ids");
        c->n_ids = (size_t)cJSON_GetArraySize(ids);
        c->ids = calloc(c->n_ids + 1, sizeof *c->ids);
        for (size_t k = 0; k < c->n_ids; k++) c->ids[k] = cJSON_GetArrayItem(ids, (int)k)->valueint;
        cJSON *norm = cJSON_GetObjectItem(j, "norm");
        if (norm) c->norm = strdup(norm->valuestring);
        cJSON *words = cJSON_GetObjectItem(j, "words");
        c->n_words = words ? cJSON_GetArraySize(words) : -1;
        if (words) {
            c->words = calloc((size_t)c->n_words + 1, sizeof *c->words);
            for (int k = 0; k < c->n_words; k++) c->words[k] = strdup(cJSON_GetArrayItem(words, k)->valuestring);
        }
        c->opts = tbert_tokenizer_default_opts();
        cJSON *o = cJSON_GetObjectItem(j, "opts");
        if (o) {
            c->opts.lowercase = cJSON_IsTrue(cJSON_GetObjectItem(o, "lowercase"));
            c->opts.strip_accents = cJSON_IsTrue(cJSON_GetObjectItem(o, "strip_accents")) ? 1 : 0;
        }
        cJSON_Delete(j);
    }
    free(text);
    return s;
}

/* The text with non-printable bytes escaped, for mismatch reports. */
static void print_escaped(const uint8_t *b, size_t n) {
    for (size_t i = 0; i < n && i < 300; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\') fputc(b[i], stderr);
        else if (b[i] >= 0x80) fputc(b[i], stderr); /* UTF-8 as is */
        else fprintf(stderr, "\\x%02x", b[i]);
    }
    if (n > 300) fprintf(stderr, "...(%zu bytes)", n);
}

static void print_tokens(const tbert_vocab *v, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *t = tbert_vocab_token(v, ids[i]);
        fprintf(stderr, "%s%d:%s", i ? " " : "", ids[i], t ? t : "?");
    }
    fputc('\n', stderr);
}

static void report_mismatch(const tbert_vocab *v, const char *where, const char *name, const uint8_t *text, size_t len,
                            const int32_t *want, size_t n_want, const int32_t *got, size_t n_got) {
    fprintf(stderr, "FIRST MISMATCH %s %s\n  text    : \"", where, name);
    print_escaped(text, len);
    fprintf(stderr, "\"\n  expected: ");
    print_tokens(v, want, n_want);
    fprintf(stderr, "  got     : ");
    print_tokens(v, got, n_got);
}

/* Encodes every case with v (or a vocab per case's opts when vocab_path is given); returns mismatches. */
static size_t check_ids(golden_set *s, const tbert_vocab *v, const char *vocab_path, const char *where) {
    size_t bad = 0;
    tbert_i32vec out = {0};
    tbert_error err;
    for (size_t i = 0; i < s->n; i++) {
        golden_case *c = &s->c[i];
        tbert_vocab *own = NULL;
        if (vocab_path) assert_int_equal(tbert_vocab_load(vocab_path, &c->opts, &own, &err), TBERT_OK);
        const tbert_vocab *vv = own ? own : v;
        assert_int_equal(tbert_encode(vv, (const char *)c->bytes, c->len, NO_LIMIT, &out, &err), TBERT_OK);
        if (out.n != c->n_ids || memcmp(out.v, c->ids, out.n * sizeof *out.v)) {
            if (bad++ == 0) report_mismatch(vv, where, c->name, c->bytes, c->len, c->ids, c->n_ids, out.v, out.n);
        }
        tbert_vocab_free(own);
    }
    tbert_i32vec_free(&out);
    fprintf(stderr, "%s: %zu cases, %zu mismatches\n", where, s->n, bad);
    return bad;
}

static void test_edge_cases_ids(void **state) {
    golden_set s = load_jsonl("data/tokenizer/edge_cases.jsonl");
    assert_true(s.n >= 300);
    assert_int_equal(check_ids(&s, g_vocab, NULL, "edge_cases.jsonl"), 0);
    free_set(&s);
}

static void test_cased_cases_ids(void **state) {
    golden_set s = load_jsonl("data/tokenizer/cased_cases.jsonl");
    char vocab[PATH_MAX];
    tu_tests_path("data/tokenizer/cased_vocab.txt", vocab, sizeof vocab);
    assert_true(s.n >= 300);
    assert_int_equal(check_ids(&s, NULL, vocab, "cased_cases.jsonl"), 0);
    free_set(&s);
}

static void test_edge_cases_normalizer(void **state) {
    golden_set s = load_jsonl("data/tokenizer/edge_cases.jsonl");
    tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
    size_t bad = 0, checked = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (!s.c[i].norm) continue;
        char *got;
        size_t n;
        tbert_error err;
        assert_int_equal(tbert_normalize_text(&o, (const char *)s.c[i].bytes, s.c[i].len, &got, &n, &err), TBERT_OK);
        checked++;
        if (strcmp(got, s.c[i].norm) && bad++ == 0)
            fprintf(stderr, "FIRST NORMALIZER MISMATCH %s: expected \"%s\" got \"%s\"\n", s.c[i].name, s.c[i].norm, got);
        free(got);
    }
    fprintf(stderr, "normalizer: %zu cases, %zu mismatches\n", checked, bad);
    assert_true(checked > 250);
    assert_int_equal(bad, 0);
    free_set(&s);
}

typedef struct {
    char *w[4096];
    int n;
} word_list;

static bool collect_word(void *ctx, char *word, size_t len, size_t nchars, int32_t special_id) {
    word_list *l = ctx;
    if (l->n < 4096) l->w[l->n++] = special_id >= 0 ? strdup("<special>") : strndup(word, len);
    return true;
}

static void test_edge_cases_pretokenizer(void **state) {
    golden_set s = load_jsonl("data/tokenizer/edge_cases.jsonl");
    size_t bad = 0, checked = 0;
    word_list *l = calloc(1, sizeof *l);
    for (size_t i = 0; i < s.n; i++) {
        golden_case *c = &s.c[i];
        if (c->n_words < 0) continue;
        bool oom;
        l->n = 0;
        assert_true(tbert_pretokenize(g_vocab, (const char *)c->bytes, c->len, collect_word, l, &oom));
        checked++;
        bool same = l->n == c->n_words;
        for (int k = 0; same && k < l->n; k++) same = !strcmp(l->w[k], c->words[k]);
        if (!same && bad++ == 0) {
            fprintf(stderr, "FIRST PRE-TOKENIZER MISMATCH %s: expected", c->name);
            for (int k = 0; k < c->n_words; k++) fprintf(stderr, " [%s]", c->words[k]);
            fprintf(stderr, "\n  got");
            for (int k = 0; k < l->n; k++) fprintf(stderr, " [%s]", l->w[k]);
            fprintf(stderr, "\n");
        }
        for (int k = 0; k < l->n; k++) free(l->w[k]);
    }
    free(l);
    fprintf(stderr, "pre-tokenizer: %zu cases, %zu mismatches\n", checked, bad);
    assert_true(checked > 250);
    assert_int_equal(bad, 0);
    free_set(&s);
}

/* ---- hand-checked unit tests of each stage ---- */

static tbert_vocab *tiny_vocab(const char *content, const tbert_tokenizer_opts *o, char *path_out) {
    char path[] = "/tmp/tbert_tok_vocab_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    tbert_vocab *v = NULL;
    tbert_error err;
    tbert_status s = tbert_vocab_load(path, o, &v, &err);
    if (s) fprintf(stderr, "tiny_vocab: %s\n", err.msg);
    if (path_out) strcpy(path_out, path);
    else unlink(path);
    return v;
}

static const char *TINY = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nwant\n##want\n##ed\nwa\nun\nrunn\n##ing\n,\n.\n##\n#\n";

static void expect_tokenize(const tbert_vocab *v, const char *text, const int32_t *want, size_t n) {
    tbert_i32vec out = {0};
    tbert_error err;
    assert_int_equal(tbert_tokenize(v, text, strlen(text), &out, &err), TBERT_OK);
    if (out.n != n || memcmp(out.v, want, n * sizeof *want)) {
        report_mismatch(v, "unit", text, (const uint8_t *)text, strlen(text), want, n, out.v, out.n);
        fail();
    }
    tbert_i32vec_free(&out);
}

static void test_wordpiece_unit(void **state) {
    tbert_vocab *v = tiny_vocab(TINY, NULL, NULL);
    assert_non_null(v);
    /* the classic example: un ##want ##ed runn ##ing */
    expect_tokenize(v, "unwanted running", (int32_t[]){9, 6, 7, 10, 11}, 5);
    /* one unmatchable piece makes the whole word [UNK] */
    expect_tokenize(v, "unwantedx running", (int32_t[]){1, 10, 11}, 3);
    /* longest match first: "want" beats "wa" */
    expect_tokenize(v, "want wa", (int32_t[]){5, 8}, 2);
    /* literal ## is punctuation twice: "#" "#" */
    expect_tokenize(v, "##", (int32_t[]){15, 15}, 2);
    /* direct call: the word buffer needs 2 bytes of headroom */
    char buf[32] = "..unwanted";
    tbert_i32vec out = {0};
    assert_true(tbert_wordpiece(v, buf + 2, 8, &out));
    assert_int_equal(out.n, 3);
    assert_int_equal(out.v[0], 9);
    assert_int_equal(out.v[1], 6);
    assert_int_equal(out.v[2], 7);
    tbert_i32vec_free(&out);
    /* accessors */
    assert_int_equal(tbert_vocab_size(v), 16);
    assert_int_equal(tbert_vocab_cls(v), 2);
    assert_int_equal(tbert_vocab_sep(v), 3);
    assert_int_equal(tbert_vocab_pad(v), 0);
    assert_int_equal(tbert_vocab_unk(v), 1);
    assert_int_equal(tbert_vocab_id(v, "##ing", 5), 11);
    assert_int_equal(tbert_vocab_id(v, "nope", 4), -1);
    assert_string_equal(tbert_vocab_token(v, 10), "runn");
    assert_null(tbert_vocab_token(v, 16));
    assert_null(tbert_vocab_token(v, -1));
    assert_int_equal(strlen(tbert_vocab_hash(v)), 64);
    tbert_vocab_free(v);
}

static void test_max_input_chars(void **state) {
    tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
    o.max_input_chars_per_word = 4;
    tbert_vocab *v = tiny_vocab("[PAD]\n[UNK]\n[CLS]\n[SEP]\nab\n##ab\n##a\n\xc3\xa9\n##\xc3\xa9\n", &o, NULL);
    assert_non_null(v);
    expect_tokenize(v, "abab", (int32_t[]){4, 5}, 2);
    expect_tokenize(v, "ababa", (int32_t[]){1}, 1);          /* 5 characters > 4 */
    o = *tbert_vocab_opts(v);
    assert_int_equal(o.max_input_chars_per_word, 4);
    /* counted in characters after normalization: 4 x "é" (8 bytes) is fine, "e"+U+0301 strips to "e" */
    expect_tokenize(v, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", (int32_t[]){1}, 1); /* é is stripped to e: no match */
    tbert_vocab_free(v);
    o = tbert_tokenizer_default_opts();
    o.strip_accents = 0;
    o.max_input_chars_per_word = 4;
    v = tiny_vocab("[PAD]\n[UNK]\n[CLS]\n[SEP]\nab\n##ab\n##a\n\xc3\xa9\n##\xc3\xa9\n", &o, NULL);
    expect_tokenize(v, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", (int32_t[]){7, 8, 8, 8}, 4);
    expect_tokenize(v, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", (int32_t[]){1}, 1);
    tbert_vocab_free(v);
}

static void expect_norm(const tbert_tokenizer_opts *o, const char *in, size_t len, const char *want) {
    char *got;
    size_t n;
    tbert_error err;
    assert_int_equal(tbert_normalize_text(o, in, len, &got, &n, &err), TBERT_OK);
    if (strcmp(got, want)) fail_msg("normalize \"%s\": expected \"%s\" got \"%s\"", in, want, got);
    assert_int_equal(n, strlen(want));
    free(got);
}

static void test_normalizer_unit(void **state) {
    tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
    expect_norm(&o, "H\xc3\xa9LLo", 6, "hello");                   /* lowercase + strip accents */
    expect_norm(&o, "a\tb\nc\rd", 7, "a b c d");                   /* whitespace -> space */
    expect_norm(&o, "x\0y\x07z", 5, "xyz");                        /* NUL and controls dropped */
    expect_norm(&o, "\xe4\xb8\xad\xe6\x96\x87", 6, " \xe4\xb8\xad  \xe6\x96\x87 "); /* CJK gets spaces */
    expect_norm(&o, "\xef\xbf\xbd!", 4, "!");                      /* U+FFFD dropped */
    expect_norm(&o, "\xe2\x80\x8b", 3, "");                         /* U+200B (Cf) dropped */
    expect_norm(&o, "\xc3\x85", 2, "a");                            /* Å -> A + ring -> a */
    expect_norm(&o, "\xea\xb0\x80", 3, "\xe1\x84\x80\xe1\x85\xa1"); /* Hangul syllable -> jamo */
    o.lowercase = false;
    o.strip_accents = 0;
    expect_norm(&o, "H\xc3\xa9LLo", 6, "H\xc3\xa9LLo");             /* cased: untouched */
    o.lowercase = true;
    expect_norm(&o, "\xc4\xb0", 2, "i\xcc\x87");                    /* İ -> i + U+0307 without stripping */
    o.strip_accents = 1;
    expect_norm(&o, "\xc4\xb0", 2, "i");                            /* with stripping: i */
    o.handle_chinese_chars = false;
    expect_norm(&o, "\xe4\xb8\xad", 3, "\xe4\xb8\xad");
    o.clean_text = false;
    expect_norm(&o, "a\tb", 3, "a\tb");
    /* canonical ordering: U+1D16D (ccc 226) before U+1D165 (ccc 216) is swapped by NFD (both Mc, kept) */
    o = tbert_tokenizer_default_opts();
    expect_norm(&o, "\xf0\x9d\x85\xad\xf0\x9d\x85\xa5", 8, "\xf0\x9d\x85\xa5\xf0\x9d\x85\xad");
}

static void test_pretokenizer_unit(void **state) {
    word_list *l = calloc(1, sizeof *l);
    bool oom;
    const char *t = "Hello, world!! caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87x [CLS]a\xe2\x80\x94" "b";
    assert_true(tbert_pretokenize(g_vocab, t, strlen(t), collect_word, l, &oom));
    const char *want[] = {"hello", ",", "world", "!", "!", "cafe", "\xe4\xb8\xad", "\xe6\x96\x87", "x", "<special>", "a",
                          "\xe2\x80\x94", "b"};
    assert_int_equal(l->n, sizeof want / sizeof want[0]);
    for (int k = 0; k < l->n; k++) {
        assert_string_equal(l->w[k], want[k]);
        free(l->w[k]);
    }
    free(l);
}

static void test_invalid_utf8(void **state) {
    /* exact-size heap copies, so a read past the end shows under ASan */
    static const struct {
        const char *bytes;
        size_t len;
        uint32_t cps[8];
        int n;
    } cases[] = {
        {"caf\xe9 au", 7, {'c', 'a', 'f', 0xFFFD, ' ', 'a', 'u'}, 7},
        {"\xe2\x82", 2, {0xFFFD}, 1},                    /* truncated: one maximal subpart */
        {"\xe2\x82x", 3, {0xFFFD, 'x'}, 2},
        {"\xf0\x80\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}, 4}, /* overlong: each byte */
        {"\xed\xa0\x80", 3, {0xFFFD, 0xFFFD, 0xFFFD}, 3},             /* surrogate */
        {"\xf4\x90\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}, 4}, /* above U+10FFFF */
        {"\xc3\xc3\xa9", 3, {0xFFFD, 0xE9}, 2},
        {"\xf0\x9f\x98", 3, {0xFFFD}, 1},
        {"\xf0\x9f\x98\x80", 4, {0x1F600}, 1},
        {"\xc0\xaf", 2, {0xFFFD, 0xFFFD}, 2},
        {"\xff\xfe", 2, {0xFFFD, 0xFFFD}, 2},
        {"\xef\xbf\xbd", 3, {0xFFFD}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b = malloc(cases[i].len);
        memcpy(b, cases[i].bytes, cases[i].len);
        uint32_t got[16];
        int n = 0;
        for (size_t p = 0; p < cases[i].len && n < 16;) p = tbert_utf8_decode(b, cases[i].len, p, &got[n++]);
        assert_int_equal(n, cases[i].n);
        for (int k = 0; k < n; k++) assert_int_equal(got[k], cases[i].cps[k]);
        free(b);
    }
    /* the tokenizer: "caf\xe9 au" keeps " au" (U+FFFD is dropped by clean_text) */
    expect_tokenize(g_vocab, "caf\xe9 au", (int32_t[]){24689, 8740}, 2);
    /* every 1- and 2-byte string, and all 3-byte prefixes of a few leads: no crash, only vocab ids */
    tbert_i32vec out = {0};
    tbert_error err;
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b2 = 0; b2 < 256; b2++) {
            uint8_t *buf = malloc(2);
            buf[0] = (uint8_t)a;
            buf[1] = (uint8_t)b2;
            assert_int_equal(tbert_encode(g_vocab, (const char *)buf, 2, 16, &out, &err), TBERT_OK);
            assert_true(out.n >= 2 && out.n <= 4);
            for (size_t k = 0; k < out.n; k++) assert_true(out.v[k] >= 0 && out.v[k] < tbert_vocab_size(g_vocab));
            free(buf);
        }
    }
    tbert_i32vec_free(&out);
}

static void test_special_literals(void **state) {
    tbert_i32vec out = {0};
    tbert_error err;
    const char *t = "hello [CLS] world";
    assert_int_equal(tbert_encode(g_vocab, t, strlen(t), 128, &out, &err), TBERT_OK);
    int32_t want[] = {101, 7592, 101, 2088, 102};
    assert_int_equal(out.n, 5);
    assert_memory_equal(out.v, want, sizeof want);
    expect_tokenize(g_vocab, "[SEP][PAD][MASK][UNK]", (int32_t[]){102, 0, 103, 100}, 4);
    expect_tokenize(g_vocab, "[cls]", (int32_t[]){1031, 18856, 2015, 1033}, 4); /* not special: lowercase text */
    tbert_i32vec_free(&out);
}

static void test_encode_truncation(void **state) {
    const char *t = "the quick brown fox jumps over the lazy dog and then unbelievably runs away";
    tbert_i32vec full = {0}, cut = {0};
    tbert_error err;
    assert_int_equal(tbert_encode(g_vocab, t, strlen(t), NO_LIMIT, &full, &err), TBERT_OK);
    assert_true(full.n > 10);
    for (int L = 2; L <= (int)full.n + 2; L++) {
        assert_int_equal(tbert_encode(g_vocab, t, strlen(t), L, &cut, &err), TBERT_OK);
        size_t want = (size_t)L < full.n ? (size_t)L : full.n;
        assert_int_equal(cut.n, want);
        assert_memory_equal(cut.v, full.v, (want - 1) * sizeof *cut.v);
        assert_int_equal(cut.v[want - 1], 102);
    }
    assert_int_equal(tbert_encode(g_vocab, t, strlen(t), 1, &cut, &err), TBERT_E_ARG);
    assert_int_equal(tbert_encode(g_vocab, "", 0, 128, &cut, &err), TBERT_OK);
    assert_int_equal(cut.n, 2);
    tbert_i32vec_free(&full);
    tbert_i32vec_free(&cut);
}

static void test_windows(void **state) {
    int32_t ids[10];
    for (int i = 0; i < 10; i++) ids[i] = 1000 + i;
    tbert_i32vec out = {0};
    size_t starts[8];
    int lens[8], nw;
    tbert_error err;
    assert_int_equal(tbert_make_windows(g_vocab, ids, 10, 5, 0, &out, starts, lens, &nw, &err), TBERT_OK);
    assert_int_equal(nw, 4); /* 3 content tokens per window: 3+3+3+1 */
    int32_t w3[] = {101, 1009, 102};
    assert_int_equal(lens[3], 3);
    assert_memory_equal(out.v + starts[3], w3, sizeof w3);
    int32_t w1[] = {101, 1003, 1004, 1005, 102};
    assert_int_equal(lens[1], 5);
    assert_memory_equal(out.v + starts[1], w1, sizeof w1);
    assert_int_equal(tbert_make_windows(g_vocab, ids, 10, 5, 2, &out, starts, lens, &nw, &err), TBERT_OK);
    assert_int_equal(nw, 2);
    assert_int_equal(out.n, 10);
    assert_int_equal(tbert_make_windows(g_vocab, ids, 0, 5, 0, &out, starts, lens, &nw, &err), TBERT_OK);
    assert_int_equal(nw, 1);
    assert_int_equal(lens[0], 2);
    assert_int_equal(tbert_make_windows(g_vocab, ids, 9, 5, 0, &out, starts, lens, &nw, &err), TBERT_OK);
    assert_int_equal(nw, 3);
    assert_int_equal(tbert_make_windows(g_vocab, ids, 10, 2, 0, &out, starts, lens, &nw, &err), TBERT_E_ARG);
    /* windows of a real text cover exactly its tokens */
    const char *t = "one two three four five six seven eight nine ten eleven twelve thirteen";
    tbert_i32vec toks = {0};
    assert_int_equal(tbert_tokenize(g_vocab, t, strlen(t), &toks, &err), TBERT_OK);
    assert_int_equal(tbert_make_windows(g_vocab, toks.v, toks.n, 6, 8, &out, starts, lens, &nw, &err), TBERT_OK);
    size_t k = 0;
    for (int w = 0; w < nw; w++)
        for (int i = 1; i < lens[w] - 1; i++) assert_int_equal(out.v[starts[w] + (size_t)i], toks.v[k++]);
    assert_int_equal(k, toks.n);
    tbert_i32vec_free(&toks);
    tbert_i32vec_free(&out);
}

static void test_batch(void **state) {
    golden_set s = load_jsonl("data/tokenizer/edge_cases.jsonl");
    int n = (int)s.n;
    const char **texts = calloc(s.n, sizeof *texts);
    size_t *lens = calloc(s.n, sizeof *lens);
    for (int i = 0; i < n; i++) {
        texts[i] = (const char *)s.c[i].bytes;
        lens[i] = s.c[i].len;
    }
    tbert_error err;
    for (int threads = 1; threads <= 3; threads++) {
        for (int pad_to_max = 0; pad_to_max <= 1; pad_to_max++) {
            tbert_batch b;
            assert_int_equal(tbert_encode_batch(g_vocab, texts, lens, n, 32, pad_to_max, threads, &b, &err), TBERT_OK);
            assert_int_equal(b.B, n);
            int longest = 0;
            for (int i = 0; i < n; i++) {
                size_t want = s.c[i].n_ids <= 32 ? s.c[i].n_ids : 32;
                assert_int_equal(b.lengths[i], (int)want);
                if ((int)want > longest) longest = (int)want;
                const int32_t *row = b.ids + (size_t)i * (size_t)b.T;
                assert_memory_equal(row, s.c[i].ids, (want - 1) * sizeof *row);
                assert_int_equal(row[want - 1], 102);
                for (int t = (int)want; t < b.T; t++) assert_int_equal(row[t], 0);
            }
            assert_int_equal(b.T, pad_to_max ? 32 : longest);
            tbert_batch_free(&b);
        }
    }
    tbert_batch b;
    assert_int_equal(tbert_encode_batch(g_vocab, texts, lens, 0, 32, false, 2, &b, &err), TBERT_OK);
    assert_int_equal(b.B, 0);
    tbert_batch_free(&b);
    free(texts);
    free(lens);
    free_set(&s);
}

typedef struct {
    golden_set *s;
    size_t bad;
} thread_arg;

static void *tokenize_all(void *arg) {
    thread_arg *a = arg;
    tbert_i32vec out = {0};
    tbert_error err;
    for (int rep = 0; rep < 5; rep++) {
        for (size_t i = 0; i < a->s->n; i++) {
            golden_case *c = &a->s->c[i];
            if (tbert_encode(g_vocab, (const char *)c->bytes, c->len, NO_LIMIT, &out, &err) || out.n != c->n_ids ||
                memcmp(out.v, c->ids, out.n * sizeof *out.v))
                a->bad++;
        }
    }
    tbert_i32vec_free(&out);
    return NULL;
}

static void test_threads_share_vocab(void **state) {
    golden_set s = load_jsonl("data/tokenizer/edge_cases.jsonl");
    pthread_t t[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thread_arg){&s, 0};
        assert_int_equal(pthread_create(&t[i], NULL, tokenize_all, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].bad, 0);
    }
    free_set(&s);
}

static void test_vocab_files(void **state) {
    tbert_vocab *v = NULL;
    tbert_error err;
    assert_int_equal(tbert_vocab_load("/nonexistent/vocab.txt", NULL, &v, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/vocab.txt"));
    assert_null(v);
    char path[64];
    /* missing [UNK] */
    assert_null(tiny_vocab("[PAD]\n[CLS]\n[SEP]\nhello\n", NULL, path));
    assert_int_equal(tbert_vocab_load(path, NULL, &v, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "[UNK]"));
    assert_non_null(strstr(err.msg, path));
    unlink(path);
    assert_null(tiny_vocab("", NULL, NULL));
    /* CRLF lines, trailing spaces (trimmed, as HF's read_file does), a repeated token (last line wins),
     * no final newline */
    v = tiny_vocab("[PAD]\r\n[UNK]\r\n[CLS] \n[SEP]\t\nhi\nhi\nyo", NULL, NULL);
    assert_non_null(v);
    assert_int_equal(tbert_vocab_size(v), 7);
    assert_int_equal(tbert_vocab_cls(v), 2);
    assert_int_equal(tbert_vocab_id(v, "hi", 2), 5);
    assert_int_equal(tbert_vocab_id(v, "yo", 2), 6);
    expect_tokenize(v, "hi yo x", (int32_t[]){5, 6, 1}, 3);
    tbert_vocab_free(v);
    /* bad options */
    tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
    o.max_input_chars_per_word = 0;
    assert_null(tiny_vocab(TINY, &o, NULL));
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_model_dir_config(void **state) {
    char dir[] = "/tmp/tbert_tok_model_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[256], c[256];
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    snprintf(c, sizeof c, "%s/tokenizer_config.json", dir);
    write_text(p, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nHello\nhello\n");
    tbert_vocab *v = NULL;
    tbert_error err;
    /* no tokenizer_config.json: uncased defaults */
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_OK);
    expect_tokenize(v, "Hello", (int32_t[]){5}, 1);
    tbert_vocab_free(v);
    write_text(c, "{\"do_lower_case\": false, \"strip_accents\": null, \"tokenize_chinese_chars\": false}");
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_OK);
    assert_false(tbert_vocab_opts(v)->lowercase);
    assert_false(tbert_vocab_opts(v)->handle_chinese_chars);
    assert_int_equal(tbert_vocab_opts(v)->strip_accents, -1);
    expect_tokenize(v, "Hello", (int32_t[]){4}, 1);
    tbert_vocab_free(v);
    write_text(c, "{\"do_lower_case\": true, \"strip_accents\": false}");
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_OK);
    assert_int_equal(tbert_vocab_opts(v)->strip_accents, 0);
    tbert_vocab_free(v);
    write_text(c, "{\"do_lower_case\": \"yes\"}");
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "do_lower_case"));
    write_text(c, "{not json");
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "tokenizer_config.json"));
    unlink(c);
    unlink(p);
    assert_int_equal(tbert_vocab_load_model_dir(dir, &v, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "vocab.txt"));
    rmdir(dir);
}

static void test_unicode_exceptions(void **state) {
    /* the generated list is sorted and disjoint (binary search relies on it) */
    const uc_exception *e = uc_exception_table();
    size_t n = uc_exception_count();
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        assert_true(e[i].lo <= e[i].hi);
        if (i) assert_true(e[i - 1].hi < e[i].lo);
        assert_true((e[i].set & e[i].clear) == 0);
    }
    /* U+2E5D (Unicode 14) is punctuation for utf8proc but not for HF (issue 3's example) */
    assert_true(uc_flags_raw(0x2E5D) & UC_PUNCT);
    assert_false(uc_flags(0x2E5D) & UC_PUNCT);
    /* unassigned code points are not "other" for HF; private use is */
    assert_false(uc_flags(0x0378) & UC_OTHER);
    assert_true(uc_flags(0xE000) & UC_OTHER);
    assert_true(uc_flags(0x3000) & UC_WS);
    assert_true(uc_flags(0x4E2D) & UC_CJK);
    uint32_t l[2];
    assert_int_equal(uc_lower(0x1C89, l, true), 1);
    assert_int_equal(l[0], 0x1C8A); /* a Unicode 16 mapping HF knows */
}

int main(void) {
    char cache[PATH_MAX];
    tbert_cache_dir(cache, sizeof cache);
    snprintf(g_minilm_vocab, sizeof g_minilm_vocab, "%s/models/minilm/vocab.txt", cache);
    tbert_error err;
    if (!tbert_is_regular_file(g_minilm_vocab))
        tu_skip_external("test_tokenizer", "MiniLM's vocab.txt is not in the cache (models/fetch.sh minilm)");
    if (tbert_vocab_load(g_minilm_vocab, NULL, &g_vocab, &err)) {
        fprintf(stderr, "test_tokenizer: %s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_cases_ids),
        cmocka_unit_test(test_cased_cases_ids),
        cmocka_unit_test(test_edge_cases_normalizer),
        cmocka_unit_test(test_edge_cases_pretokenizer),
        cmocka_unit_test(test_wordpiece_unit),
        cmocka_unit_test(test_max_input_chars),
        cmocka_unit_test(test_normalizer_unit),
        cmocka_unit_test(test_pretokenizer_unit),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_special_literals),
        cmocka_unit_test(test_encode_truncation),
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_threads_share_vocab),
        cmocka_unit_test(test_vocab_files),
        cmocka_unit_test(test_model_dir_config),
        cmocka_unit_test(test_unicode_exceptions),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tbert_vocab_free(g_vocab);
    return rc;
}
