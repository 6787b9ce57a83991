/* Every line of ../shared/data/sms/SMSSpamCollection (text column) against the ids Hugging Face
 * `tokenizers` gives (tests/data/tokenizer/sms_ids.txt, by line number), through tbert_encode untruncated,
 * truncated to 128, and through tbert_encode_batch with 2 threads. Exits 77 without MiniLM's vocab.txt or
 * the shared corpus. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/tokenizer.h"
#include "testutil.h"

typedef struct {
    const char **texts;
    size_t *lens;
    int32_t **ids;
    size_t *n_ids;
    int n;
    char *corpus, *golden;
} sms_set;

static sms_set g_sms;
static tbert_vocab *g_vocab;

static bool load_sms(const char *corpus_path, const char *golden_path, tbert_error *err) {
    size_t clen, glen;
    if (tbert_read_file(corpus_path, 0, &g_sms.corpus, &clen, err)) return false;
    if (tbert_read_file(golden_path, 0, &g_sms.golden, &glen, err)) return false;
    size_t lines = 0;
    for (size_t i = 0; i < clen; i++) lines += g_sms.corpus[i] == '\n';
    g_sms.texts = calloc(lines + 1, sizeof *g_sms.texts);
    g_sms.lens = calloc(lines + 1, sizeof *g_sms.lens);
    g_sms.ids = calloc(lines + 1, sizeof *g_sms.ids);
    g_sms.n_ids = calloc(lines + 1, sizeof *g_sms.n_ids);
    char *p = g_sms.corpus, *end = g_sms.corpus + clen;
    int n = 0;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *tab = memchr(p, '\t', (size_t)(le - p));
        char *t = tab ? tab + 1 : p;
        g_sms.texts[n] = t;
        g_sms.lens[n] = (size_t)(le - t);
        n++;
        p = le + 1;
    }
    g_sms.n = n;
    /* golden: "# comment" then "LINE<TAB>ids" */
    int got = 0;
    for (char *line = strtok(g_sms.golden, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *q;
        long ln = strtol(line, &q, 10);
        if (ln < 1 || ln > n || *q != '\t') return tbert_fail(err, TBERT_E_FORMAT, "%s: bad line", golden_path), false;
        size_t cnt = 1;
        for (char *s = q + 1; *s; s++) cnt += *s == ' ';
        int32_t *v = calloc(cnt, sizeof *v);
        size_t k = 0;
        for (char *s = q + 1; *s && k < cnt;) v[k++] = (int32_t)strtol(s, &s, 10);
        g_sms.ids[ln - 1] = v;
        g_sms.n_ids[ln - 1] = k;
        got++;
    }
    if (got != n) return tbert_fail(err, TBERT_E_FORMAT, "%s: %d lines for a corpus of %d", golden_path, got, n), false;
    return true;
}

static void print_mismatch(int line, const int32_t *want, size_t nw, const int32_t *got, size_t ng) {
    fprintf(stderr, "FIRST MISMATCH SMSSpamCollection line %d\n  text    : \"%.*s\"\n  expected:", line + 1,
            (int)g_sms.lens[line], g_sms.texts[line]);
    for (size_t i = 0; i < nw; i++) fprintf(stderr, " %d:%s", want[i], tbert_vocab_token(g_vocab, want[i]));
    fprintf(stderr, "\n  got     :");
    for (size_t i = 0; i < ng; i++) fprintf(stderr, " %d:%s", got[i], tbert_vocab_token(g_vocab, got[i]));
    fprintf(stderr, "\n");
}

static void test_sms_untruncated(void **state) {
    tbert_i32vec out = {0};
    tbert_error err;
    int bad = 0;
    for (int i = 0; i < g_sms.n; i++) {
        assert_int_equal(tbert_encode(g_vocab, g_sms.texts[i], g_sms.lens[i], 1 << 24, &out, &err), TBERT_OK);
        if (out.n != g_sms.n_ids[i] || memcmp(out.v, g_sms.ids[i], out.n * sizeof *out.v))
            if (bad++ == 0) print_mismatch(i, g_sms.ids[i], g_sms.n_ids[i], out.v, out.n);
    }
    fprintf(stderr, "SMS: %d lines, %d mismatches\n", g_sms.n, bad);
    assert_int_equal(g_sms.n, 5574);
    assert_int_equal(bad, 0);
    tbert_i32vec_free(&out);
}

static void test_sms_batch_truncated(void **state) {
    tbert_batch b;
    tbert_error err;
    assert_int_equal(tbert_encode_batch(g_vocab, g_sms.texts, g_sms.lens, g_sms.n, 128, false, 2, &b, &err), TBERT_OK);
    int bad = 0, truncated = 0;
    for (int i = 0; i < g_sms.n; i++) {
        size_t nw = g_sms.n_ids[i] <= 128 ? g_sms.n_ids[i] : 128;
        truncated += g_sms.n_ids[i] > 128;
        const int32_t *row = b.ids + (size_t)i * (size_t)b.T;
        bool ok = (size_t)b.lengths[i] == nw && !memcmp(row, g_sms.ids[i], (nw - 1) * sizeof *row) && row[nw - 1] == 102;
        if (!ok && bad++ == 0) print_mismatch(i, g_sms.ids[i], nw, row, (size_t)b.lengths[i]);
    }
    fprintf(stderr, "SMS batch (max_len 128, 2 threads): %d lines, %d truncated, %d mismatches\n", g_sms.n, truncated, bad);
    assert_true(truncated > 0);
    assert_int_equal(bad, 0);
    tbert_batch_free(&b);
}

int main(void) {
    char cache[PATH_MAX], vocab[PATH_MAX + 64], corpus[PATH_MAX], golden[PATH_MAX];
    tbert_cache_dir(cache, sizeof cache);
    snprintf(vocab, sizeof vocab, "%s/models/minilm/vocab.txt", cache);
    if (!tbert_is_regular_file(vocab))
        tu_skip_external("test_tokenizer_sms", "MiniLM's vocab.txt is not in the cache (models/fetch.sh minilm)");
    if (!tu_shared_path("sms/SMSSpamCollection", corpus, sizeof corpus))
        tu_skip_external("test_tokenizer_sms", "shared corpus sms/SMSSpamCollection");
    tu_fixture("data/tokenizer/sms_ids.txt", golden, sizeof golden);
    tbert_error err;
    if (tbert_vocab_load(vocab, NULL, &g_vocab, &err) || !load_sms(corpus, golden, &err)) {
        fprintf(stderr, "test_tokenizer_sms: %s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sms_untruncated),
        cmocka_unit_test(test_sms_batch_truncated),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < g_sms.n; i++) free(g_sms.ids[i]);
    free(g_sms.ids);
    free(g_sms.n_ids);
    free(g_sms.texts);
    free(g_sms.lens);
    free(g_sms.corpus);
    free(g_sms.golden);
    tbert_vocab_free(g_vocab);
    return rc;
}
