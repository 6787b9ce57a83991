#include "tbert/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

tbert_status tbert_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, tbert_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return tbert_fail(err, TBERT_E_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (max_bytes && size > max_bytes) {
        close(fd);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: file is %zu bytes, more than the limit of %zu", path, size, max_bytes);
    }
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return tbert_fail(err, TBERT_E_IO, "%s: read failed: %s", path, r == 0 ? "file shrank while reading" : strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    if (out_len) *out_len = size;
    return TBERT_OK;
}

struct tbert_atomic_file {
    int fd;
    bool direct; /* not a regular file: written in place */
    char *path, *tmp;
};

static tbert_status write_all(int fd, const void *data, size_t len, const char *path, tbert_error *err) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return tbert_fail(err, TBERT_E_IO, "%s: write failed: %s", path, strerror(errno));
        p += w;
        len -= (size_t)w;
    }
    return TBERT_OK;
}

tbert_status tbert_atomic_open(const char *path, tbert_atomic_file **out, tbert_error *err) {
    *out = NULL;
    tbert_atomic_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = tbert_strdup(path))) {
        free(f);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    }
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        f->direct = true;
        f->fd = open(path, O_WRONLY | O_CLOEXEC);
    } else {
        size_t n = strlen(path) + 32;
        f->tmp = malloc(n);
        if (!f->tmp) {
            free(f->path);
            free(f);
            return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
        }
        snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    if (f->fd < 0) {
        tbert_status s = tbert_fail(err, TBERT_E_IO, "%s: cannot create: %s", f->tmp ? f->tmp : path, strerror(errno));
        free(f->tmp);
        free(f->path);
        free(f);
        return s;
    }
    *out = f;
    return TBERT_OK;
}

/* Fault injection for the disk-full tests: TBERT_TEST_FAIL_WRITE=PATTERN makes every atomic write to a
 * path containing PATTERN fail as a full disk would (ENOSPC), after the temp file was created. */
static bool injected_write_failure(const char *path) {
    const char *pat = getenv("TBERT_TEST_FAIL_WRITE");
    return pat && *pat && strstr(path, pat) != NULL;
}

tbert_status tbert_atomic_write(tbert_atomic_file *f, const void *data, size_t len, tbert_error *err) {
    /* errors name the destination the user asked for, not the temp file beside it */
    if (injected_write_failure(f->path))
        return tbert_fail(err, TBERT_E_IO, "%s: write failed: %s", f->path, strerror(ENOSPC));
    return write_all(f->fd, data, len, f->path, err);
}

static void free_atomic(tbert_atomic_file *f) {
    free(f->tmp);
    free(f->path);
    free(f);
}

void tbert_atomic_abort(tbert_atomic_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free_atomic(f);
}

static void fsync_parent(const char *path) {
    char *dup = tbert_strdup(path);
    if (!dup) return;
    char *slash = strrchr(dup, '/');
    const char *dir = ".";
    if (slash == dup) dir = "/";
    else if (slash) { *slash = '\0'; dir = dup; }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dup);
}

tbert_status tbert_atomic_commit(tbert_atomic_file *f, tbert_error *err) {
    if (f->direct) {
        int rc = close(f->fd);
        f->fd = -1;
        tbert_status s = rc == 0 ? TBERT_OK : tbert_fail(err, TBERT_E_IO, "%s: close failed: %s", f->path, strerror(errno));
        free_atomic(f);
        return s;
    }
    if (fsync(f->fd) != 0) {
        tbert_status s = tbert_fail(err, TBERT_E_IO, "%s: fsync failed: %s", f->tmp, strerror(errno));
        tbert_atomic_abort(f);
        return s;
    }
    if (close(f->fd) != 0) {
        f->fd = -1;
        tbert_status s = tbert_fail(err, TBERT_E_IO, "%s: close failed: %s", f->tmp, strerror(errno));
        tbert_atomic_abort(f);
        return s;
    }
    f->fd = -1;
    if (rename(f->tmp, f->path) != 0) {
        tbert_status s = tbert_fail(err, TBERT_E_IO, "%s: rename failed: %s", f->path, strerror(errno));
        tbert_atomic_abort(f);
        return s;
    }
    fsync_parent(f->path);
    free_atomic(f);
    return TBERT_OK;
}

tbert_status tbert_write_file_atomic(const char *path, const void *data, size_t len, tbert_error *err) {
    tbert_atomic_file *f;
    tbert_status s = tbert_atomic_open(path, &f, err);
    if (s) return s;
    if ((s = tbert_atomic_write(f, data, len, err))) {
        tbert_atomic_abort(f);
        return s;
    }
    return tbert_atomic_commit(f, err);
}

void tbert_sha256_hex(const void *data, size_t len, char out[65]) {
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    const unsigned char *p = data;
    while (len > 0) { /* g_checksum_update takes gssize */
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        g_checksum_update(c, p, (gssize)chunk);
        p += chunk;
        len -= chunk;
    }
    snprintf(out, 65, "%s", g_checksum_get_string(c));
    g_checksum_free(c);
}

tbert_status tbert_sha256_file(const char *path, char out[65], tbert_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    unsigned char buf[1 << 16];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, fp)) > 0) g_checksum_update(c, buf, (gssize)r);
    bool bad = ferror(fp);
    fclose(fp);
    if (!bad) snprintf(out, 65, "%s", g_checksum_get_string(c));
    g_checksum_free(c);
    return bad ? tbert_fail(err, TBERT_E_IO, "%s: read failed", path) : TBERT_OK;
}

void tbert_cache_dir(char *buf, size_t n) {
    const char *c = getenv("TBERT_CACHE");
    if (c && *c) {
        snprintf(buf, n, "%s", c);
        return;
    }
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && *x) {
        snprintf(buf, n, "%s/tbert", x);
        return;
    }
    const char *h = getenv("HOME");
    snprintf(buf, n, "%s/.cache/tbert", h && *h ? h : ".");
}

bool tbert_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool tbert_is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

tbert_status tbert_resolve_model_dir(const char *name_or_dir, char *buf, size_t n, tbert_error *err) {
    const char *v = (name_or_dir && *name_or_dir) ? name_or_dir : "minilm";
    if (strchr(v, '/') || tbert_is_dir(v)) {
        snprintf(buf, n, "%s", v);
    } else {
        char cache[PATH_MAX];
        tbert_cache_dir(cache, sizeof cache);
        snprintf(buf, n, "%s/models/%s", cache, v);
    }
    if (!tbert_is_dir(buf))
        return tbert_fail(err, TBERT_E_IO, "%s: model folder not found (fetch it with models/fetch.sh %s, or pass a folder)", buf,
                          strchr(v, '/') ? "NAME" : v);
    return TBERT_OK;
}

tbert_status tbert_mkdirs(const char *path, tbert_error *err) {
    char *p = tbert_strdup(path);
    if (!p) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            tbert_status st = tbert_fail(err, TBERT_E_IO, "%s: cannot create folder: %s", p, strerror(errno));
            free(p);
            return st;
        }
        *s = '/';
    }
    tbert_status st = TBERT_OK;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) st = tbert_fail(err, TBERT_E_IO, "%s: cannot create folder: %s", p, strerror(errno));
    else if (!tbert_is_dir(p)) st = tbert_fail(err, TBERT_E_IO, "%s: exists and is not a folder", p);
    free(p);
    return st;
}
