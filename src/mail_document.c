/* The one document path: what the recipe sees of a parsed message. tbert train (--ham/--spam), tbert score's
 * parse workers and tbert filter all build their documents here, so that they cannot drift apart. */
#include <stdlib.h>
#include <string.h>

#include "tbert/mail.h"

tbert_status tbert_mail_document(const tbert_message *m, tbert_mail_doc *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    size_t ls = strlen(m->subject), lb = strlen(m->body), n;
    if (!tbert_add_size(ls, lb, &n) || !tbert_add_size(n, 2, &n))
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory building the document");
    out->text = malloc(n);
    out->evidence = tbert_strdup(m->evidence);
    if (!out->text || !out->evidence) {
        tbert_mail_doc_free(out);
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory building the document");
    }
    memcpy(out->text, m->subject, ls);
    out->text[ls] = '\n';
    memcpy(out->text + ls + 1, m->body, lb + 1);
    out->len = ls + 1 + lb;
    return TBERT_OK;
}

void tbert_mail_doc_free(tbert_mail_doc *d) {
    if (!d) return;
    free(d->text);
    free(d->evidence);
    memset(d, 0, sizeof *d);
}
