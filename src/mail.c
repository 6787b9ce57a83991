/* One RFC 822 / MIME message to text: GMime parses (MIME tree, base64/QP, RFC 2047 headers), each text part
 * is converted from its charset to UTF-8 here (iconv, invalid bytes become U+FFFD, never an error), text/plain
 * parts are preferred, text/html goes through html.c, attachments are skipped. Header evidence for the mail
 * recipe is gathered as space-separated tokens by src/mail_evidence.c. GMime needs one g_mime_init() per process: done lazily with
 * pthread_once, after which separate messages may be parsed on separate threads. */
#include <ctype.h>
#include <errno.h>
#include <gmime/gmime.h>
#include <iconv.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mail_evidence.h"
#include "mail_internal.h"
#include "tbert/mail.h"

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;
static void gmime_init_once(void) { g_mime_init(); }
void tbert_mail_init(void) { pthread_once(&gmime_once, gmime_init_once); }

/* ---- bytes to clean UTF-8 ------------------------------------------------ */

static void put_replacement(GString *o) { g_string_append_len(o, "\xEF\xBF\xBD", 3); }

/* Length of a valid UTF-8 sequence at p (n bytes left), 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
    if (p[0] < 0x80) return 1;
    size_t k;
    uint32_t cp;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) k = 2, cp = p[0] & 0x1F;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) k = 3, cp = p[0] & 0x0F;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) k = 4, cp = p[0] & 0x07;
    else return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return k;
}

bool tbert_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

/* Appends s to o as valid UTF-8: invalid bytes become U+FFFD, NUL becomes a space, CRLF becomes LF;
 * with `one_line`, every control character (line breaks and TABs included) becomes a space. */
static void append_clean(GString *o, const char *s, size_t n, bool one_line) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (c == '\r' && i + 1 < n && p[i + 1] == '\n' && !one_line) {
                i++;
                continue;
            }
            if (c == 0 || (one_line && c < 0x20) || c == 0x7F) c = ' ';
            g_string_append_c(o, (char)c);
            i++;
            continue;
        }
        size_t k = utf8_seq(p + i, n - i);
        if (!k) {
            put_replacement(o);
            i++;
        } else {
            g_string_append_len(o, (const char *)p + i, (gssize)k);
            i += k;
        }
    }
}

static bool charset_is(const char *cs, const char *const *names) {
    for (; *names; names++)
        if (!strcasecmp(cs, *names)) return true;
    return false;
}

/* iconv from `charset`; a byte the converter refuses becomes U+FFFD and the conversion goes on. */
static bool iconv_append(GString *o, const char *in, size_t len, const char *charset) {
    iconv_t cd = iconv_open("UTF-8", charset);
    if (cd == (iconv_t)-1) return false;
    char buf[4096];
    char *ip = (char *)in;
    size_t il = len;
    GString *raw = g_string_sized_new(len + 16);
    while (il > 0) {
        char *op = buf;
        size_t ol = sizeof buf;
        size_t r = iconv(cd, &ip, &il, &op, &ol);
        g_string_append_len(raw, buf, (gssize)(op - buf));
        if (r == (size_t)-1) {
            if (errno == E2BIG) continue;
            /* EILSEQ / EINVAL: skip one byte */
            g_string_append_len(raw, "\xEF\xBF\xBD", 3);
            ip++;
            il--;
            iconv(cd, NULL, NULL, NULL, NULL);
        }
    }
    char *op = buf;
    size_t ol = sizeof buf;
    iconv(cd, NULL, NULL, &op, &ol);
    g_string_append_len(raw, buf, (gssize)(op - buf));
    iconv_close(cd);
    append_clean(o, raw->str, raw->len, false);
    g_string_free(raw, TRUE);
    return true;
}

void tbert_append_utf8(GString *o, const char *in, size_t len, const char *charset) {
    static const char *const unknown[] = {"us-ascii", "ascii", "ansi_x3.4-1968", "unknown-8bit", "x-unknown",
                                          "unknown", "x-user-defined", "default", "", NULL};
    static const char *const utf8[] = {"utf-8", "utf8", "x-utf-8", "unicode-1-1-utf-8", NULL};
    static const char *const latin1[] = {"iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "l1", "iso-ir-100",
                                         "cp819", "ibm819", "iso-8859-1-windows-3.1-latin-1", NULL};
    if (!charset || charset_is(charset, unknown) || charset_is(charset, utf8)) {
        /* Undeclared 8-bit text: UTF-8 when it is valid, else the Windows code page mail clients use */
        if (tbert_utf8_valid(in, len) || (charset && charset_is(charset, utf8))) append_clean(o, in, len, false);
        else iconv_append(o, in, len, "WINDOWS-1252");
        return;
    }
    /* ISO-8859-1 labels mean Windows-1252 in practice (0x80-0x9F are C1 controls in the former) */
    const char *name = charset_is(charset, latin1) ? "WINDOWS-1252" : g_mime_charset_iconv_name(charset);
    if (!name || !iconv_append(o, in, len, name)) {
        /* a charset iconv does not know: read it as UTF-8, bytes that are not become U+FFFD */
        append_clean(o, in, len, false);
    }
}

/* ---- MIME tree walk ------------------------------------------------------ */

typedef struct {
    GString *plain, *html;
    int attachments, text_parts;
    char charset[40];
} body_acc;

static void acc_sep(GString *s) {
    if (s->len > 0 && s->str[s->len - 1] != '\n') g_string_append_c(s, '\n');
}

static void part_text(GMimePart *part, body_acc *acc, bool html) {
    GMimeDataWrapper *dw = g_mime_part_get_content(part);
    if (!dw) return;
    GMimeStream *mem = g_mime_stream_mem_new();
    if (!mem) return;
    g_mime_data_wrapper_write_to_stream(dw, mem); /* decodes base64 / QP / uuencode */
    GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    const char *cs = g_mime_object_get_content_type_parameter(GMIME_OBJECT(part), "charset");
    if (cs && !acc->charset[0]) snprintf(acc->charset, sizeof acc->charset, "%s", cs);
    GString *utf = g_string_sized_new(ba ? ba->len + 16 : 16);
    if (ba && ba->len) tbert_append_utf8(utf, (const char *)ba->data, ba->len, cs);
    g_object_unref(mem);
    acc->text_parts++;
    if (html) {
        char *t = tbert_html_to_text(utf->str, utf->len);
        if (t && *t) {
            acc_sep(acc->html);
            g_string_append(acc->html, t);
        }
        free(t);
    } else if (utf->len) {
        acc_sep(acc->plain);
        g_string_append_len(acc->plain, utf->str, (gssize)utf->len);
    }
    g_string_free(utf, TRUE);
}

static void collect(GMimeObject *obj, body_acc *acc, int depth);

static void collect_alternative(GMimeMultipart *mp, body_acc *acc, int depth) {
    body_acc alt = {g_string_new(""), g_string_new(""), 0, 0, {0}};
    int n = g_mime_multipart_get_count(mp);
    for (int i = 0; i < n; i++) collect(g_mime_multipart_get_part(mp, i), &alt, depth + 1);
    if (alt.plain->len) {
        acc_sep(acc->plain);
        g_string_append_len(acc->plain, alt.plain->str, (gssize)alt.plain->len);
    } else if (alt.html->len) {
        acc_sep(acc->html);
        g_string_append_len(acc->html, alt.html->str, (gssize)alt.html->len);
    }
    acc->attachments += alt.attachments;
    acc->text_parts += alt.text_parts;
    if (!acc->charset[0]) memcpy(acc->charset, alt.charset, sizeof acc->charset);
    g_string_free(alt.plain, TRUE);
    g_string_free(alt.html, TRUE);
}

static bool is_attachment(GMimeObject *obj) {
    GMimeContentDisposition *d = g_mime_object_get_content_disposition(obj);
    return d && g_mime_content_disposition_is_attachment(d);
}

static void collect(GMimeObject *obj, body_acc *acc, int depth) {
    if (!obj || depth > 64) return;
    if (GMIME_IS_MESSAGE_PART(obj)) {
        if (is_attachment(obj)) {
            acc->attachments++;
            return;
        }
        GMimeMessage *m = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
        if (m) collect(g_mime_message_get_mime_part(m), acc, depth + 1);
        return;
    }
    if (GMIME_IS_MULTIPART(obj)) {
        GMimeContentType *ct = g_mime_object_get_content_type(obj);
        GMimeMultipart *mp = GMIME_MULTIPART(obj);
        if (ct && g_mime_content_type_is_type(ct, "multipart", "alternative")) {
            collect_alternative(mp, acc, depth);
        } else if (GMIME_IS_MULTIPART_ENCRYPTED(obj)) {
            acc->attachments++;
        } else if (GMIME_IS_MULTIPART_SIGNED(obj)) {
            collect(g_mime_multipart_get_part(mp, GMIME_MULTIPART_SIGNED_CONTENT), acc, depth + 1);
        } else {
            int n = g_mime_multipart_get_count(mp);
            for (int i = 0; i < n; i++) collect(g_mime_multipart_get_part(mp, i), acc, depth + 1);
        }
        /* a multipart whose declared boundary never occurs has no parts: its text is all in the prologue */
        const char *pro = g_mime_multipart_get_count(mp) == 0 ? g_mime_multipart_get_prologue(mp) : NULL;
        if (pro && *pro) {
            acc_sep(acc->plain);
            tbert_append_utf8(acc->plain, pro, strlen(pro), NULL);
        }
        return;
    }
    if (GMIME_IS_PART(obj)) {
        GMimeContentType *ct = g_mime_object_get_content_type(obj);
        bool plain = !ct || g_mime_content_type_is_type(ct, "text", "plain");
        bool html = ct && g_mime_content_type_is_type(ct, "text", "html");
        if (is_attachment(obj) || (!plain && !html)) {
            acc->attachments++;
            return;
        }
        part_text(GMIME_PART(obj), acc, html);
    }
}

/* ---- public -------------------------------------------------------------- */

/* g_malloc'd strings are handed out through malloc'd copies so that tbert_message_free can use free(). */
static char *dup_clean(const char *s, bool one_line) {
    GString *g = g_string_new("");
    if (s) append_clean(g, s, strlen(s), one_line);
    char *r = tbert_strndup(g->str, g->len);
    g_string_free(g, TRUE);
    return r;
}

static void trim_in_place(char *s) {
    size_t n = strlen(s), a = 0;
    while (a < n && isspace((unsigned char)s[a])) a++;
    while (n > a && isspace((unsigned char)s[n - 1])) n--;
    memmove(s, s + a, n - a);
    s[n - a] = '\0';
}

tbert_status tbert_message_parse(const char *raw, size_t len, const char *label, tbert_message *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    if (!label) label = "<message>";
    tbert_mail_init();
    /* an mbox "From " line in front of a one-message file is not a header */
    if (len >= 5 && !memcmp(raw, "From ", 5)) {
        const char *nl = memchr(raw, '\n', len);
        size_t skip = nl ? (size_t)(nl - raw) + 1 : len;
        raw += skip;
        len -= skip;
    }
    bool blank = true;
    for (size_t i = 0; i < len && blank; i++) blank = isspace((unsigned char)raw[i]) != 0;
    if (blank) return tbert_fail(err, TBERT_E_FORMAT, "%s: empty message", label);

    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(raw, len);
    GMimeParser *parser = stream ? g_mime_parser_new_with_stream(stream) : NULL;
    GMimeParserOptions *popts = g_mime_parser_options_new();
    if (!stream || !parser || !popts) {
        if (parser) g_object_unref(parser);
        if (stream) g_object_unref(stream);
        if (popts) g_mime_parser_options_free(popts);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory parsing the message", label);
    }
    const char *fallback[] = {"UTF-8", "windows-1252", NULL};
    g_mime_parser_options_set_fallback_charsets(popts, fallback);
    g_mime_parser_options_set_rfc2047_compliance_mode(popts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_address_compliance_mode(popts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(popts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    GMimeMessage *msg = g_mime_parser_construct_message(parser, popts);
    g_object_unref(parser);

    tbert_status st = TBERT_OK;
    GString *body = NULL, *ev = g_string_new("");
    if (!msg) {
        /* nothing GMime recognises as a message: the bytes themselves are the best text there is */
        body = g_string_new("");
        append_clean(body, raw, len, false);
        out->subject = tbert_strdup("");
        out->from = tbert_strdup("");
        g_string_append(ev, "parse:failed");
    } else {
        body_acc acc = {g_string_new(""), g_string_new(""), 0, 0, {0}};
        collect(g_mime_message_get_mime_part(msg), &acc, 0);
        bool from_html = acc.plain->len == 0 && acc.html->len > 0;
        tbert_mail_evidence(msg, acc.plain->len ? "plain" : from_html ? "html" : "none", acc.attachments, acc.charset, ev);
        if (acc.plain->len) {
            body = acc.plain;
            g_string_free(acc.html, TRUE);
        } else {
            body = acc.html;
            g_string_free(acc.plain, TRUE);
        }
        const char *mid = g_mime_message_get_message_id(msg);
        if (mid && *mid && !(out->message_id = dup_clean(mid, true))) st = TBERT_E_NOMEM;
        out->subject = dup_clean(g_mime_message_get_subject(msg), true);
        InternetAddressList *from = g_mime_message_get_from(msg);
        char *fs = from && internet_address_list_length(from) > 0 ? internet_address_list_to_string(from, NULL, FALSE) : NULL;
        out->from = dup_clean(fs ? fs : g_mime_object_get_header(GMIME_OBJECT(msg), "From"), true);
        g_free(fs);
        g_object_unref(msg);
    }
    g_object_unref(stream);
    g_mime_parser_options_free(popts);
    out->body = tbert_strndup(body->str, body->len);
    g_string_free(body, TRUE);
    out->evidence = tbert_strndup(ev->str, ev->len);
    g_string_free(ev, TRUE);
    if (st != TBERT_OK || !out->subject || !out->from || !out->body || !out->evidence) {
        tbert_message_free(out);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory decoding the message", label);
    }
    trim_in_place(out->subject);
    trim_in_place(out->from);
    trim_in_place(out->body);
    return TBERT_OK;
}

void tbert_message_free(tbert_message *m) {
    if (!m) return;
    free(m->message_id);
    free(m->subject);
    free(m->from);
    free(m->body);
    free(m->evidence);
    memset(m, 0, sizeof *m);
}
