/* Header evidence of one message for the mail recipe: space-separated KEY:VALUE tokens (sender and relay
 * domains, mailer, structure, which headers are present) and every word of every header value as
 * h.NAME:word (the header block). The token list is documented at tbert_message.evidence (tbert/mail.h). */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mail_evidence.h"

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

void tbert_mail_evidence(GMimeMessage *msg, const char *body, int attachments, const char *charset, GString *ev) {
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
    evidence(ev, "body", body);
    evidence(ev, "attach", attachments == 0 ? "0" : attachments == 1 ? "1" : "2plus");
    evidence(ev, "charset", charset[0] ? charset : "none");
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
