/* The learned-corrections log of a head folder (DIR/learned.jsonl): spamd TELL and POST /learn append one
 * JSON line per correction and return only once it is on disk. Appends take an exclusive flock on the file
 * so that two processes (serve, a later `tbert learn`) never interleave lines; retraining reads it later. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"
#include "tbert/fileio.h"

tbert_status tbert_learn_append(const char *head_dir, const char *action, const char *klass, const char *raw, size_t len,
                                bool truncated, const char *via, char *sha, tbert_error *err) {
    char path[4096], hex[65];
    if (snprintf(path, sizeof path, "%s/learned.jsonl", head_dir) >= (int)sizeof path)
        return tbert_fail(err, TBERT_E_ARG, "%s: head folder path too long", head_dir);
    tbert_sha256_hex(raw, len, hex);
    if (sha) memcpy(sha, hex, 65);
    gchar *b64 = g_base64_encode((const guchar *)raw, len);
    if (!b64) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    GString *line = g_string_sized_new(strlen(b64) + 256);
    g_string_append_printf(line,
                           "{\"time\":%lld,\"action\":\"%s\",\"class\":\"%s\",\"sha256\":\"%s\",\"bytes\":%zu,\"via\":\"%s\","
                           "\"truncated\":%s,\"message_b64\":\"%s\"}\n",
                           (long long)time(NULL), action, klass, hex, len, via, truncated ? "true" : "false", b64);
    g_free(b64);
    tbert_status st = TBERT_OK;
    bool created = access(path, F_OK) != 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        st = tbert_fail(err, TBERT_E_IO, "%s: cannot open for appending: %s", path, strerror(errno));
    } else {
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
        }
        size_t off = 0;
        while (off < line->len) {
            ssize_t w = write(fd, line->str + off, line->len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                st = tbert_fail(err, TBERT_E_IO, "%s: write failed: %s", path, w < 0 ? strerror(errno) : "short write");
                break;
            }
            off += (size_t)w;
        }
        if (off > 0 && off < line->len) { /* never leave half a line: cut it off again */
            off_t end = lseek(fd, 0, SEEK_END);
            if (end >= (off_t)off && ftruncate(fd, end - (off_t)off) != 0) {
            }
        }
        if (!st && fsync(fd) != 0) st = tbert_fail(err, TBERT_E_IO, "%s: fsync failed: %s", path, strerror(errno));
        flock(fd, LOCK_UN);
        if (close(fd) != 0 && !st) st = tbert_fail(err, TBERT_E_IO, "%s: close failed: %s", path, strerror(errno));
        if (!st && created) { /* a new file: its name must be on disk too */
            int dfd = open(head_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd < 0 || fsync(dfd) != 0)
                st = tbert_fail(err, TBERT_E_IO, "%s: fsync of the folder failed: %s", head_dir, strerror(errno));
            if (dfd >= 0) close(dfd);
        }
    }
    g_string_free(line, TRUE);
    return st;
}
