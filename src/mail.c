/* One RFC 822 / MIME message to text: GMime parses (MIME tree, base64/QP, RFC 2047 headers), each text part
 * is converted from its charset to UTF-8 here (iconv, invalid bytes become U+FFFD, never an error), text/plain
 * parts are preferred, text/html goes through html.c, attachments are skipped. Header evidence for the mail
 * recipe is gathered as space-separated tokens. GMime needs one g_mime_init() per process: done lazily with
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

/* ---- header evidence ----------------------------------------------------- */

/* Appends " key:value" with the value lowercased and reduced to [a-z0-9._-] (others become '_'). */
static void evidence(GString *ev, const char *key, const char *value) {
    if (ev->len) g_string_append_c(ev, ' ');
    g_string_append(ev, key);
    g_string_append_c(ev, ':');
    size_t start = ev->len;
    bool under = false;
    for (const unsigned char *p = (const unsigned char *)value; *p && ev->len - start < 48; p++) {
        unsigned char c = (unsigned char)tolower(*p);
        if (isalnum(c) || c == '.' || c == '-') {
            g_string_append_c(ev, (char)c);
            under = false;
        } else if (!under && ev->len > start) {
            g_string_append_c(ev, '_');
            under = true;
        }
    }
    while (ev->len > start && ev->str[ev->len - 1] == '_') g_string_truncate(ev, ev->len - 1);
    if (ev->len == start) g_string_append(ev, "none");
}

/* "Microsoft Outlook Express 6.00.2600.0000" -> "microsoft_outlook_express"; "Mutt/1.5.4i" -> "mutt":
 * words up to the first one that starts with a digit, '(' or '[' or follows a '/'. */
static void mailer_name(const char *v, char *out, size_t n) {
    size_t o = 0;
    const char *p = v;
    while (*p && o + 1 < n) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || isdigit((unsigned char)*p) || *p == '(' || *p == '[' || *p == '<' || (*p == 'v' && isdigit((unsigned char)p[1]))) break;
        if (o) out[o++] = '_';
        while (*p && *p != ' ' && *p != '\t' && *p != '/' && *p != ';' && *p != ',' && o + 1 < n) out[o++] = *p++;
        if (*p == '/' || *p == ';' || *p == ',') break;
    }
    out[o] = '\0';
}

static const char *hops_bucket(int n) {
    static const char *const b[] = {"0", "1", "2", "3", "4", "5-6", "5-6", "7-9", "7-9", "7-9"};
    return n < 10 ? b[n] : "10+";
}

/* The domain of the first mailbox in a header's address list (NULL when none). */
static const char *first_domain(InternetAddressList *l) {
    if (!l || internet_address_list_length(l) == 0) return NULL;
    InternetAddress *ia = internet_address_list_get_address(l, 0);
    if (!INTERNET_ADDRESS_IS_MAILBOX(ia)) return NULL;
    const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at && at[1] ? at + 1 : NULL;
}

/* "a.b.example.com" -> "example.com" (the last two labels) into out. */
static void base_domain(const char *d, size_t n, char *out, size_t cap) {
    size_t dots = 0, start = 0;
    for (size_t i = n; i > 0; i--) {
        if (d[i - 1] == '.' && ++dots == 2) {
            start = i;
            break;
        }
    }
    size_t len = n - start < cap - 1 ? n - start : cap - 1;
    memcpy(out, d + start, len);
    out[len] = '\0';
}

/* Headers that spam filters upstream add (verdicts, scores, signatures): their presence says what another
 * filter decided, so a head must never learn from them. */
static bool is_filter_verdict_header(const char *name) {
    static const char *const prefixes[] = {"X-Spam", "X-Razor", "X-SpamCop", "X-Spamadvice", "X-MailScanner",
                                           "X-Bogosity", "X-Virus", "X-DSPAM", "X-CRM114", "X-Barracuda"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!g_ascii_strncasecmp(name, prefixes[i], strlen(prefixes[i]))) return true;
    return false;
}

/* Evidence beyond the basics, of the kind bogofilter gets from tokenising whole headers: which header fields
 * are present (hdr:NAME; headers of upstream filters left out, see is_filter_verdict_header), the domains of Message-ID, Reply-To
 * and Return-Path, the relays named in Received "from" clauses (their last two labels), the number of To
 * recipients, and a reply/forward marker in the Subject. */
static void more_evidence(GMimeMessage *msg, GMimeHeaderList *hl, int nh, GString *ev) {
    GMimeObject *o = GMIME_OBJECT(msg);
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    int relays = 0;
    for (int i = 0; i < nh && seen; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
        const char *name = h ? g_mime_header_get_name(h) : NULL;
        if (!name || !*name || is_filter_verdict_header(name)) continue;
        char *lower = g_ascii_strdown(name, -1);
        if (!g_hash_table_contains(seen, lower) && g_hash_table_size(seen) < 64) { /* bounded: hostile mail */
            evidence(ev, "hdr", lower);
            g_hash_table_add(seen, lower);
        } else {
            g_free(lower);
        }
        if (!g_ascii_strcasecmp(name, "Received") && relays < 8) {
            const char *v = g_mime_header_get_raw_value(h);
            while (v && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n')) v++;
            if (v && !g_ascii_strncasecmp(v, "from ", 5)) {
                v += 5;
                while (*v == ' ') v++;
                size_t n = 0;
                while (v[n] && (g_ascii_isalnum(v[n]) || v[n] == '.' || v[n] == '-')) n++;
                while (n > 0 && v[n - 1] == '.') n--;
                if (n > 0 && memchr(v, '.', n)) {
                    char base[64];
                    base_domain(v, n, base, sizeof base);
                    evidence(ev, "rcvd_from", base);
                    relays++;
                }
            }
        }
    }
    if (seen) g_hash_table_destroy(seen);
    const char *mid = g_mime_message_get_message_id(msg);
    const char *at = mid ? strrchr(mid, '@') : NULL;
    evidence(ev, "msgid_domain", at && at[1] ? at + 1 : "none");
    const char *rt = first_domain(g_mime_message_get_reply_to(msg));
    evidence(ev, "reply_to_domain", rt ? rt : "none");
    const char *rp = g_mime_object_get_header(o, "Return-Path");
    const char *rpat = rp ? strrchr(rp, '@') : NULL;
    char rpd[64] = "none";
    if (rpat) {
        size_t n = 0;
        while (rpat[1 + n] && rpat[1 + n] != '>' && rpat[1 + n] != ' ' && n + 1 < sizeof rpd) n++;
        if (n) {
            memcpy(rpd, rpat + 1, n);
            rpd[n] = '\0';
        }
    }
    evidence(ev, "return_path_domain", rpd);
    InternetAddressList *to = g_mime_message_get_to(msg);
    int nto = to ? internet_address_list_length(to) : 0;
    evidence(ev, "to_count", nto == 0 ? "0" : nto == 1 ? "1" : nto <= 5 ? "2-5" : "6plus");
    const char *subj = g_mime_message_get_subject(msg);
    while (subj && *subj == ' ') subj++;
    if (subj && (!g_ascii_strncasecmp(subj, "re:", 3) || !g_ascii_strncasecmp(subj, "aw:", 3))) evidence(ev, "subj", "reply");
    else if (subj && (!g_ascii_strncasecmp(subj, "fw:", 3) || !g_ascii_strncasecmp(subj, "fwd:", 4))) evidence(ev, "subj", "forward");
}

/* Every word of every header value as "h.NAME:word", the way bogofilter tokenises headers: what identifies a
 * sender (addresses, relay host names and IPs, list ids, mailer builds) lies there, and the mail recipe's
 * header block learns it per sender. A word is a run of [A-Za-z0-9.$_@-] trimmed to start and end with a
 * letter or digit, lowercased; all-digit words and words over 40 bytes are skipped. Upstream filters'
 * headers are left out (is_filter_verdict_header); bounded for hostile mail (64 KiB of values, 2,000 words). */
static void header_words(GMimeHeaderList *hl, int nh, GString *ev) {
    size_t budget = 64 * 1024;
    int words = 0;
    for (int i = 0; i < nh && budget > 0 && words < 2000; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
        const char *name = h ? g_mime_header_get_name(h) : NULL;
        const char *v = h ? g_mime_header_get_raw_value(h) : NULL;
        if (!name || !*name || !v || is_filter_verdict_header(name)) continue;
        char key[36];
        size_t k = 0;
        for (const char *p = name; *p && k < 32; p++)
            if (g_ascii_isalnum(*p) || *p == '-') key[k++] = g_ascii_tolower(*p);
        if (k == 0) continue;
        key[k] = '\0';
        size_t n = strlen(v);
        if (n > budget) n = budget;
        budget -= n;
        for (size_t a = 0; a < n && words < 2000;) {
            while (a < n && !g_ascii_isalnum(v[a])) a++;
            size_t b = a;
            while (b < n && (g_ascii_isalnum(v[b]) || v[b] == '.' || v[b] == '$' || v[b] == '_' || v[b] == '@' || v[b] == '-')) b++;
            size_t e = b;
            while (e > a && !g_ascii_isalnum(v[e - 1])) e--;
            bool digits = true;
            for (size_t j = a; j < e && digits; j++) digits = g_ascii_isdigit(v[j]) != 0;
            if (e > a && e - a <= 40 && !digits) {
                g_string_append_printf(ev, "%sh.%s:", ev->len ? " " : "", key);
                for (size_t j = a; j < e; j++) g_string_append_c(ev, g_ascii_tolower(v[j]));
                words++;
            }
            a = b;
        }
    }
}

static void gather_evidence(GMimeMessage *msg, const body_acc *acc, bool from_html, GString *ev) {
    GMimeObject *o = GMIME_OBJECT(msg);
    /* sender domain */
    InternetAddressList *from = g_mime_message_get_from(msg);
    const char *domain = NULL;
    if (from && internet_address_list_length(from) > 0) {
        InternetAddress *ia = internet_address_list_get_address(from, 0);
        if (INTERNET_ADDRESS_IS_MAILBOX(ia)) {
            const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
            const char *at = addr ? strrchr(addr, '@') : NULL;
            if (at && at[1]) domain = at + 1;
        }
    }
    evidence(ev, "from_domain", domain ? domain : "none");
    const char *dot = domain ? strrchr(domain, '.') : NULL;
    evidence(ev, "from_tld", dot && dot[1] ? dot + 1 : "none");
    /* mailer */
    const char *mailer = g_mime_object_get_header(o, "X-Mailer");
    if (!mailer) mailer = g_mime_object_get_header(o, "User-Agent");
    char mname[64] = "";
    if (mailer) mailer_name(mailer, mname, sizeof mname);
    evidence(ev, "mailer", mailer ? (mname[0] ? mname : "other") : "none");
    /* Received chain length */
    GMimeHeaderList *hl = g_mime_object_get_header_list(o);
    int hops = 0, nh = hl ? g_mime_header_list_get_count(hl) : 0;
    for (int i = 0; i < nh; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
        const char *name = h ? g_mime_header_get_name(h) : NULL;
        if (name && !strcasecmp(name, "Received")) hops++;
    }
    evidence(ev, "rcvd_hops", hops_bucket(hops));
    /* structure */
    GMimeObject *top = g_mime_message_get_mime_part(msg);
    GMimeContentType *ct = top ? g_mime_object_get_content_type(top) : NULL;
    char ctype[80] = "none";
    if (ct) snprintf(ctype, sizeof ctype, "%s/%s", g_mime_content_type_get_media_type(ct) ? g_mime_content_type_get_media_type(ct) : "",
                     g_mime_content_type_get_media_subtype(ct) ? g_mime_content_type_get_media_subtype(ct) : "");
    evidence(ev, "ctype", ctype);
    evidence(ev, "body", acc->plain->len ? "plain" : from_html ? "html" : "none");
    evidence(ev, "attach", acc->attachments == 0 ? "0" : acc->attachments == 1 ? "1" : "2plus");
    evidence(ev, "charset", acc->charset[0] ? acc->charset : "none");
    /* presence of headers that ordinary correspondence and lists carry (X-Spam-* never looked at: filters
     * upstream add them and they would leak the label) */
    static const char *const present[][2] = {
        {"Message-ID", "message_id"}, {"Date", "date"},           {"In-Reply-To", "in_reply_to"},
        {"References", "references"}, {"List-Id", "list_id"},     {"List-Unsubscribe", "list_unsubscribe"},
        {"Precedence", "precedence"}, {"Reply-To", "reply_to"},   {"X-Priority", "x_priority"},
        {"X-MSMail-Priority", "x_msmail_priority"},               {"Organization", "organization"},
        {"MIME-Version", "mime_version"}, {"Cc", "cc"},
    };
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++)
        evidence(ev, g_mime_object_get_header(o, present[i][0]) ? "has" : "no", present[i][1]);
    more_evidence(msg, hl, nh, ev);
    header_words(hl, nh, ev);
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
        gather_evidence(msg, &acc, from_html, ev);
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
