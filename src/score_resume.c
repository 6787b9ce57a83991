/* tbert score --resume: reads what the existing output already holds (dropping a partly written last line)
 * into counts of (source, offset) pairs, which the reader then takes items out of. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "score_internal.h"

static char *done_key(const char *source, uint64_t offset) {
    return g_strdup_printf("%llu\t%s", (unsigned long long)offset, source);
}

/* First two CSV fields of a line: source and offset. */
static bool csv_first_two(const char *line, size_t n, GString *source, uint64_t *offset) {
    size_t i = 0;
    g_string_truncate(source, 0);
    if (i < n && line[i] == '"') {
        for (i = 1; i < n; i++) {
            if (line[i] == '"') {
                if (i + 1 < n && line[i + 1] == '"') {
                    g_string_append_c(source, '"');
                    i++;
                } else {
                    i++;
                    break;
                }
            } else {
                g_string_append_c(source, line[i]);
            }
        }
    } else {
        while (i < n && line[i] != ',') g_string_append_c(source, line[i++]);
    }
    if (i >= n || line[i] != ',') return false;
    i++;
    char *end;
    unsigned long long v = strtoull(line + i, &end, 10);
    if (end == line + i || (*end != ',' && *end != '\n')) return false;
    *offset = v;
    return true;
}

/* Reads the existing output: drops a partly written last line (truncating the file), counts the
 * (source, offset) pairs of the complete records. *existed: a non-empty output was found. */
tbert_status tbert_score_load_done(const char *path, tbert_score_format fmt, GHashTable *done, uint64_t *n_records, bool *existed,
                              bool *has_header, tbert_error *err) {
    *existed = false;
    *has_header = false;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return TBERT_OK;
        return tbert_fail(err, TBERT_E_IO, "%s: cannot open for --resume: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return TBERT_OK; /* not a regular file: nothing to resume from */
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory reading it for --resume", path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    size_t keep = got;
    while (keep > 0 && buf[keep - 1] != '\n') keep--;
    if (keep < got) {
        if (ftruncate(fd, (off_t)keep) != 0) {
            int e = errno;
            free(buf);
            close(fd);
            return tbert_fail(err, TBERT_E_IO, "%s: cannot drop the partly written last record: %s", path, strerror(e));
        }
        fprintf(stderr, "tbert score: %s: dropped a partly written last record (%zu bytes)\n", path, got - keep);
    }
    close(fd);
    *existed = keep > 0;
    GString *src = g_string_new("");
    size_t pos = 0;
    int64_t line_no = 0;
    while (pos < keep) {
        char *nl = memchr(buf + pos, '\n', keep - pos);
        size_t end = (size_t)(nl - buf);
        line_no++;
        const char *line = buf + pos;
        size_t n = end - pos;
        uint64_t offset = 0;
        bool ok = false;
        if (fmt == TBERT_SCORE_CSV) {
            if (line_no == 1 && n + 1 == sizeof TBERT_SCORE_CSV_HEADER - 1 && !memcmp(line, TBERT_SCORE_CSV_HEADER, n)) {
                *has_header = true;
                ok = true;
                pos = end + 1;
                continue;
            }
            ok = csv_first_two(line, n, src, &offset);
        } else {
            cJSON *o = cJSON_ParseWithLength(line, n);
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "source");
            const cJSON *off = cJSON_GetObjectItemCaseSensitive(o, "offset");
            if (cJSON_IsString(s) && cJSON_IsNumber(off) && off->valuedouble >= 0) {
                g_string_assign(src, s->valuestring);
                offset = (uint64_t)off->valuedouble;
                ok = true;
            }
            cJSON_Delete(o);
        }
        if (!ok) {
            free(buf);
            g_string_free(src, TRUE);
            return tbert_fail(err, TBERT_E_FORMAT, "%s:%lld: not a tbert score %s record; cannot --resume from it", path,
                              (long long)line_no, fmt == TBERT_SCORE_CSV ? "CSV" : "JSONL");
        }
        /* counted: an input named twice has its (source, offset) pairs twice in the output */
        char *key = done_key(src->str, offset);
        guint c = GPOINTER_TO_UINT(g_hash_table_lookup(done, key));
        g_hash_table_insert(done, key, GUINT_TO_POINTER(c + 1));
        (*n_records)++;
        pos = end + 1;
    }
    g_string_free(src, TRUE);
    free(buf);
    return TBERT_OK;
}

/* Takes one occurrence of (source, offset) out of the done counts; true when there was one. */
bool tbert_score_take_done(GHashTable *done, const char *source, uint64_t offset) {
    char *key = done_key(source, offset);
    gpointer orig, val;
    bool seen = g_hash_table_lookup_extended(done, key, &orig, &val);
    if (seen) {
        guint c = GPOINTER_TO_UINT(val);
        if (c <= 1) g_hash_table_remove(done, key);
        else g_hash_table_insert(done, g_strdup(key), GUINT_TO_POINTER(c - 1));
    }
    g_free(key);
    return seen;
}
