/* The labelled documents tbert train reads: a table's rows, or --ham/--spam mail (each message through the one
 * document path, tbert_mail_document), with their labels and line numbers (item index for mail). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/mail.h"
#include "train_internal.h"

void tbert_labelled_free(tbert_labelled *L) {
    for (int i = 0; i < L->n_owned; i++) free(L->owned[i]);
    free(L->owned);
    free(L->docs);
    free(L->label);
    free(L->line);
    if (L->have_table) tbert_table_free(&L->table);
    memset(L, 0, sizeof *L);
}

static bool own(tbert_labelled *L, char *s) {
    if (!s) return false;
    if (L->n_owned == L->cap_owned) {
        int nc = L->cap_owned ? 2 * L->cap_owned : 256;
        char **p = tbert_realloc_array(L->owned, (size_t)nc, sizeof *p);
        if (!p) {
            free(s);
            return false;
        }
        L->owned = p;
        L->cap_owned = nc;
    }
    L->owned[L->n_owned++] = s;
    return true;
}

static bool push_doc(tbert_labelled *L, const char *text, size_t len, const char *evidence, char *label, int64_t line) {
    if (L->n == L->cap) {
        int nc = L->cap ? 2 * L->cap : 1024;
        tbert_doc *d = tbert_realloc_array(L->docs, (size_t)nc, sizeof *d);
        if (d) L->docs = d;
        char **l = tbert_realloc_array(L->label, (size_t)nc, sizeof *l);
        if (l) L->label = l;
        int64_t *ln = tbert_realloc_array(L->line, (size_t)nc, sizeof *ln);
        if (ln) L->line = ln;
        if (!d || !l || !ln) return false;
        L->cap = nc;
    }
    L->docs[L->n] = (tbert_doc){text, len, evidence};
    L->label[L->n] = label;
    L->line[L->n] = line;
    L->n++;
    return true;
}

tbert_status tbert_labelled_read_table(const tbert_train_opts *o, tbert_labelled *L, tbert_error *err) {
    tbert_status st = tbert_table_read(o->data, &o->table, &L->table, err);
    if (st) return st;
    L->have_table = true;
    if (!L->table.label) return tbert_fail(err, TBERT_E_ARG, "%s: training needs a label column", o->data);
    for (int i = 0; i < L->table.n; i++)
        if (!push_doc(L, L->table.text[i], L->table.text_len[i], NULL, L->table.label[i], L->table.line[i]))
            return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", o->data);
    return TBERT_OK;
}

tbert_status tbert_labelled_read_mail(const char *const *paths, int n, char *label, tbert_labelled *L, int *skipped, tbert_error *err) {
    if (n == 0) return TBERT_OK;
    tbert_input_opts io = {0};
    tbert_inputs *in;
    tbert_status st = tbert_inputs_open(paths, n, &io, &in, err);
    if (st) return st;
    tbert_input_item it;
    int r;
    int64_t k = 0;
    while ((r = tbert_inputs_next(in, &it, err)) == 1) {
        k++;
        if (it.error) {
            fprintf(stderr, "tbert: skipping %s: %s\n", it.source, it.error);
            (*skipped)++;
        } else if (it.is_message) {
            tbert_message m;
            tbert_error merr;
            if (tbert_message_parse(it.raw, it.raw_len, it.source, &m, &merr)) {
                fprintf(stderr, "tbert: skipping %s\n", merr.msg);
                (*skipped)++;
            } else {
                tbert_mail_doc doc;
                bool ok = tbert_mail_document(&m, &doc, &merr) == TBERT_OK;
                tbert_message_free(&m);
                if (ok) { /* own() takes each string or frees it */
                    bool kept = own(L, doc.text);
                    kept = own(L, doc.evidence) && kept;
                    ok = kept && push_doc(L, doc.text, doc.len, doc.evidence, label, k);
                }
                if (!ok) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", it.source);
            }
        } else {
            char *text = tbert_strndup(it.text ? it.text : "", it.text_len);
            bool ok = own(L, text) && push_doc(L, text, it.text_len, NULL, label, k);
            if (!ok) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", it.source);
        }
        tbert_input_item_free(&it);
        if (st) break;
    }
    if (r < 0 && !st) st = err ? err->code : TBERT_E_IO;
    tbert_inputs_close(in);
    return st;
}
