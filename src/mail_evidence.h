/* Header evidence (src/mail_evidence.c), called by the MIME decoder in src/mail.c; not public API. */
#ifndef TBERT_MAIL_EVIDENCE_H
#define TBERT_MAIL_EVIDENCE_H

#include <gmime/gmime.h>

/* Appends msg's evidence tokens to ev (see tbert_message.evidence). What the MIME walk found: body is
 * "plain", "html" or "none"; attachments counts attachment parts; charset is the first text part's ("" when none). */
void tbert_mail_evidence(GMimeMessage *msg, const char *body, int attachments, const char *charset, GString *ev);

#endif
