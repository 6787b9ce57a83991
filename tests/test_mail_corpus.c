/* Every raw message of the shared SpamAssassin corpus (6,046 files, ../shared/data; skip 77 when absent)
 * goes through the reader and the parser in-process: none crashes, each yields a record with valid UTF-8.
 * Then all of them are written into one mboxrd file (From lines escaped) and read back: the splitter must
 * return exactly the same messages at exactly the offsets they were written to. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mail_internal.h"
#include "testutil.h"
#include "tbert/mail.h"

static const char *const folders[] = {"easy_ham", "easy_ham_2", "hard_ham", "spam", "spam_2"};
static const int folder_counts[] = {2500, 1400, 250, 500, 1396};

/* The message as the mbox reader should hand it back: without its own leading "From " line. */
static void strip_from_line(const char **s, size_t *n) {
    if (*n >= 5 && !memcmp(*s, "From ", 5)) {
        const char *nl = memchr(*s, '\n', *n);
        size_t k = nl ? (size_t)(nl - *s) + 1 : *n;
        *s += k;
        *n -= k;
    }
}

/* mboxrd escaping: a line matching ^>*From gets one more '>' */
static void write_escaped(FILE *f, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const char *nl = memchr(s + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - s) + 1 : n;
        size_t q = i;
        while (q < e && s[q] == '>') q++;
        if (e - q >= 5 && !memcmp(s + q, "From ", 5)) fputc('>', f);
        fwrite(s + i, 1, e - i, f);
        i = e;
    }
}

static void test_corpus(void **state) {
    char root[1024];
    if (!tu_shared_path("mail/spamassassin", root, sizeof root)) fail_msg("shared corpus vanished during the test");
    char paths[5][1200];
    const char *pp[5];
    for (int i = 0; i < 5; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s", root, folders[i]);
        pp[i] = paths[i];
    }
    tbert_inputs *in;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(pp, 5, NULL, &in, &err), TBERT_OK);

    char mbox[] = "/tmp/tbert_corpus_XXXXXX";
    int fd = mkstemp(mbox);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    size_t cap = 8192, n = 0;
    long *offsets = malloc(cap * sizeof *offsets);
    char **expect = malloc(cap * sizeof *expect);
    size_t *expect_len = malloc(cap * sizeof *expect_len);
    assert_true(offsets && expect && expect_len);

    int per_folder[5] = {0}, with_id = 0, with_body = 0;
    tbert_input_item item;
    int r;
    while ((r = tbert_inputs_next(in, &item, &err)) == 1) {
        assert_null(item.error);
        assert_true(item.is_message);
        assert_int_equal(item.offset, 0);
        for (int i = 0; i < 5; i++) {
            size_t pl = strlen(paths[i]);
            if (!strncmp(item.source, paths[i], pl) && item.source[pl] == '/') per_folder[i]++;
        }
        tbert_message m;
        tbert_status st = tbert_message_parse(item.raw, item.raw_len, item.source, &m, &err);
        if (st != TBERT_OK) fail_msg("%s: %s", item.source, err.msg);
        assert_true(tbert_utf8_valid(m.body, strlen(m.body)));
        assert_true(tbert_utf8_valid(m.subject, strlen(m.subject)));
        assert_true(tbert_utf8_valid(m.from, strlen(m.from)));
        assert_non_null(strstr(m.evidence, "rcvd_hops:"));
        with_id += m.message_id != NULL;
        with_body += m.body[0] != '\0';
        tbert_message_free(&m);

        /* append to the mboxrd file */
        const char *s = item.raw;
        size_t len = item.raw_len;
        strip_from_line(&s, &len);
        assert_true(n < cap);
        offsets[n] = ftell(f);
        fprintf(f, "From corpus@example.org Mon Sep  2 10:00:%02zu 2002\n", n % 60);
        write_escaped(f, s, len);
        bool nl = len > 0 && s[len - 1] == '\n';
        if (!nl) fputc('\n', f);
        fputc('\n', f);
        expect[n] = malloc(len + 2);
        assert_non_null(expect[n]);
        memcpy(expect[n], s, len);
        if (!nl) expect[n][len++] = '\n';
        expect_len[n] = len;
        n++;
        tbert_input_item_free(&item);
    }
    assert_int_equal(r, 0);
    tbert_inputs_close(in);
    assert_int_equal(fclose(f), 0);
    for (int i = 0; i < 5; i++) assert_int_equal(per_folder[i], folder_counts[i]);
    assert_int_equal(n, 6046);
    fprintf(stderr, "corpus: %zu messages, %d with Message-ID, %d with body text\n", n, with_id, with_body);
    assert_true(with_body > 6000); /* a handful are attachment-only */

    /* read the mbox back */
    const char *mp[] = {mbox};
    assert_int_equal(tbert_inputs_open(mp, 1, NULL, &in, &err), TBERT_OK);
    size_t k = 0;
    while ((r = tbert_inputs_next(in, &item, &err)) == 1) {
        assert_true(k < n);
        assert_int_equal(item.offset, (uint64_t)offsets[k]);
        if (item.raw_len != expect_len[k] || memcmp(item.raw, expect[k], item.raw_len))
            fail_msg("mbox message %zu differs (%zu vs %zu bytes)", k, item.raw_len, expect_len[k]);
        k++;
        tbert_input_item_free(&item);
    }
    assert_int_equal(r, 0);
    assert_int_equal(k, n);
    tbert_inputs_close(in);
    unlink(mbox);
    for (size_t i = 0; i < n; i++) free(expect[i]);
    free(expect);
    free(expect_len);
    free(offsets);
}

int main(void) {
    char root[1024];
    if (!tu_shared_path("mail/spamassassin", root, sizeof root)) tu_skip_external("test_mail_corpus", "shared corpus mail/spamassassin");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_corpus)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
