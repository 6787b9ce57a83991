/* One document path: a message gives the same document (text, length, evidence with the header words)
 * through tbert train's reader (tbert_labelled_read_mail, src/train_data.c) and through tbert score's parse
 * step (tbert_score_parse_item, src/score.c), item by item, on hand-written messages (plain with list and
 * relay headers, multipart/alternative, HTML only, RFC 2047 subject, no subject, an empty message, an mbox)
 * and on every committed message of tests/data/mail. Each document is also checked against what the design
 * says it is: Subject "\n" body of the parsed message, the parser's evidence, and hand-written expectations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "score_internal.h"
#include "tbert/mail.h"
#include "testutil.h"
#include "train_internal.h"

typedef struct {
    const char *name, *raw;
    const char *text;        /* the whole expected document text, or NULL (then `contains`) */
    const char *contains[2]; /* substrings of the text when it is not given whole */
    const char *evidence[3]; /* tokens the evidence must hold */
} handmade;

/* Written for this test; the expectations come from the messages' design (Subject, a newline, the plain
 * part or else the HTML's text), not from a run. */
static const handmade msgs[] = {
    {"01_plain.eml",
     "Received: from relay1.mx.example.net (relay1 [192.0.2.7]) by mail.example.org\n"
     "From: Alice Example <alice@example.org>\nTo: team@example.org\nSubject: Weekly notes\n"
     "List-Id: <notes.lists.example.org>\nX-Spam-Status: No, score=-2.0\nMessage-ID: <n1@example.org>\n"
     "\nHello team,\nthe notes are below.\n",
     "Weekly notes\nHello team,\nthe notes are below.", {NULL, NULL},
     {"body:plain", "h.list-id:notes.lists.example.org", "rcvd_from:example.net"}},
    {"02_alternative.eml",
     "From: shop@deals.example.com\nSubject: Offer\nMIME-Version: 1.0\n"
     "Content-Type: multipart/alternative; boundary=\"b1\"\n\n"
     "--b1\nContent-Type: text/plain; charset=us-ascii\n\nPlain offer text.\n"
     "--b1\nContent-Type: text/html; charset=us-ascii\n\n<html><body><p>HTML offer</p></body></html>\n--b1--\n",
     "Offer\nPlain offer text.", {NULL, NULL}, {"ctype:multipart_alternative", "body:plain", "h.from:shop@deals.example.com"}},
    {"03_html_only.eml",
     "From: promo@cheap.example\nSubject: Cheap pills\nContent-Type: text/html; charset=utf-8\n\n"
     "<html><head><style>p{color:red}</style></head><body><p>Cheap <b>pills</b></p><p>Buy now</p></body></html>\n",
     NULL, {"Cheap pills\n", "Buy now"}, {"body:html", "ctype:text_html", "from_domain:cheap.example"}},
    {"04_rfc2047.eml",
     "From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.de>\nSubject: =?UTF-8?B?R3LDvMOfZQ==?=\n\nHallo\n",
     "Gr\xc3\xbc\xc3\x9f" "e\nHallo", {NULL, NULL}, {"from_tld:de", "no:message_id", NULL}},
    {"05_no_subject.eml", "From: bob@example.com\nTo: carol@example.com\n\nJust a body.\n", "\nJust a body.", {NULL, NULL},
     {"h.to:carol@example.com", NULL, NULL}},
    {"06_empty.eml", "\n\n", NULL, {NULL, NULL}, {NULL, NULL, NULL}},
    {"07_two.mbox",
     "From a@b Mon Sep  2 10:00:00 2002\nSubject: first\n\none\n\n"
     "From a@b Mon Sep  2 10:00:01 2002\nSubject: second\nX-Mailer: Mutt/1.5.4i\n\n>From here\ntwo\n",
     NULL, {NULL, NULL}, {NULL, NULL, NULL}},
};
enum { N_MSGS = sizeof msgs / sizeof msgs[0] };

static bool has_token(const char *ev, const char *tok) {
    size_t n = strlen(tok);
    for (const char *p = ev; (p = strstr(p, tok)) != NULL; p++)
        if ((p == ev || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
    return false;
}

static void write_file(const char *dir, const char *name, const char *s) {
    char p[1100];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, strlen(s), f), strlen(s));
    assert_int_equal(fclose(f), 0);
}

/* what the score path makes of every item of the inputs, in input order */
typedef struct {
    int n;
    tbert_score_doc *doc;
    char **source;
} score_docs;

static void score_path(const char *const *paths, int n_paths, score_docs *out) {
    tbert_input_opts io = {0};
    tbert_inputs *in;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(paths, n_paths, &io, &in, &err), TBERT_OK);
    memset(out, 0, sizeof *out);
    tbert_input_item it;
    int r;
    while ((r = tbert_inputs_next(in, &it, &err)) == 1) {
        out->doc = realloc(out->doc, (size_t)(out->n + 1) * sizeof *out->doc);
        out->source = realloc(out->source, (size_t)(out->n + 1) * sizeof *out->source);
        assert_true(out->doc && out->source);
        out->source[out->n] = strdup(it.source);
        tbert_score_parse_item(&it, &out->doc[out->n]);
        out->n++;
        tbert_input_item_free(&it);
    }
    assert_int_equal(r, 0);
    tbert_inputs_close(in);
}

static void score_docs_free(score_docs *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->doc[i].text);
        free(s->doc[i].evidence);
        free(s->doc[i].id);
        free(s->doc[i].error);
        free(s->source[i]);
    }
    free(s->doc);
    free(s->source);
}

/* Compares the train path's documents with the score path's, item by item; returns the number compared. */
static int compare_paths(const char *const *paths, int n_paths, int *n_errors) {
    char label[] = "ham";
    tbert_labelled L = {0};
    int skipped = 0;
    tbert_error err;
    assert_int_equal(tbert_labelled_read_mail(paths, n_paths, label, &L, &skipped, &err), TBERT_OK);
    score_docs S;
    score_path(paths, n_paths, &S);
    /* train keeps every item score scores and skips every item score records as an error */
    int errors = 0;
    for (int k = 0; k < S.n; k++) errors += S.doc[k].error != NULL;
    assert_int_equal(L.n + skipped, S.n);
    assert_int_equal(skipped, errors);
    int j = 0;
    for (int k = 0; k < S.n; k++) {
        const tbert_score_doc *s = &S.doc[k];
        if (s->error) continue;
        assert_true(j < L.n);
        assert_int_equal(L.line[j], k + 1); /* train numbers items from 1, skipped ones included */
        const tbert_doc *t = &L.docs[j];
        if (t->len != s->len || memcmp(t->text, s->text, s->len) || strcmp(t->evidence ? t->evidence : "(none)", s->evidence ? s->evidence : "(none)"))
            fail_msg("%s (item %d): train and score documents differ:\ntrain [%.*s] ev [%s]\nscore [%.*s] ev [%s]", S.source[k], k,
                     (int)t->len, t->text, t->evidence ? t->evidence : "(none)", (int)s->len, s->text,
                     s->evidence ? s->evidence : "(none)");
        assert_int_equal(strlen(s->text), s->len);
        j++;
    }
    assert_int_equal(j, L.n);
    *n_errors = errors;
    score_docs_free(&S);
    tbert_labelled_free(&L);
    return j;
}

static void test_handmade_same_document(void **state) {
    (void)state;
    /* in a folder every file is one message: the mbox (last) is named on its own, as a user would */
    char dir[] = "/tmp/tbert_mail_document_XXXXXX", mdir[] = "/tmp/tbert_mail_document_XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_non_null(mkdtemp(mdir));
    for (int i = 0; i < N_MSGS - 1; i++) write_file(dir, msgs[i].name, msgs[i].raw);
    write_file(mdir, msgs[N_MSGS - 1].name, msgs[N_MSGS - 1].raw);
    char mbox[1100];
    snprintf(mbox, sizeof mbox, "%s/%s", mdir, msgs[N_MSGS - 1].name);
    const char *paths[] = {dir, mbox};
    int errors = 0;
    int n = compare_paths(paths, 2, &errors);
    assert_int_equal(n, N_MSGS - 1 + 1); /* the mbox holds two messages, the empty message is an error */
    assert_int_equal(errors, 1);

    /* each document against its design, through the score path (the same as train's, shown above) */
    score_docs S;
    score_path(paths, 2, &S);
    assert_int_equal(S.n, N_MSGS + 1);
    for (int i = 0, k = 0; i < N_MSGS; i++, k++) {
        const handmade *h = &msgs[i];
        const tbert_score_doc *d = &S.doc[k];
        if (!strcmp(h->name, "07_two.mbox")) {
            assert_null(d->error);
            assert_string_equal(d->text, "first\none");
            assert_null(S.doc[k + 1].error);
            assert_string_equal(S.doc[k + 1].text, "second\nFrom here\ntwo");
            assert_true(has_token(S.doc[k + 1].evidence, "mailer:mutt"));
            k++;
            continue;
        }
        if (!strcmp(h->name, "06_empty.eml")) {
            assert_non_null(d->error);
            assert_null(d->text);
            continue;
        }
        if (d->error) fail_msg("%s: %s", h->name, d->error);
        if (h->text && strcmp(d->text, h->text)) fail_msg("%s: text [%s], expected [%s]", h->name, d->text, h->text);
        for (int c = 0; c < 2; c++)
            if (h->contains[c] && !strstr(d->text, h->contains[c])) fail_msg("%s: text [%s] lacks [%s]", h->name, d->text, h->contains[c]);
        for (int e = 0; e < 3; e++)
            if (h->evidence[e] && !has_token(d->evidence, h->evidence[e]))
                fail_msg("%s: evidence lacks %s: %s", h->name, h->evidence[e], d->evidence);
        /* upstream filters' verdicts never reach the document */
        assert_null(strstr(d->evidence, "x-spam"));
        assert_null(strstr(d->text, "X-Spam"));
        /* the document is the parsed message's Subject "\n" body and its evidence */
        tbert_message m;
        tbert_error err;
        assert_int_equal(tbert_message_parse(h->raw, strlen(h->raw), h->name, &m, &err), TBERT_OK);
        size_t ls = strlen(m.subject);
        assert_int_equal(d->len, ls + 1 + strlen(m.body));
        assert_memory_equal(d->text, m.subject, ls);
        assert_int_equal(d->text[ls], '\n');
        assert_string_equal(d->text + ls + 1, m.body);
        assert_string_equal(d->evidence, m.evidence);
        tbert_message_free(&m);
    }
    score_docs_free(&S);
    for (int i = 0; i < N_MSGS - 1; i++) {
        char p[1100];
        snprintf(p, sizeof p, "%s/%s", dir, msgs[i].name);
        unlink(p);
    }
    unlink(mbox);
    rmdir(dir);
    rmdir(mdir);
}

/* Every committed test message (MIME trees, charsets, broken structure, a Maildir, an mbox), named one by one
 * and as a folder. */
static void test_committed_messages_same_document(void **state) {
    (void)state;
    char folder[1024];
    tu_tests_path("data/mail", folder, sizeof folder);
    struct stat sb;
    if (stat(folder, &sb) != 0) fail_msg("%s: committed fixture missing", folder);
    char mbox[1100];
    snprintf(mbox, sizeof mbox, "%s/three.mbox", folder);
    const char *paths[] = {folder, mbox};
    int errors = 0;
    int n = compare_paths(paths, 2, &errors);
    assert_true(n >= 19); /* the folder's 17 files (each one message), then three.mbox split into its messages */
    print_message("tests/data/mail: %d documents the same through train and score, %d items neither keeps\n", n, errors);
}

/* The mail document itself: exact bytes for a hand-built message, and its length with a subject and a body. */
static void test_document_fields(void **state) {
    (void)state;
    tbert_message m = {.message_id = NULL, .subject = "S", .from = "", .body = "B\nC", .evidence = "body:plain h.x:y"};
    tbert_mail_doc d;
    tbert_error err;
    assert_int_equal(tbert_mail_document(&m, &d, &err), TBERT_OK);
    assert_int_equal(d.len, 5);
    assert_string_equal(d.text, "S\nB\nC");
    assert_string_equal(d.evidence, "body:plain h.x:y");
    assert_ptr_not_equal(d.evidence, m.evidence); /* a copy: the message can be freed */
    tbert_mail_doc_free(&d);
    assert_null(d.text);
    tbert_message e = {.subject = "", .from = "", .body = "", .evidence = ""};
    assert_int_equal(tbert_mail_document(&e, &d, &err), TBERT_OK);
    assert_int_equal(d.len, 1);
    assert_string_equal(d.text, "\n");
    tbert_mail_doc_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_document_fields),
        cmocka_unit_test(test_handmade_same_document),
        cmocka_unit_test(test_committed_messages_same_document),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
