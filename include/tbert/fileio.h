/* File helpers: whole-file reads, atomic writes (temp + fsync + rename), sha256, cache paths. */
#ifndef TBERT_FILEIO_H
#define TBERT_FILEIO_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads a whole regular file (at most max_bytes; 0 = no cap) into a NUL-terminated buffer. */
tbert_status tbert_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, tbert_error *err);

/* Writes `len` bytes to `path` atomically: a temp file in the same folder, fsync, rename, fsync of the
 * folder. On any failure the previous file at `path` is left untouched and the temp file removed.
 * When `path` is not a regular file (e.g. /dev/stdout, a pipe) it is written directly. */
tbert_status tbert_write_file_atomic(const char *path, const void *data, size_t len, tbert_error *err);

/* Atomic writer for large outputs produced in pieces. */
typedef struct tbert_atomic_file tbert_atomic_file;
tbert_status tbert_atomic_open(const char *path, tbert_atomic_file **out, tbert_error *err);
tbert_status tbert_atomic_write(tbert_atomic_file *f, const void *data, size_t len, tbert_error *err);
tbert_status tbert_atomic_commit(tbert_atomic_file *f, tbert_error *err); /* fsync + rename; frees f */
void tbert_atomic_abort(tbert_atomic_file *f);                             /* removes the temp; frees f */

/* sha256 of a buffer / a file as 64 lowercase hex characters + NUL. */
void tbert_sha256_hex(const void *data, size_t len, char out[65]);
tbert_status tbert_sha256_file(const char *path, char out[65], tbert_error *err);

/* $TBERT_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/tbert. Writes into buf (size n). */
void tbert_cache_dir(char *buf, size_t n);
/* --model NAME|DIR: a value containing '/' or naming an existing folder is a path; otherwise
 * $TBERT_CACHE/models/NAME. NULL or "" means the default model "minilm". */
tbert_status tbert_resolve_model_dir(const char *name_or_dir, char *buf, size_t n, tbert_error *err);

bool tbert_is_dir(const char *path);
bool tbert_is_regular_file(const char *path);
/* mkdir -p */
tbert_status tbert_mkdirs(const char *path, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
