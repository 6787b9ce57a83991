/* Labelled text tables: TSV (split at TAB, no quoting), CSV (RFC 4180), JSONL (cJSON).
 * Parsing happens in two steps: the buffer is cut into rows of fields (one row per record, with the
 * physical line it starts on), then the header rule and the column choice pick text and label. */
#include "tbert/dataset.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tbert/fileio.h"

/* Tables are read whole; 4 GiB is far beyond any labelled set we train on. */
#define TABLE_MAX_BYTES ((size_t)4 << 30)

tbert_status tbert_table_format_parse(const char *s, tbert_table_format *out, tbert_error *err) {
    static const struct {
        const char *name;
        tbert_table_format f;
    } names[] = {{"auto", TBERT_TABLE_AUTO}, {"tsv", TBERT_TABLE_TSV}, {"csv", TBERT_TABLE_CSV}, {"jsonl", TBERT_TABLE_JSONL}};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (!strcasecmp(s, names[i].name)) {
            *out = names[i].f;
            return TBERT_OK;
        }
    }
    return tbert_fail(err, TBERT_E_ARG, "--input-format expects tsv, csv, jsonl or auto, got '%s'", s ? s : "");
}

tbert_status tbert_header_mode_parse(const char *s, tbert_header_mode *out, tbert_error *err) {
    if (s && !strcasecmp(s, "auto")) *out = TBERT_HEADER_AUTO;
    else if (s && !strcasecmp(s, "yes")) *out = TBERT_HEADER_YES;
    else if (s && !strcasecmp(s, "no")) *out = TBERT_HEADER_NO;
    else return tbert_fail(err, TBERT_E_ARG, "--header expects auto, yes or no, got '%s'", s ? s : "");
    return TBERT_OK;
}

static bool ends_with_ci(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcasecmp(s + n - m, suffix);
}

static tbert_table_format detect_from_line(const char *line, size_t len) {
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    /* a UTF-8 byte order mark does not count */
    if (len >= 3 && !memcmp(line, "\xEF\xBB\xBF", 3) && i == 0) i = 3;
    if (i < len && line[i] == '{') return TBERT_TABLE_JSONL;
    for (size_t j = 0; j < len && line[j] != '\n'; j++)
        if (line[j] == '\t') return TBERT_TABLE_TSV;
    return TBERT_TABLE_CSV;
}

tbert_table_format tbert_table_detect(const char *path, const char *first_line, size_t len) {
    if (path) {
        if (ends_with_ci(path, ".tsv") || ends_with_ci(path, ".tab")) return TBERT_TABLE_TSV;
        if (ends_with_ci(path, ".jsonl") || ends_with_ci(path, ".ndjson")) return TBERT_TABLE_JSONL;
        if (ends_with_ci(path, ".csv")) {
            /* A ".csv" whose first line has TABs and no comma is tab-separated (the tutorial's seed/spam.csv
             * is exactly that: header "Type<TAB>Message"). */
            bool tab = false, comma = false;
            for (size_t j = 0; first_line && j < len && first_line[j] != '\n'; j++) {
                if (first_line[j] == '\t') tab = true;
                if (first_line[j] == ',') comma = true;
            }
            return tab && !comma ? TBERT_TABLE_TSV : TBERT_TABLE_CSV;
        }
    }
    if (!first_line) return TBERT_TABLE_CSV;
    return detect_from_line(first_line, len);
}

/* ---- rows of fields ---------------------------------------------------- */

typedef struct {
    char *s;
    size_t len;
} field;

typedef struct {
    field *f;
    int n;
    int64_t line;
    uint64_t offset;
} row;

typedef struct {
    row *r;
    size_t n, cap;
} rowvec;

static void rows_free(rowvec *rv) {
    for (size_t i = 0; i < rv->n; i++) {
        for (int j = 0; j < rv->r[i].n; j++) free(rv->r[i].f[j].s);
        free(rv->r[i].f);
    }
    free(rv->r);
    rv->r = NULL;
    rv->n = rv->cap = 0;
}

static bool rows_push(rowvec *rv, row r) {
    if (rv->n == rv->cap) {
        size_t nc = rv->cap ? rv->cap * 2 : 256;
        row *nr = tbert_realloc_array(rv->r, nc, sizeof *nr);
        if (!nr) return false;
        rv->r = nr;
        rv->cap = nc;
    }
    rv->r[rv->n++] = r;
    return true;
}

typedef struct {
    field *f;
    int n, cap;
} fieldvec;

static bool fields_push(fieldvec *fv, const char *s, size_t len) {
    if (fv->n == fv->cap) {
        int nc = fv->cap ? fv->cap * 2 : 8;
        field *nf = tbert_realloc_array(fv->f, (size_t)nc, sizeof *nf);
        if (!nf) return false;
        fv->f = nf;
        fv->cap = nc;
    }
    char *d = tbert_strndup(s, len);
    if (!d) return false;
    fv->f[fv->n].s = d;
    fv->f[fv->n].len = len;
    fv->n++;
    return true;
}

static void fields_free(fieldvec *fv) {
    for (int i = 0; i < fv->n; i++) free(fv->f[i].s);
    free(fv->f);
    fv->f = NULL;
    fv->n = fv->cap = 0;
}

static tbert_status nomem(tbert_error *err, const char *label) {
    return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory reading the table", label);
}

/* One line of a TSV or JSONL file: [start, end) without the line break; a CR before LF is dropped. */
static size_t line_end(const char *buf, size_t len, size_t pos, size_t *next) {
    const char *nl = memchr(buf + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - buf) : len;
    *next = nl ? end + 1 : len;
    if (end > pos && buf[end - 1] == '\r') end--;
    return end;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return false;
    return true;
}

static tbert_status split_tsv(const char *buf, size_t len, const char *label, rowvec *rows, tbert_error *err) {
    size_t pos = 0;
    int64_t line = 0;
    while (pos < len) {
        size_t next, end = line_end(buf, len, pos, &next);
        line++;
        if (end == pos) { /* empty line: skipped */
            pos = next;
            continue;
        }
        fieldvec fv = {0};
        size_t start = pos;
        for (size_t i = pos; i <= end; i++) {
            if (i == end || buf[i] == '\t') {
                if (!fields_push(&fv, buf + start, i - start)) {
                    fields_free(&fv);
                    return nomem(err, label);
                }
                start = i + 1;
            }
        }
        if (!rows_push(rows, (row){fv.f, fv.n, line, pos})) {
            fields_free(&fv);
            return nomem(err, label);
        }
        pos = next;
    }
    return TBERT_OK;
}

/* RFC 4180: fields separated by commas, records by CRLF (a bare LF accepted too); a field in double
 * quotes may hold commas, line breaks and "" for a quote. A quote inside an unquoted field is kept as a
 * literal (common in the wild); a quoted field followed by anything but a separator is an error. */
static tbert_status split_csv(const char *buf, size_t len, const char *label, rowvec *rows, tbert_error *err) {
    size_t pos = 0;
    int64_t line = 1;
    char *acc = NULL;
    size_t acc_len = 0, acc_cap = 0;
    tbert_status st = TBERT_OK;
    while (pos < len) {
        int64_t row_line = line;
        uint64_t row_off = pos;
        fieldvec fv = {0};
        bool row_done = false;
        /* an empty line (not inside quotes) is skipped */
        if (buf[pos] == '\n' || (buf[pos] == '\r' && pos + 1 < len && buf[pos + 1] == '\n')) {
            pos += buf[pos] == '\r' ? 2 : 1;
            line++;
            continue;
        }
        while (!row_done) {
            acc_len = 0;
            bool quoted = pos < len && buf[pos] == '"';
            if (quoted) {
                int64_t qline = line;
                pos++;
                for (;;) {
                    if (pos >= len) {
                        st = tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: quoted CSV field is never closed", label, (long long)qline);
                        goto fail;
                    }
                    char c = buf[pos];
                    if (c == '"') {
                        if (pos + 1 < len && buf[pos + 1] == '"') {
                            c = '"';
                            pos += 2;
                        } else {
                            pos++;
                            break;
                        }
                    } else {
                        if (c == '\n') line++;
                        pos++;
                    }
                    if (acc_len + 1 >= acc_cap) {
                        size_t nc = acc_cap ? acc_cap * 2 : 256;
                        char *na = realloc(acc, nc);
                        if (!na) {
                            st = nomem(err, label);
                            goto fail;
                        }
                        acc = na;
                        acc_cap = nc;
                    }
                    acc[acc_len++] = c;
                }
                if (pos < len && buf[pos] != ',' && buf[pos] != '\n' && !(buf[pos] == '\r')) {
                    st = tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: unexpected character '%c' after a closing quote in CSV",
                                    label, (long long)line, isprint((unsigned char)buf[pos]) ? buf[pos] : '?');
                    goto fail;
                }
                if (!fields_push(&fv, acc ? acc : "", acc_len)) {
                    st = nomem(err, label);
                    goto fail;
                }
            } else {
                size_t start = pos;
                while (pos < len && buf[pos] != ',' && buf[pos] != '\n') pos++;
                size_t end = pos;
                if ((pos >= len || buf[pos] == '\n') && end > start && buf[end - 1] == '\r') end--;
                if (!fields_push(&fv, buf + start, end - start)) {
                    st = nomem(err, label);
                    goto fail;
                }
            }
            /* separator */
            if (pos < len && buf[pos] == ',') {
                pos++;
                continue;
            }
            if (pos < len && buf[pos] == '\r') pos++;
            if (pos < len && buf[pos] == '\n') {
                pos++;
                line++;
            }
            row_done = true;
        }
        if (!rows_push(rows, (row){fv.f, fv.n, row_line, row_off})) {
            fields_free(&fv);
            st = nomem(err, label);
            goto out;
        }
        continue;
    fail:
        fields_free(&fv);
        goto out;
    }
out:
    free(acc);
    return st;
}

/* ---- column choice ------------------------------------------------------ */

/* A column spec is a 1-based number or a header name. Returns the 0-based index, -1 when `spec` is a name
 * not in `hdr`, -2 for a number out of range of int. */
static bool parse_col_number(const char *spec, int *out) {
    if (!spec || !*spec) return false;
    for (const char *p = spec; *p; p++)
        if (!isdigit((unsigned char)*p)) return false;
    errno = 0;
    long v = strtol(spec, NULL, 10);
    if (errno || v < 1 || v > 1000000) return false;
    *out = (int)v - 1;
    return true;
}

static int find_name(const row *hdr, const char *name) {
    for (int j = 0; j < hdr->n; j++) {
        const char *s = hdr->f[j].s;
        size_t len = hdr->f[j].len;
        if (len >= 3 && j == 0 && !memcmp(s, "\xEF\xBB\xBF", 3)) {
            s += 3;
            len -= 3;
        }
        if (len == strlen(name) && !memcmp(s, name, len)) return j;
    }
    return -1;
}

static bool unlabelled_spec(const char *s) { return s && (!*s || !strcasecmp(s, "none")); }

static tbert_status take_rows(rowvec *rows, const char *label, const tbert_table_opts *opts, tbert_table *out,
                              tbert_error *err) {
    const char *text_spec = opts ? opts->text_col : NULL;
    const char *label_spec = opts ? opts->label_col : NULL;
    tbert_header_mode hmode = opts ? opts->header : TBERT_HEADER_AUTO;
    bool labelled = !unlabelled_spec(label_spec);
    /* a one-column file scored with default columns: text only */
    if (labelled && opts && opts->label_optional && !text_spec && !label_spec && rows->n > 0 && rows->r[0].n < 2)
        labelled = false;
    int text_idx = -1, label_idx = -1;
    bool text_named = false, label_named = false;
    if (text_spec && !parse_col_number(text_spec, &text_idx)) text_named = true;
    if (labelled) {
        if (!label_spec) label_idx = 0;
        else if (!parse_col_number(label_spec, &label_idx)) label_named = true;
    }
    if (!text_spec) text_idx = (!labelled && rows->n > 0 && rows->r[0].n < 2) ? 0 : 1;

    bool header = false;
    if (rows->n > 0) {
        const row *first = &rows->r[0];
        if (text_named || label_named) {
            if (hmode == TBERT_HEADER_NO)
                return tbert_fail(err, TBERT_E_ARG, "%s: columns named by header but --header no was given", label);
            header = true;
        } else if (hmode == TBERT_HEADER_YES) {
            header = true;
        } else if (hmode == TBERT_HEADER_AUTO && labelled && label_idx < first->n) {
            /* the first row is a header when its label field occurs nowhere else in the label column */
            const field *h = &first->f[label_idx];
            header = true;
            for (size_t i = 1; i < rows->n; i++) {
                const row *r = &rows->r[i];
                if (label_idx < r->n && r->f[label_idx].len == h->len && !memcmp(r->f[label_idx].s, h->s, h->len)) {
                    header = false;
                    break;
                }
            }
            if (rows->n == 1) header = false; /* a lone row is data */
        }
        if (text_named && (text_idx = find_name(first, text_spec)) < 0)
            return tbert_fail(err, TBERT_E_ARG, "%s:%lld: no column named '%s' in the header", label,
                              (long long)first->line, text_spec);
        if (label_named && (label_idx = find_name(first, label_spec)) < 0)
            return tbert_fail(err, TBERT_E_ARG, "%s:%lld: no column named '%s' in the header", label,
                              (long long)first->line, label_spec);
    } else if (hmode == TBERT_HEADER_YES || text_named || label_named) {
        return tbert_fail(err, TBERT_E_FORMAT, "%s: the table is empty (no header row)", label);
    }

    size_t start = header ? 1 : 0;
    size_t n = rows->n - start;
    if (n > INT32_MAX) return tbert_fail(err, TBERT_E_NOMEM, "%s: too many records (%zu)", label, n);
    out->n = (int)n;
    out->text = tbert_calloc_array(n, sizeof *out->text);
    out->text_len = tbert_calloc_array(n, sizeof *out->text_len);
    out->line = tbert_calloc_array(n, sizeof *out->line);
    out->offset = tbert_calloc_array(n, sizeof *out->offset);
    out->label = labelled ? tbert_calloc_array(n, sizeof *out->label) : NULL;
    if (!out->text || !out->text_len || !out->line || !out->offset || (labelled && !out->label)) return nomem(err, label);
    int need = text_idx > label_idx ? text_idx : label_idx;
    for (size_t i = 0; i < n; i++) {
        row *r = &rows->r[start + i];
        if (r->n <= need)
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: record has %d field%s, column %d is needed", label,
                              (long long)r->line, r->n, r->n == 1 ? "" : "s", need + 1);
        /* move the strings out of the row (the row keeps NULL so rows_free does not double free) */
        out->text[i] = r->f[text_idx].s;
        out->text_len[i] = r->f[text_idx].len;
        r->f[text_idx].s = NULL;
        if (labelled) {
            if (label_idx == text_idx) {
                if (!(out->label[i] = tbert_strdup(out->text[i]))) return nomem(err, label);
            } else {
                out->label[i] = r->f[label_idx].s;
                r->f[label_idx].s = NULL;
            }
        }
        out->line[i] = r->line;
        out->offset[i] = r->offset;
    }
    return TBERT_OK;
}

/* ---- JSONL -------------------------------------------------------------- */

static char *json_scalar_string(const cJSON *v) {
    if (cJSON_IsString(v)) return tbert_strdup(v->valuestring);
    if (cJSON_IsBool(v)) return tbert_strdup(cJSON_IsTrue(v) ? "true" : "false");
    if (cJSON_IsNumber(v)) {
        char b[64];
        double d = v->valuedouble;
        if (d == (double)(long long)d && d > -1e15 && d < 1e15) snprintf(b, sizeof b, "%lld", (long long)d);
        else snprintf(b, sizeof b, "%.17g", d);
        return tbert_strdup(b);
    }
    return NULL;
}

static tbert_status parse_jsonl(const char *buf, size_t len, const char *label, const tbert_table_opts *opts,
                                tbert_table *out, tbert_error *err) {
    const char *text_key = opts && opts->text_col ? opts->text_col : "text";
    const char *label_key = opts && opts->label_col ? opts->label_col : "label";
    bool labelled = !unlabelled_spec(opts ? opts->label_col : NULL);
    size_t cap = 0, n = 0;
    size_t pos = 0;
    int64_t line = 0;
    tbert_status st = TBERT_OK;
    while (pos < len) {
        size_t next, end = line_end(buf, len, pos, &next);
        line++;
        uint64_t rec_off = pos;
        const char *s = buf + pos;
        size_t sl = end - pos;
        pos = next;
        if (line == 1 && sl >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) {
            s += 3;
            sl -= 3;
        }
        if (blank(s, sl)) continue;
        const char *parse_end = NULL;
        cJSON *obj = cJSON_ParseWithLengthOpts(s, sl, &parse_end, false);
        if (!obj || !cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: not a JSON object", label, (long long)line);
        }
        if (parse_end && !blank(parse_end, (size_t)(s + sl - parse_end))) {
            cJSON_Delete(obj);
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: text after the JSON object", label, (long long)line);
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, text_key);
        const cJSON *l = labelled ? cJSON_GetObjectItemCaseSensitive(obj, label_key) : NULL;
        if (!cJSON_IsString(t)) {
            cJSON_Delete(obj);
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: no string field \"%s\"", label, (long long)line, text_key);
        }
        char *lab = NULL;
        bool optional_missing = labelled && !l && opts && opts->label_optional;
        if (labelled && !optional_missing && !(l && (lab = json_scalar_string(l)))) {
            cJSON_Delete(obj);
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: no field \"%s\" (string, number or boolean)", label,
                              (long long)line, label_key);
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 256;
            char **nt = tbert_realloc_array(out->text, nc, sizeof *nt);
            if (nt) out->text = nt;
            size_t *ntl = tbert_realloc_array(out->text_len, nc, sizeof *ntl);
            if (ntl) out->text_len = ntl;
            int64_t *nln = tbert_realloc_array(out->line, nc, sizeof *nln);
            if (nln) out->line = nln;
            uint64_t *noff = tbert_realloc_array(out->offset, nc, sizeof *noff);
            if (noff) out->offset = noff;
            char **nlab = labelled ? tbert_realloc_array(out->label, nc, sizeof *nlab) : NULL;
            if (nlab) out->label = nlab;
            if (!nt || !ntl || !nln || !noff || (labelled && !nlab)) {
                free(lab);
                cJSON_Delete(obj);
                return nomem(err, label);
            }
            cap = nc;
        }
        size_t tl = strlen(t->valuestring);
        char *txt = tbert_strndup(t->valuestring, tl);
        cJSON_Delete(obj);
        if (!txt) {
            free(lab);
            return nomem(err, label);
        }
        out->text[n] = txt;
        out->text_len[n] = tl;
        if (labelled) out->label[n] = lab;
        out->line[n] = line;
        out->offset[n] = rec_off;
        n++;
        out->n = (int)n;
        if (n >= INT32_MAX) return tbert_fail(err, TBERT_E_NOMEM, "%s: too many records", label);
    }
    if (labelled && !out->label) {
        out->label = tbert_calloc_array(1, sizeof *out->label);
        if (!out->label) return nomem(err, label);
    }
    return st;
}

/* ---- public ------------------------------------------------------------- */

tbert_status tbert_table_parse(const char *buf, size_t len, const char *label, tbert_table_format fmt,
                               const tbert_table_opts *opts, tbert_table *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    if (!label) label = "<table>";
    if (fmt == TBERT_TABLE_AUTO) fmt = opts && opts->format != TBERT_TABLE_AUTO ? opts->format : tbert_table_detect(NULL, buf, len);
    tbert_status st;
    if (fmt == TBERT_TABLE_JSONL) {
        st = parse_jsonl(buf, len, label, opts, out, err);
    } else {
        rowvec rows = {0};
        st = fmt == TBERT_TABLE_TSV ? split_tsv(buf, len, label, &rows, err) : split_csv(buf, len, label, &rows, err);
        if (st == TBERT_OK) st = take_rows(&rows, label, opts, out, err);
        rows_free(&rows);
    }
    if (st == TBERT_OK && out->n > 0 && out->text == NULL) st = nomem(err, label);
    if (st != TBERT_OK) tbert_table_free(out);
    return st;
}

tbert_status tbert_table_read(const char *path, const tbert_table_opts *opts, tbert_table *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    char *buf;
    size_t len;
    tbert_status st = tbert_read_file(path, TABLE_MAX_BYTES, &buf, &len, err);
    if (st != TBERT_OK) return st;
    tbert_table_format fmt = opts ? opts->format : TBERT_TABLE_AUTO;
    if (fmt == TBERT_TABLE_AUTO) fmt = tbert_table_detect(path, buf, len);
    st = tbert_table_parse(buf, len, path, fmt, opts, out, err);
    free(buf);
    return st;
}

void tbert_table_free(tbert_table *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        if (t->text) free(t->text[i]);
        if (t->label) free(t->label[i]);
    }
    free(t->text);
    free(t->text_len);
    free(t->label);
    free(t->line);
    free(t->offset);
    memset(t, 0, sizeof *t);
}

void tbert_table_hash(const tbert_table *t, char out[65]) {
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    if (!c) {
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    /* each field as an 8-byte little-endian length then its bytes: no two tables share an encoding */
    for (int i = 0; i < t->n; i++) {
        const char *lab = t->label && t->label[i] ? t->label[i] : "";
        uint64_t ll = strlen(lab), tl = t->text_len[i];
        unsigned char b[8];
        for (int k = 0; k < 8; k++) b[k] = (unsigned char)(ll >> (8 * k));
        g_checksum_update(c, b, 8);
        g_checksum_update(c, (const guchar *)lab, (gssize)ll);
        for (int k = 0; k < 8; k++) b[k] = (unsigned char)(tl >> (8 * k));
        g_checksum_update(c, b, 8);
        g_checksum_update(c, (const guchar *)t->text[i], (gssize)tl);
    }
    const char *hex = g_checksum_get_string(c);
    memcpy(out, hex, 64);
    out[64] = '\0';
    g_checksum_free(c);
}
