/* tbert serve's pieces without a server: the score in SpamAssassin's terms (against the formula in float64
 * written out here, atol 1e-9), its one-decimal form, our header lines, the header rewrite (a table of
 * hand-written messages with their expected bytes), the allow-list, and the learned.jsonl append (read back:
 * JSON fields, sha256, base64 of the message, mode 0600, two appends = two lines). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <glib.h>

#include "serve.h"
#include "testutil.h"
#include "tbert/fileio.h"

static double formula(double p, double t) { /* 5 + logit(p) - logit(t), clamped: the reference */
    double s = 5 + log(p / (1 - p)) - log(t / (1 - t));
    return s > 50 ? 50 : s < -50 ? -50 : s;
}

static void test_score_formula(void **state) {
    const double ps[] = {0.001, 0.02, 0.3, 0.5, 0.51, 0.7, 0.9, 0.999, 0.999999};
    const double ts[] = {0.05, 0.3, 0.5, 0.544, 0.9};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) {
            bool spam = ps[i] >= ts[j];
            double got = serve_sa_score(ps[i], ts[j], spam), ref = formula(ps[i], ts[j]);
            if (fabs(got - ref) > 1e-9) fail_msg("p=%g t=%g: %.12f, formula %.12f", ps[i], ts[j], got, ref);
            assert_true((got >= 5) == spam);
        }
    /* the ends: clamped, never NaN */
    assert_true(serve_sa_score(1.0, 0.5, true) == 50);
    assert_true(serve_sa_score(0.0, 0.5, false) == -50);
    assert_true(serve_sa_score(1e-300, 0.5, false) == -50);
    assert_true(serve_sa_score(0.5, 0.5, true) == 5);
    /* the head's label decides a tie that float rounding might break either way */
    assert_true(serve_sa_score(0.5, 0.5, false) < 5);
    assert_true(serve_sa_score(0.4999999, 0.5, true) == 5);
}

static void test_format_score(void **state) {
    static const struct {
        double s;
        bool spam;
        const char *want;
    } cases[] = {
        {7.25, true, "7.3"},   {5.0, true, "5.0"},   {4.96, false, "4.9"}, {4.94, false, "4.9"}, {4.85, false, "4.9"},
        {-0.04, false, "0.0"}, {-3.46, false, "-3.5"}, {50, true, "50.0"}, {-50, false, "-50.0"}, {12.34, true, "12.3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[16];
        serve_format_score(cases[i].s, cases[i].spam, out);
        if (strcmp(out, cases[i].want)) fail_msg("%g (%s): '%s', want '%s'", cases[i].s, cases[i].spam ? "spam" : "ham", out, cases[i].want);
    }
}

static void test_our_headers(void **state) {
    serve_result r = {.p = 0.9, .threshold = 0.5, .spam = true, .symbol = SERVE_SPAM};
    r.score = serve_sa_score(r.p, r.threshold, true); /* 7.197 */
    strcpy(r.head_id, "0123456789abcdef");
    char out[1024];
    assert_true(serve_our_headers(&r, "9.9", out, sizeof out) > 0);
    assert_string_equal(out, "X-Spam-Flag: YES\r\n"
                             "X-Spam-Status: Yes, score=7.2 required=5.0 tests=TBERT_SPAM autolearn=no version=tbert-9.9\r\n"
                             "X-Spam-Level: *******\r\n"
                             "X-TBert-Spam: Yes, score=0.9000, threshold=0.5000, head=0123456789abcdef\r\n");
    r = (serve_result){.p = 0.01, .threshold = 0.5, .spam = false, .symbol = SERVE_UNSURE, .truncated = true};
    r.score = serve_sa_score(r.p, r.threshold, false); /* 0.405 */
    strcpy(r.head_id, "ff");
    assert_true(serve_our_headers(&r, "1", out, sizeof out) > 0);
    assert_non_null(strstr(out, "X-Spam-Flag: NO\r\n"));
    assert_non_null(strstr(out, "X-Spam-Status: No, score=0.4 required=5.0 tests=TBERT_UNSURE "));
    assert_non_null(strstr(out, "X-Spam-Level: \r\n"));
    assert_non_null(strstr(out, "X-TBert-Spam: Unsure, score=0.0100, threshold=0.5000, head=ff, truncated\r\n"));
    assert_int_equal(serve_our_headers(&r, "1", out, 20), 0); /* does not fit: 0, never a cut line */
    assert_true(serve_is_our_header("x-spam-flag", 11));
    assert_true(serve_is_our_header("X-TBERT-anything", 16));
    assert_false(serve_is_our_header("X-TBert-", 8));
    assert_false(serve_is_our_header("X-Spam-Flagged", 14));
    assert_false(serve_is_our_header("X-Spam-Score", 12));
}

static void test_rewrite(void **state) {
    static const char *OURS = "X-Spam-Flag: NO\r\nX-TBert-Spam: No\r\n";
    static const struct {
        const char *in;
        bool head_only;
        const char *want;
    } cases[] = {
        {"A: 1\nX-Spam-Flag: YES\nB: 2\n\nbody\nX-Spam-Flag: body stays\n", false,
         "A: 1\nB: 2\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\nbody\nX-Spam-Flag: body stays\n"},
        {"A: 1\r\nx-tbert-spam: forged\r\n\r\nbody\r\n", false, "A: 1\r\nX-Spam-Flag: NO\r\nX-TBert-Spam: No\r\n\r\nbody\r\n"},
        {"X-Spam-Status: No,\n\tscore=1\n  tests=X\nA: 1\n folded a\n\nb", false, "A: 1\n folded a\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\nb"},
        {"A: 1\nB: 2", false, "A: 1\nB: 2\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\n"},
        {"just text, no header\nmore\n", false, "X-Spam-Flag: NO\nX-TBert-Spam: No\n\njust text, no header\nmore\n"},
        {"A: 1\n\nbody\n", true, "A: 1\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\n"},
        {"", false, "X-Spam-Flag: NO\nX-TBert-Spam: No\n\n"},
        {"From a@b Mon Sep  2 10:00:00 2002\nA: 1\n\nb", false, "From a@b Mon Sep  2 10:00:00 2002\nA: 1\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\nb"},
        {"X-Spam-Level: ***\nX-Spam-Level: ****\n\n", false, "X-Spam-Flag: NO\nX-TBert-Spam: No\n\n"},
        {"Subject : obsolete\nX-Spam-Flag : YES\nA: 1\n\nb", false, "Subject : obsolete\nA: 1\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\nb"},
        {"A: 1\nnot a header line\nB: 2\n", false, "A: 1\nX-Spam-Flag: NO\nX-TBert-Spam: No\n\nnot a header line\nB: 2\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        char *o = serve_rewrite_message(cases[i].in, strlen(cases[i].in), OURS, cases[i].head_only, &n);
        assert_non_null(o);
        if (n != strlen(cases[i].want) || memcmp(o, cases[i].want, n))
            fail_msg("case %zu: got '%.*s'\nwant '%s'", i, (int)n, o, cases[i].want);
        free(o);
    }
    /* with nothing to add, a message without our headers comes back byte for byte */
    const char *plain = "A: 1\r\nB: 2\r\n\r\nbody\r\n";
    size_t n;
    char *o = serve_rewrite_message(plain, strlen(plain), "", false, &n);
    assert_int_equal(n, strlen(plain));
    assert_memory_equal(o, plain, n);
    free(o);
}

static void test_allow(void **state) {
    serve_opts o;
    memset(&o, 0, sizeof o);
    assert_true(serve_parse_cidr("10.1.0.0/16", &o.allow[o.n_allow++]));
    assert_true(serve_parse_cidr("2001:db8::/32", &o.allow[o.n_allow++]));
    assert_true(serve_parse_cidr("192.0.2.7", &o.allow[o.n_allow++]));
    serve_cidr c;
    assert_false(serve_parse_cidr("10.0.0.0/33", &c));
    assert_false(serve_parse_cidr("10.0.0/8", &c));
    assert_false(serve_parse_cidr("example.org", &c));
    struct {
        const char *a;
        bool ok;
    } cases[] = {{"127.0.0.1", true},   {"127.9.9.9", true},   {"10.1.200.3", true}, {"10.2.0.1", false},
                 {"192.0.2.7", true},   {"192.0.2.8", false},  {"::1", true},        {"2001:db8:1::5", true},
                 {"2001:db9::1", false}, {"::ffff:10.1.2.3", true}, {"::ffff:8.8.8.8", false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        if (strchr(cases[i].a, ':')) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            s6->sin6_family = AF_INET6;
            assert_int_equal(inet_pton(AF_INET6, cases[i].a, &s6->sin6_addr), 1);
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            s4->sin_family = AF_INET;
            assert_int_equal(inet_pton(AF_INET, cases[i].a, &s4->sin_addr), 1);
        }
        if (serve_peer_allowed(&o, (struct sockaddr *)&ss) != cases[i].ok) fail_msg("%s: want %d", cases[i].a, cases[i].ok);
    }
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_true(serve_peer_allowed(&o, &un));
}

static void test_learn_append(void **state) {
    char dir[] = "/tmp/tbert_learn_XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char msg1[] = "Subject: one\n\nbuy now\n", msg2[] = "Subject: two\r\n\r\n\x01\xff bytes";
    char sha[65];
    tbert_error err;
    assert_int_equal(tbert_learn_append(dir, "learn", "spam", msg1, sizeof msg1 - 1, false, "spamd", sha, &err), TBERT_OK);
    char want[65];
    tbert_sha256_hex(msg1, sizeof msg1 - 1, want);
    assert_string_equal(sha, want);
    assert_int_equal(tbert_learn_append(dir, "forget", "ham", msg2, sizeof msg2 - 1, true, "http", NULL, &err), TBERT_OK);
    char path[256], *buf;
    size_t len;
    snprintf(path, sizeof path, "%s/learned.jsonl", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(tbert_read_file(path, 0, &buf, &len, &err), TBERT_OK);
    char *nl = strchr(buf, '\n');
    assert_non_null(nl);
    assert_int_equal(buf[len - 1], '\n');
    *nl = '\0';
    const char *lines[2] = {buf, nl + 1};
    const char *msgs[2] = {msg1, msg2};
    size_t lens[2] = {sizeof msg1 - 1, sizeof msg2 - 1};
    const char *acts[2] = {"learn", "forget"}, *cls[2] = {"spam", "ham"}, *via[2] = {"spamd", "http"};
    for (int i = 0; i < 2; i++) {
        cJSON *j = cJSON_Parse(lines[i]);
        assert_non_null(j);
        assert_string_equal(cJSON_GetObjectItem(j, "action")->valuestring, acts[i]);
        assert_string_equal(cJSON_GetObjectItem(j, "class")->valuestring, cls[i]);
        assert_string_equal(cJSON_GetObjectItem(j, "via")->valuestring, via[i]);
        assert_int_equal((size_t)cJSON_GetObjectItem(j, "bytes")->valuedouble, lens[i]);
        assert_true(cJSON_IsBool(cJSON_GetObjectItem(j, "truncated")));
        assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(j, "truncated")), i == 1);
        tbert_sha256_hex(msgs[i], lens[i], want);
        assert_string_equal(cJSON_GetObjectItem(j, "sha256")->valuestring, want);
        gsize dl;
        guchar *dec = g_base64_decode(cJSON_GetObjectItem(j, "message_b64")->valuestring, &dl);
        assert_int_equal(dl, lens[i]);
        assert_memory_equal(dec, msgs[i], dl);
        g_free(dec);
        cJSON_Delete(j);
    }
    free(buf);
    unlink(path);
    rmdir(dir);
    /* a folder that is not there: one line naming the file */
    assert_int_not_equal(tbert_learn_append("/nonexistent/dir", "learn", "spam", "x", 1, false, "t", NULL, &err), TBERT_OK);
    assert_non_null(strstr(err.msg, "/nonexistent/dir/learned.jsonl"));
    assert_null(strchr(err.msg, '\n'));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_score_formula), cmocka_unit_test(test_format_score), cmocka_unit_test(test_our_headers),
        cmocka_unit_test(test_rewrite),       cmocka_unit_test(test_allow),        cmocka_unit_test(test_learn_append),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
