/* Helpers shared by mail.c, mailinput.c and score.c (not public API). */
#ifndef TBERT_MAIL_INTERNAL_H
#define TBERT_MAIL_INTERNAL_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>

#include "tbert/common.h"

/* g_mime_init() once per process (pthread_once); every GMime user calls this first. */
void tbert_mail_init(void);
/* true when s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool tbert_utf8_valid(const char *s, size_t n);
/* Appends in[0..len) converted from `charset` (NULL = undeclared) to UTF-8; bytes the charset does not
 * define become U+FFFD, NUL a space, CRLF LF. Unknown charsets fall back to UTF-8 or Windows-1252. */
void tbert_append_utf8(GString *o, const char *in, size_t len, const char *charset);
/* TBERT_OK when raw looks like a mail message; else TBERT_E_FORMAT naming label: a NUL byte in the first
 * 8 KB, or no header field line before the first blank line (src/mail_sniff.c). */
tbert_status tbert_message_sniff(const char *raw, size_t len, const char *label, tbert_error *err);

#endif
