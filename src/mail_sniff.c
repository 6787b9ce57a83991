/* Is this an RFC 822 message at all? (issue 14, "Not a message"): a file with a NUL byte in its first 8 KB
 * (a binary: an image, an archive, a database) or with no header field line before its first blank line
 * (plain text, a CSV) gets a per-item error instead of being scored as a message. Called by
 * tbert_message_parse after an mbox "From " line has been taken off. */
#include <string.h>

#include "mail_internal.h"

#define SNIFF_NUL_BYTES 8192

/* "Name:" (or the obsolete "Name :"): one or more printable ASCII characters other than ':' and space, then
 * optional blanks, then ':' (RFC 5322 field-name = 1*ftext, ftext = %d33-57 / %d59-126). */
static bool header_line(const char *p, size_t n) {
    size_t i = 0;
    while (i < n && p[i] >= 33 && p[i] <= 126 && p[i] != ':') i++;
    if (i == 0) return false;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
    return i < n && p[i] == ':';
}

tbert_status tbert_message_sniff(const char *raw, size_t len, const char *label, tbert_error *err) {
    if (memchr(raw, '\0', len < SNIFF_NUL_BYTES ? len : SNIFF_NUL_BYTES))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: not a mail message (a NUL byte in its first %d bytes: a binary file?)", label,
                          SNIFF_NUL_BYTES);
    for (size_t i = 0; i < len;) {
        const char *e = memchr(raw + i, '\n', len - i);
        size_t n = e ? (size_t)(e - (raw + i)) : len - i;
        size_t content = n && raw[i + n - 1] == '\r' ? n - 1 : n;
        if (content == 0) break; /* the first blank line */
        if (header_line(raw + i, content)) return TBERT_OK;
        i += n + 1;
    }
    return tbert_fail(err, TBERT_E_FORMAT, "%s: not a mail message (no header line such as \"From: ...\" before the first blank line)",
                      label);
}
