/* Mail reading: every hand-made message in tests/data/mail (written by make_messages.py there) decodes to
 * exactly the text its design says; mbox splitting and >From unescaping, Maildir, gzip, stdin, folders in
 * byte-sorted order, shards, the size cap; and a seeded mutation sweep that must never crash. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mail_internal.h"
#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/mail.h"

typedef struct {
    const char *file, *subject, *body, *message_id;
    const char *evidence[3]; /* tokens that must be present */
} expect;

/* The expected texts, written from each message's design (see make_messages.py), not from a run. */
static const expect cases[] = {
    {"qp_latin1.eml", "latin1", "Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, softbreak here.\nEquals = sign", "qp1@example.org",
     {"charset:iso-8859-1", "has:message_id", "body:plain"}},
    {"cp1252_8bit.eml", "cp1252", "\xe2\x80\x9cSmart quotes\xe2\x80\x9d cost \xe2\x82\xac 5 \xe2\x80\x93 today", NULL,
     {"charset:windows-1252", "no:message_id", NULL}},
    {"utf8_base64.eml", "utf8", "Gr\xc3\xbc\xc3\x9f" "e aus M\xc3\xbcnchen \xe2\x80\x94 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac\nSecond line",
     NULL, {"charset:utf-8", NULL, NULL}},
    {"shift_jis.eml", "\xe4\xbb\xb6\xe5\x90\x8d",
     "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf\xe4\xb8\x96\xe7\x95\x8c", NULL, {"charset:shift_jis", NULL, NULL}},
    {"rfc2047.eml", "Gr\xc3\xbc\xc3\x9f" "e und Caf\xc3\xa9 !", "hello", NULL,
     {"from_domain:mail.example.de", "mailer:microsoft_outlook_express", "no:date"}},
    {"alternative.eml", "alt", "Plain version.", NULL, {"ctype:multipart_alternative", "attach:0", NULL}},
    {"nested.eml", "nested", "Nested plain \xe2\x82\xac" "100.", NULL, {"attach:2plus", "ctype:multipart_mixed", NULL}},
    {"html_only.eml", "html", "First paragraph & more\nSecond line\nThird line caf\xc3\xa9\nBuy now\ncell one cell two", NULL,
     {"body:html", "ctype:text_html", NULL}},
    {"attachment_only.eml", "att", "", NULL, {"body:none", "attach:1", NULL}},
    {"broken_truncated.eml", "broken a", "Survives truncation.", NULL, {NULL, NULL, NULL}},
    {"broken_boundary.eml", "broken b", "--other\nContent-Type: text/plain\n\nText under the wrong boundary.\n--other--", NULL,
     {NULL, NULL, NULL}},
    {"crlf.eml", "crlf", "Line onestill one.\nLine two.", NULL, {NULL, NULL, NULL}},
    {"bad_bytes.eml", "bad", "ok \xc3\xa9 nul here bad\xef\xbf\xbd", NULL, {"charset:x-no-such-charset", NULL, NULL}},
};

static char *read_test_file(const char *rel, size_t *len) {
    char p[1024], q[1100];
    snprintf(q, sizeof q, "data/mail/%s", rel);
    tu_tests_path(q, p, sizeof p);
    char *buf;
    tbert_error err;
    if (tbert_read_file(p, 0, &buf, len, &err) != TBERT_OK) fail_msg("%s", err.msg);
    return buf;
}

static bool has_token(const char *ev, const char *tok) {
    size_t n = strlen(tok);
    for (const char *p = ev; (p = strstr(p, tok)) != NULL; p++)
        if ((p == ev || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
    return false;
}

static void test_handmade_messages(void **state) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const expect *c = &cases[i];
        size_t len;
        char *raw = read_test_file(c->file, &len);
        tbert_message m;
        tbert_error err;
        assert_int_equal(tbert_message_parse(raw, len, c->file, &m, &err), TBERT_OK);
        if (strcmp(m.body, c->body) || strcmp(m.subject, c->subject))
            fail_msg("%s: body [%s] subject [%s]", c->file, m.body, m.subject);
        if (c->message_id) assert_string_equal(m.message_id, c->message_id);
        else assert_null(m.message_id);
        for (int k = 0; k < 3; k++)
            if (c->evidence[k] && !has_token(m.evidence, c->evidence[k]))
                fail_msg("%s: evidence lacks %s: %s", c->file, c->evidence[k], m.evidence);
        assert_true(tbert_utf8_valid(m.body, strlen(m.body)));
        tbert_message_free(&m);
        free(raw);
    }
}

static void test_headers_decoded(void **state) {
    size_t len;
    char *raw = read_test_file("rfc2047.eml", &len);
    tbert_message m;
    tbert_error err;
    assert_int_equal(tbert_message_parse(raw, len, "rfc2047.eml", &m, &err), TBERT_OK);
    assert_string_equal(m.from, "J\xc3\xbcrgen M\xc3\xbcller <jm@Mail.Example.DE>");
    assert_true(has_token(m.evidence, "from_tld:de"));
    assert_true(has_token(m.evidence, "rcvd_hops:0"));
    tbert_message_free(&m);
    free(raw);
    /* a leading mbox "From " line is not a header; Received hops are counted */
    const char *msg = "From x@y Mon Sep  2 10:00:00 2002\nReceived: from relay.mx.Example.COM (relay [10.0.0.1]) by b\n"
                      "Received: b\nReceived: c\nSubject: Re: hi\nUser-Agent: Mutt/1.5.4i\nX-Spam-Status: No\n"
                      "X-Razor-Id: 1234\nX-SpamCop-Checked: 1\nX-MailScanner: clean\nX-Virus-Scanned: yes\n"
                      "Message-ID: <abc@Host.Example.ORG>\nTo: a@x, b@y, c@z\nReturn-Path: <bounce@lists.example.net>\n"
                      "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ok 12345 -a-b- $x$\n\nbody\n";
    assert_int_equal(tbert_message_parse(msg, strlen(msg), "m", &m, &err), TBERT_OK);
    assert_string_equal(m.subject, "Re: hi");
    assert_string_equal(m.body, "body");
    assert_true(has_token(m.evidence, "rcvd_hops:3"));
    assert_true(has_token(m.evidence, "mailer:mutt"));
    assert_true(has_token(m.evidence, "rcvd_from:example.com"));
    assert_true(has_token(m.evidence, "hdr:user-agent"));
    assert_true(has_token(m.evidence, "msgid_domain:host.example.org"));
    assert_true(has_token(m.evidence, "return_path_domain:lists.example.net"));
    assert_true(has_token(m.evidence, "to_count:2-5"));
    assert_true(has_token(m.evidence, "subj:reply"));
    /* upstream filters' verdicts never become evidence */
    assert_null(strstr(m.evidence, "x-spam"));
    assert_null(strstr(m.evidence, "x-razor"));
    assert_null(strstr(m.evidence, "x-mailscanner"));
    assert_null(strstr(m.evidence, "x-virus"));
    /* the header words, in header order: runs of [A-Za-z0-9.$_@-] trimmed to letters/digits at both ends,
     * lowercased; all-digit words, words over 40 bytes and upstream filters' headers left out */
    GString *words = g_string_new("");
    for (const char *p = m.evidence; *p;) {
        const char *e = strchr(p, ' ');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 2 && !strncmp(p, "h.", 2)) g_string_append_printf(words, "%s%.*s", words->len ? " " : "", (int)n, p);
        p += n + (e != NULL);
    }
    assert_string_equal(words->str,
                        "h.received:from h.received:relay.mx.example.com h.received:relay h.received:10.0.0.1 h.received:by "
                        "h.received:b h.received:b h.received:c h.subject:re h.subject:hi h.user-agent:mutt "
                        "h.user-agent:1.5.4i h.message-id:abc@host.example.org h.to:a@x h.to:b@y h.to:c@z "
                        "h.return-path:bounce@lists.example.net h.x-long:ok h.x-long:a-b h.x-long:x");
    g_string_free(words, TRUE);
    tbert_message_free(&m);
    /* empty input: an error naming the message, no crash */
    assert_int_equal(tbert_message_parse("\n\n", 2, "empty.eml", &m, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "empty.eml"));
}

static void test_html_to_text(void **state) {
    const char *h = "<p>a<script>bad()</script>b</p><style>x{}</style><ul><li>one</li><li>two</li></ul>Vi<b>agra</b>";
    char *t = tbert_html_to_text(h, strlen(h));
    assert_non_null(t);
    assert_string_equal(t, "ab\none\ntwo\nViagra");
    free(t);
    /* 100 nested pairs (depth 200) keep their text; 20,000 (beyond libxml2's depth limit) must not crash */
    size_t sizes[2] = {100, 20000};
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k], len = 0;
        char *deep = malloc(n * 8 + 16);
        assert_non_null(deep);
        for (size_t i = 0; i < n; i++) len += (size_t)sprintf(deep + len, "<div><b>");
        len += (size_t)sprintf(deep + len, "deep");
        t = tbert_html_to_text(deep, len);
        assert_non_null(t);
        if (k == 0) assert_string_equal(t, "deep");
        free(t);
        free(deep);
    }
    t = tbert_html_to_text("", 0);
    assert_string_equal(t, "");
    free(t);
}

/* ---- inputs ---- */

typedef struct {
    char *source[16], *raw[16];
    uint64_t offset[16];
    size_t len[16];
    bool truncated[16];
    int n;
} items;

static void collect_items(const char *const *paths, int n, const tbert_input_opts *o, items *it) {
    memset(it, 0, sizeof *it);
    tbert_inputs *in;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(paths, n, o, &in, &err), TBERT_OK);
    tbert_input_item item;
    int r;
    while ((r = tbert_inputs_next(in, &item, &err)) == 1) {
        assert_true(it->n < 16);
        assert_null(item.error);
        it->source[it->n] = strdup(item.source);
        it->raw[it->n] = item.is_message ? strndup(item.raw, item.raw_len) : strndup(item.text, item.text_len);
        it->offset[it->n] = item.offset;
        it->len[it->n] = item.is_message ? item.raw_len : item.text_len;
        it->truncated[it->n] = item.truncated;
        it->n++;
        tbert_input_item_free(&item);
    }
    assert_int_equal(r, 0);
    uint64_t done, total;
    tbert_inputs_progress(in, &done, &total);
    if (!o || !o->shard_n) assert_true(done == total);
    tbert_inputs_close(in);
}

static void items_free(items *it) {
    for (int i = 0; i < it->n; i++) {
        free(it->source[i]);
        free(it->raw[i]);
    }
}

static const char *ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix) ? s : NULL;
}

static void check_three(const items *it, const char *file_bytes, bool check_offsets) {
    assert_int_equal(it->n, 3);
    assert_non_null(strstr(it->raw[0], "Subject: one\n"));
    assert_non_null(ends_with(it->raw[0], "\n\nFirst body.\n")); /* the separating blank line is dropped */
    assert_string_equal(it->raw[1], "From: bob@example.org\nSubject: two\nMessage-ID: <m2@x>\n\n"
                                    "From the desk of Bob.\n>From quoted twice.\n"
                                    "From here on, not a separator (no blank line, no weekday).\n");
    assert_string_equal(it->raw[2], "From: carol@example.org\nSubject: three\n\nThird body.\n");
    if (check_offsets) {
        assert_int_equal(it->offset[0], 0);
        assert_int_equal(it->offset[1], (uint64_t)(strstr(file_bytes, "From bob@") - file_bytes));
        assert_int_equal(it->offset[2], (uint64_t)(strstr(file_bytes, "From carol@") - file_bytes));
    }
}

static void test_mbox(void **state) {
    char p[1024];
    tu_tests_path("data/mail/three.mbox", p, sizeof p);
    size_t len;
    char *bytes = read_test_file("three.mbox", &len);
    const char *paths[] = {p};
    items it;
    collect_items(paths, 1, NULL, &it);
    check_three(&it, bytes, true);
    for (int i = 0; i < 3; i++) assert_string_equal(it.source[i], p);
    /* each message parses; Message-IDs come through */
    tbert_message m;
    tbert_error err;
    assert_int_equal(tbert_message_parse(it.raw[1], it.len[1], "m2", &m, &err), TBERT_OK);
    assert_string_equal(m.message_id, "m2@x");
    assert_string_equal(m.body, "From the desk of Bob.\n>From quoted twice.\nFrom here on, not a separator (no blank line, no weekday).");
    tbert_message_free(&m);
    items_free(&it);

    /* the same mbox gzip'd, with CRLF line ends: same messages (offsets count uncompressed bytes) */
    char dir[] = "/tmp/tbert_mail_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char gzp[1100];
    snprintf(gzp, sizeof gzp, "%s/three.mbox.gz", dir);
    gzFile gz = gzopen(gzp, "wb");
    assert_non_null(gz);
    assert_int_equal(gzwrite(gz, bytes, (unsigned)len), (int)len);
    assert_int_equal(gzclose(gz), Z_OK);
    const char *gpaths[] = {gzp};
    collect_items(gpaths, 1, NULL, &it);
    check_three(&it, bytes, true);
    items_free(&it);

    /* size cap: a 40-byte cap truncates every message and says so */
    tbert_input_opts o = {.max_message_bytes = 40};
    collect_items(paths, 1, &o, &it);
    assert_int_equal(it.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(it.len[i], 40);
        assert_true(it.truncated[i]);
    }
    items_free(&it);
    unlink(gzp);

    /* a 3 MiB message between two small ones, cap 1 MiB: it is cut (and says so), its neighbours are whole */
    char big[1100];
    snprintf(big, sizeof big, "%s/big.mbox", dir);
    FILE *fp = fopen(big, "wb");
    assert_non_null(fp);
    fputs("From a@x Mon Sep  2 10:00:00 2002\nSubject: a\n\nsmall a\n\n", fp);
    fputs("From b@x Mon Sep  2 10:00:00 2002\nSubject: b\n\n", fp);
    for (int i = 0; i < 3 * 16384; i++) fputs("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n", fp);
    fputs("\nFrom c@x Mon Sep  2 10:00:00 2002\nSubject: c\n\nsmall c\n", fp);
    fclose(fp);
    const char *bpaths[] = {big};
    tbert_input_opts cap = {.max_message_bytes = 1 << 20};
    collect_items(bpaths, 1, &cap, &it);
    assert_int_equal(it.n, 3);
    assert_string_equal(it.raw[0], "Subject: a\n\nsmall a\n");
    assert_int_equal(it.len[1], 1 << 20);
    assert_true(it.truncated[1]);
    assert_false(it.truncated[0] || it.truncated[2]);
    assert_string_equal(it.raw[2], "Subject: c\n\nsmall c\n");
    items_free(&it);
    unlink(big);
    rmdir(dir);
    free(bytes);
}

static void test_maildir_and_order(void **state) {
    char p[1024];
    tu_tests_path("data/mail/maildir", p, sizeof p);
    const char *paths[] = {p};
    items it;
    collect_items(paths, 1, NULL, &it);
    assert_int_equal(it.n, 2); /* tmp/ skipped */
    assert_non_null(ends_with(it.source[0], "/cur/1000.a:2,S"));
    assert_non_null(ends_with(it.source[1], "/new/1001.b"));
    assert_int_equal(it.offset[0], 0);
    assert_string_equal(it.raw[1], "From: b@example.org\nSubject: new one\n\nin new\n");
    items_free(&it);

    /* byte-sorted path order: "d/a.txt" (0x2E) before "d/a/b" (0x2F) before "d/b"; hidden files skipped */
    char dir[] = "/tmp/tbert_order_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char f[1200];
    const char *names[] = {"b", "a.txt", "a/b", ".hidden"};
    snprintf(f, sizeof f, "%s/a", dir);
    assert_int_equal(mkdir(f, 0755), 0);
    for (int i = 0; i < 4; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, names[i]);
        FILE *fp = fopen(f, "w");
        assert_non_null(fp);
        fprintf(fp, "Subject: %s\n\nx\n", names[i]);
        fclose(fp);
    }
    const char *dpaths[] = {dir};
    collect_items(dpaths, 1, NULL, &it);
    assert_int_equal(it.n, 3);
    assert_non_null(ends_with(it.source[0], "/a.txt"));
    assert_non_null(ends_with(it.source[1], "/a/b"));
    assert_non_null(ends_with(it.source[2], "/b"));
    items_free(&it);
    for (int i = 0; i < 4; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, names[i]);
        unlink(f);
    }
    snprintf(f, sizeof f, "%s/a", dir);
    rmdir(f);
    rmdir(dir);
}

/* Symlinks back to a folder on the current path are not followed again (one such link used to repeat every
 * message 33 times, two made the walk grow exponentially); an empty folder gives no items and no error. */
static void test_symlink_loops_and_empty_folder(void **state) {
    char dir[] = "/tmp/tbert_loop_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char f[1200], l[1200];
    snprintf(f, sizeof f, "%s/l", dir);
    assert_int_equal(mkdir(f, 0755), 0);
    snprintf(f, sizeof f, "%s/msg", dir);
    FILE *fp = fopen(f, "w");
    assert_non_null(fp);
    fputs("Subject: once\n\nbody\n", fp);
    fclose(fp);
    snprintf(l, sizeof l, "%s/l/u", dir);
    assert_int_equal(symlink("..", l), 0);
    snprintf(l, sizeof l, "%s/l/v", dir);
    assert_int_equal(symlink("..", l), 0);
    const char *paths[] = {dir};
    items it;
    collect_items(paths, 1, NULL, &it);
    assert_int_equal(it.n, 1);
    assert_non_null(ends_with(it.source[0], "/msg"));
    items_free(&it);

    char empty[] = "/tmp/tbert_empty_XXXXXX";
    assert_non_null(mkdtemp(empty));
    const char *epaths[] = {empty};
    collect_items(epaths, 1, NULL, &it);
    assert_int_equal(it.n, 0);
    items_free(&it);
    rmdir(empty);
    unlink(f);
    snprintf(l, sizeof l, "%s/l/u", dir);
    unlink(l);
    snprintf(l, sizeof l, "%s/l/v", dir);
    unlink(l);
    snprintf(f, sizeof f, "%s/l", dir);
    rmdir(f);
    rmdir(dir);
}

static void test_shards(void **state) {
    char a[1024], b[1024];
    tu_tests_path("data/mail/three.mbox", a, sizeof a);
    tu_tests_path("data/mail/maildir", b, sizeof b);
    const char *paths[] = {a, b};
    items all;
    collect_items(paths, 2, NULL, &all);
    assert_int_equal(all.n, 5);
    int seen[5] = {0};
    for (int k = 0; k < 3; k++) {
        tbert_input_opts o = {.shard_k = k, .shard_n = 3};
        items it;
        collect_items(paths, 2, &o, &it);
        for (int i = 0; i < it.n; i++) {
            int match = -1;
            for (int j = 0; j < all.n; j++)
                if (!strcmp(all.source[j], it.source[i]) && all.offset[j] == it.offset[i]) match = j;
            assert_true(match >= 0);
            assert_int_equal(match % 3, k); /* item index modulo N */
            seen[match]++;
        }
        items_free(&it);
    }
    for (int j = 0; j < 5; j++) assert_int_equal(seen[j], 1);
    items_free(&all);
    tbert_input_opts bad = {.shard_k = 3, .shard_n = 3};
    tbert_inputs *in;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(paths, 2, &bad, &in, &err), TBERT_E_ARG);
}

static void test_tables_stdin_missing(void **state) {
    char dir[] = "/tmp/tbert_tin_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char t[1100], m[1100];
    snprintf(t, sizeof t, "%s/x.tsv", dir);
    snprintf(m, sizeof m, "%s/one.eml", dir);
    FILE *fp = fopen(t, "w");
    fputs("ham\thello\nspam\tbuy now\nham\tbye\n", fp); /* "ham" repeats: no header */
    fclose(fp);
    fp = fopen(m, "w");
    fputs("Subject: stdin\n\nfrom stdin\n", fp);
    fclose(fp);
    const char *paths[] = {t};
    tbert_inputs *in;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(paths, 1, NULL, &in, &err), TBERT_OK);
    tbert_input_item item;
    assert_int_equal(tbert_inputs_next(in, &item, &err), 1);
    assert_false(item.is_message);
    assert_string_equal(item.text, "hello");
    assert_string_equal(item.label, "ham");
    tbert_input_item_free(&item);
    assert_int_equal(tbert_inputs_next(in, &item, &err), 1);
    assert_int_equal(item.offset, 10);
    assert_string_equal(item.text, "buy now");
    tbert_input_item_free(&item);
    assert_int_equal(tbert_inputs_next(in, &item, &err), 1);
    tbert_input_item_free(&item);
    assert_int_equal(tbert_inputs_next(in, &item, &err), 0);
    tbert_inputs_close(in);

    /* "-" reads one message from stdin */
    int saved = dup(0);
    int fd = open(m, O_RDONLY);
    assert_true(fd >= 0 && saved >= 0);
    dup2(fd, 0);
    close(fd);
    const char *spaths[] = {"-"};
    items it;
    collect_items(spaths, 1, NULL, &it);
    dup2(saved, 0);
    close(saved);
    assert_int_equal(it.n, 1);
    assert_string_equal(it.source[0], "-");
    assert_string_equal(it.raw[0], "Subject: stdin\n\nfrom stdin\n");
    items_free(&it);

    const char *missing[] = {"/nonexistent/mbox"};
    assert_int_equal(tbert_inputs_open(missing, 1, NULL, &in, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/mbox"));
    unlink(t);
    unlink(m);
    rmdir(dir);
}

/* Seeded mutations of every hand-made message: each parse returns OK or a format error, with valid UTF-8. */
static void test_mutation_sweep(void **state) {
    tu_rng rng = {tu_seed_from_env("test_mail mutation sweep")};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len;
        char *raw = read_test_file(cases[c].file, &len);
        char *buf = malloc(len + 1);
        assert_non_null(buf);
        for (int trial = 0; trial < 150; trial++) {
            memcpy(buf, raw, len);
            size_t n = len;
            int edits = 1 + (int)(tu_next(&rng) % 8);
            static const char pool[] = {'\0', '\n', '\r', '-', '=', '"', ';', ':', '<', '>', '\xff', '\x80', '?'};
            for (int e = 0; e < edits; e++) buf[tu_next(&rng) % n] = pool[tu_next(&rng) % sizeof pool];
            if (tu_next(&rng) % 4 == 0) n = tu_next(&rng) % n + 1; /* truncate */
            tbert_message m;
            tbert_error err;
            tbert_status st = tbert_message_parse(buf, n, cases[c].file, &m, &err);
            assert_true(st == TBERT_OK || st == TBERT_E_FORMAT);
            if (st == TBERT_OK) {
                assert_true(tbert_utf8_valid(m.body, strlen(m.body)));
                assert_true(tbert_utf8_valid(m.subject, strlen(m.subject)));
                assert_true(tbert_utf8_valid(m.evidence, strlen(m.evidence)));
                tbert_message_free(&m);
            }
        }
        free(buf);
        free(raw);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handmade_messages), cmocka_unit_test(test_headers_decoded),
        cmocka_unit_test(test_html_to_text),      cmocka_unit_test(test_mbox),
        cmocka_unit_test(test_maildir_and_order), cmocka_unit_test(test_shards),
        cmocka_unit_test(test_symlink_loops_and_empty_folder),
        cmocka_unit_test(test_tables_stdin_missing), cmocka_unit_test(test_mutation_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
