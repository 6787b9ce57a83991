/* The row store: entries addressed by (key fields, content hash), one file each, atomic renames, checksums,
 * LRU trimming to a size cap (include/tbert/store.h, docs/store.md). */
#include "tbert/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tbert/fileio.h"

static const char MAGIC[8] = {'T', 'B', 'S', 'T', 'O', 'R', 'E', '1'};
enum { HDR = 24 }; /* magic, u64 payload length, u64 checksum (the first 8 bytes of the payload's sha256) */

struct tbert_store {
    char *dir;
    uint64_t max_bytes;
    bool read_only;
    tbert_store_stats stats;
};

static uint64_t parse_size(const char *s) {
    if (!s || !*s) return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = (uint64_t)1 << 30, end++;
    if (*end || v == 0 || v > UINT64_MAX / mul) return 0;
    return (uint64_t)v * mul;
}

tbert_status tbert_store_open(const tbert_store_opts *o, tbert_store **out, tbert_error *err) {
    *out = NULL;
    tbert_store *s = calloc(1, sizeof *s);
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "store: out of memory");
    char buf[4096];
    if (o && o->dir) {
        snprintf(buf, sizeof buf, "%s", o->dir);
    } else {
        char root[4000];
        tbert_cache_dir(root, sizeof root);
        snprintf(buf, sizeof buf, "%s/store", root);
    }
    s->dir = tbert_strdup(buf);
    s->read_only = o && o->read_only;
    s->max_bytes = o && o->max_bytes ? o->max_bytes : parse_size(getenv("TBERT_STORE_MAX"));
    if (!s->max_bytes) s->max_bytes = TBERT_STORE_DEFAULT_MAX;
    if (!s->dir) {
        free(s);
        return tbert_fail(err, TBERT_E_NOMEM, "store: out of memory");
    }
    if (!s->read_only) {
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", s->dir);
        char *slash = strrchr(parent, '/');
        tbert_status st = TBERT_OK;
        if (slash && slash != parent) {
            *slash = 0;
            st = tbert_mkdirs(parent, err);
        }
        if (!st && mkdir(s->dir, 0700) != 0 && errno != EEXIST)
            st = tbert_fail(err, TBERT_E_IO, "%s: cannot create the store folder: %s", s->dir, strerror(errno));
        if (st) {
            tbert_store_close(s);
            return st;
        }
    }
    *out = s;
    return TBERT_OK;
}

const tbert_store_stats *tbert_store_get_stats(const tbert_store *s) { return &s->stats; }
const char *tbert_store_dir(const tbert_store *s) { return s->dir; }

void tbert_store_close(tbert_store *s) {
    if (!s) return;
    if (s->stats.written && !s->read_only) {
        uint64_t ev = 0;
        tbert_error e;
        if (tbert_store_trim(s, s->max_bytes, &ev, &e)) fprintf(stderr, "tbert: warning: store not trimmed: %s\n", e.msg);
        s->stats.evicted += ev;
    }
    free(s->dir);
    free(s);
}

/* ---- keys ---- */
static int cmp_field(const void *a, const void *b) {
    return strcmp(((const tbert_store_field *)a)->name, ((const tbert_store_field *)b)->name);
}

tbert_status tbert_store_key(int n, const tbert_store_field *fields, char out[65], tbert_error *err) {
    tbert_store_field *f = tbert_malloc_array((size_t)(n > 0 ? n : 1), sizeof *f);
    if (!f) return tbert_fail(err, TBERT_E_NOMEM, "store: out of memory");
    if (n > 0) memcpy(f, fields, (size_t)n * sizeof *f);
    qsort(f, (size_t)n, sizeof *f, cmp_field);
    for (int i = 0; i < n; i++) {
        if (!f[i].name || !*f[i].name || strpbrk(f[i].name, "=\n") || !f[i].value || (i > 0 && !strcmp(f[i].name, f[i - 1].name))) {
            tbert_status st = tbert_fail(err, TBERT_E_ARG, "store: key field '%s' is empty, malformed or repeated",
                                         f[i].name ? f[i].name : "(null)");
            free(f);
            return st;
        }
    }
    GChecksum *cs = g_checksum_new(G_CHECKSUM_SHA256);
    for (int i = 0; i < n; i++) {
        char len[32];
        int k = snprintf(len, sizeof len, "=%zu:", strlen(f[i].value));
        g_checksum_update(cs, (const guchar *)f[i].name, (gssize)strlen(f[i].name));
        g_checksum_update(cs, (const guchar *)len, k);
        g_checksum_update(cs, (const guchar *)f[i].value, (gssize)strlen(f[i].value));
        g_checksum_update(cs, (const guchar *)"\n", 1);
    }
    snprintf(out, 65, "%s", g_checksum_get_string(cs));
    g_checksum_free(cs);
    free(f);
    return TBERT_OK;
}

void tbert_store_content_hash(const void *data, size_t len, char out[65]) { tbert_sha256_hex(data, len, out); }

/* ---- entries ---- */
static uint64_t checksum(const void *data, size_t len) {
    GChecksum *cs = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(cs, data, (gssize)len);
    guint8 d[32];
    gsize dl = sizeof d;
    g_checksum_get_digest(cs, d, &dl);
    g_checksum_free(cs);
    uint64_t v;
    memcpy(&v, d, sizeof v);
    return v;
}

/* DIR/ab/<rest>.row for address sha256(key "\n" content); sub gets DIR/ab */
static void entry_path(const tbert_store *s, const char key[65], const char content[65], char *path, size_t n, char *sub,
                       size_t subn) {
    char buf[130], addr[65];
    snprintf(buf, sizeof buf, "%.64s\n%.64s", key, content);
    tbert_sha256_hex(buf, strlen(buf), addr);
    snprintf(sub, subn, "%s/%.2s", s->dir, addr);
    snprintf(path, n, "%s/%.2s/%s.row", s->dir, addr, addr + 2);
}

static bool read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t k = read(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        len -= (size_t)k;
    }
    return true;
}

static bool write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        len -= (size_t)k;
    }
    return true;
}

tbert_status tbert_store_remove(tbert_store *s, const char key[65], const char content[65], bool *removed, tbert_error *err) {
    *removed = false;
    if (s->read_only) return tbert_fail(err, TBERT_E_ARG, "%s: the store is open read-only", s->dir);
    char path[4300], sub[4200];
    entry_path(s, key, content, path, sizeof path, sub, sizeof sub);
    if (unlink(path) == 0) *removed = true;
    else if (errno != ENOENT && errno != ENOTDIR) return tbert_fail(err, TBERT_E_IO, "%s: cannot remove: %s", path, strerror(errno));
    return TBERT_OK;
}

tbert_status tbert_store_get(tbert_store *s, const char key[65], const char content[65], void *buf, size_t len, bool *found,
                             tbert_error *err) {
    *found = false;
    char path[4300], sub[4200];
    entry_path(s, key, content, path, sizeof path, sub, sizeof sub);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            s->stats.misses++;
            return TBERT_OK;
        }
        return tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    unsigned char hdr[HDR];
    uint64_t plen = 0, sum = 0;
    bool ok = fstat(fd, &sb) == 0 && (uint64_t)sb.st_size == (uint64_t)HDR + len && read_full(fd, hdr, HDR) &&
              !memcmp(hdr, MAGIC, 8);
    if (ok) {
        memcpy(&plen, hdr + 8, 8);
        memcpy(&sum, hdr + 16, 8);
        ok = plen == len && read_full(fd, buf, len) && checksum(buf, len) == sum;
    }
    if (ok && !s->read_only && sb.st_mtime < time(NULL) - 60) (void)futimens(fd, NULL); /* LRU: used now */
    close(fd);
    if (!ok) {
        s->stats.corrupt++;
        s->stats.misses++;
        if (!s->read_only) unlink(path);
        return TBERT_OK;
    }
    s->stats.hits++;
    *found = true;
    return TBERT_OK;
}

tbert_status tbert_store_put(tbert_store *s, const char key[65], const char content[65], const void *data, size_t len,
                             tbert_error *err) {
    if (s->read_only) return TBERT_OK;
    char path[4300], sub[4200], tmp[4300];
    entry_path(s, key, content, path, sizeof path, sub, sizeof sub);
    if (mkdir(sub, 0700) != 0 && errno != EEXIST)
        return tbert_fail(err, TBERT_E_IO, "%s: cannot create folder: %s", sub, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s/.tmp.XXXXXX", sub);
    int fd = mkstemp(tmp); /* mode 0600 */
    if (fd < 0) return tbert_fail(err, TBERT_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    unsigned char hdr[HDR];
    uint64_t plen = len, sum = checksum(data, len);
    memcpy(hdr, MAGIC, 8);
    memcpy(hdr + 8, &plen, 8);
    memcpy(hdr + 16, &sum, 8);
    bool ok = write_full(fd, hdr, HDR) && write_full(fd, data, len);
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        return tbert_fail(err, TBERT_E_IO, "%s: cannot write: %s", path, strerror(e));
    }
    s->stats.written++;
    return TBERT_OK;
}

/* ---- trimming ---- */
typedef struct {
    int64_t mtime_ns;
    uint64_t size;
    char *path;
} entry_info;

static int cmp_entry(const void *a, const void *b) {
    const entry_info *x = a, *y = b;
    if (x->mtime_ns != y->mtime_ns) return x->mtime_ns < y->mtime_ns ? -1 : 1;
    return strcmp(x->path, y->path);
}

static bool is_hex2(const char *n) {
    return strlen(n) == 2 && g_ascii_isxdigit(n[0]) && g_ascii_isxdigit(n[1]);
}

tbert_status tbert_store_trim(tbert_store *s, uint64_t max_bytes, uint64_t *evicted, tbert_error *err) {
    *evicted = 0;
    if (s->read_only) return TBERT_OK;
    DIR *top = opendir(s->dir);
    if (!top) return errno == ENOENT ? TBERT_OK : tbert_fail(err, TBERT_E_IO, "%s: cannot read: %s", s->dir, strerror(errno));
    entry_info *v = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    time_t now = time(NULL);
    tbert_status st = TBERT_OK;
    struct dirent *d;
    while (!st && (d = readdir(top))) {
        if (!is_hex2(d->d_name)) continue;
        char sub[4200];
        snprintf(sub, sizeof sub, "%s/%s", s->dir, d->d_name);
        DIR *dd = opendir(sub);
        if (!dd) continue;
        struct dirent *f;
        while (!st && (f = readdir(dd))) {
            size_t L = strlen(f->d_name);
            bool tmpf = !strncmp(f->d_name, ".tmp.", 5), row = L > 4 && !strcmp(f->d_name + L - 4, ".row");
            if (!tmpf && !row) continue;
            char path[4600];
            snprintf(path, sizeof path, "%s/%s", sub, f->d_name);
            struct stat sb;
            if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
            if (tmpf) {
                if (sb.st_mtime < now - 3600) unlink(path);
                continue;
            }
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 1024;
                entry_info *nv = tbert_realloc_array(v, nc, sizeof *nv);
                if (!nv) {
                    st = tbert_fail(err, TBERT_E_NOMEM, "store: out of memory listing entries");
                    break;
                }
                v = nv;
                cap = nc;
            }
            v[n].mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
            v[n].size = (uint64_t)sb.st_size;
            v[n].path = tbert_strdup(path);
            if (!v[n].path) {
                st = tbert_fail(err, TBERT_E_NOMEM, "store: out of memory listing entries");
                break;
            }
            total += v[n].size;
            n++;
        }
        closedir(dd);
    }
    closedir(top);
    if (!st && total > max_bytes) {
        qsort(v, n, sizeof *v, cmp_entry);
        for (size_t i = 0; i < n && total > max_bytes; i++)
            if (unlink(v[i].path) == 0 || errno == ENOENT) {
                total -= v[i].size;
                (*evicted)++;
            }
    }
    for (size_t i = 0; i < n; i++) free(v[i].path);
    free(v);
    return st;
}
