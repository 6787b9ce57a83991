/* tbert score's output records: one JSONL object or one CSV line per item (UTF-8 cleaned, one record per
 * line), and the write loop that puts each record out with one write(). */
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mail_internal.h"
#include "score_internal.h"


/* JSON string body: valid UTF-8 is kept, control characters escaped, invalid bytes become U+FFFD. */
static void json_str(GString *o, const char *s) {
    g_string_append_c(o, '"');
    size_t n = strlen(s);
    GString *clean = g_string_sized_new(n + 8);
    tbert_append_utf8(clean, s, n, "utf-8");
    for (const unsigned char *p = (const unsigned char *)clean->str; *p; p++) {
        if (*p == '"' || *p == '\\') {
            g_string_append_c(o, '\\');
            g_string_append_c(o, (char)*p);
        } else if (*p < 0x20) {
            g_string_append_printf(o, "\\u%04x", *p);
        } else {
            g_string_append_c(o, (char)*p);
        }
    }
    g_string_free(clean, TRUE);
    g_string_append_c(o, '"');
}

/* CSV field (RFC 4180): quoted when it holds a comma, quote or line break; line breaks become spaces so
 * that one record is one line (what --resume relies on). */
static void csv_str(GString *o, const char *s) {
    bool q = strpbrk(s, ",\"\r\n") != NULL;
    if (q) g_string_append_c(o, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"') g_string_append(o, "\"\"");
        else if (*p == '\n' || *p == '\r') g_string_append_c(o, ' ');
        else g_string_append_c(o, *p);
    }
    if (q) g_string_append_c(o, '"');
}

void tbert_score_format_record(GString *o, tbert_score_format fmt, const tbert_score_record *r) {
    g_string_truncate(o, 0);
    if (fmt == TBERT_SCORE_JSONL) {
        g_string_append(o, "{\"source\":");
        json_str(o, r->source);
        g_string_append_printf(o, ",\"offset\":%llu,\"id\":", (unsigned long long)r->offset);
        if (r->id) json_str(o, r->id);
        else g_string_append(o, "null");
        if (r->error) {
            g_string_append(o, ",\"score\":null,\"label\":null,\"tokens\":0,\"error\":");
            json_str(o, r->error);
        } else {
            g_string_append_printf(o, ",\"score\":%.6f,\"label\":", r->score);
            json_str(o, r->label);
            g_string_append_printf(o, ",\"tokens\":%d", r->tokens);
            if (r->truncated) g_string_append(o, ",\"truncated\":true");
        }
        g_string_append(o, "}\n");
    } else {
        csv_str(o, r->source);
        g_string_append_printf(o, ",%llu,", (unsigned long long)r->offset);
        if (r->id) csv_str(o, r->id);
        if (r->error) {
            g_string_append(o, ",,,0,,");
            csv_str(o, r->error);
        } else {
            g_string_append_printf(o, ",%.6f,", r->score);
            csv_str(o, r->label);
            g_string_append_printf(o, ",%d,%s,", r->tokens, r->truncated ? "true" : "");
        }
        g_string_append_c(o, '\n');
    }
}

tbert_status tbert_score_write_all(int fd, const char *p, size_t n, const char *name, tbert_error *err) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return tbert_fail(err, TBERT_E_IO, "%s: write failed: %s", name, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return TBERT_OK;
}
