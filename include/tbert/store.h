/* The row store (src/store.c): what tbert computed for one document, kept across runs so that a document is
 * encoded once. An entry is addressed by
 *   key:     an open set of named fields (the producer's kind, the model checksum, the recipe fields that
 *            shape the value, and whatever a later producer adds: layer cut, max length, dtype ...),
 *            reduced to a 64-hex sha256 by tbert_store_key;
 *   content: the sha256 of the document bytes the value depends on (tbert_store_content_hash).
 * The value is an opaque byte string (the features module stores a row's dense block).
 *
 * On disk: DIR/ab/<62 hex>.row, DIR = $TBERT_CACHE/store by default (docs/store.md). Folders 0700, files 0600.
 * An entry is written to a temp file (mkstemp) in its folder and renamed over the final name, so readers see
 * a whole old entry or a whole new one, never a part. Entries are not fsynced: each carries its length and a
 * checksum, and one that fails them (a torn write after a crash, a flipped bit) is reported as corrupt,
 * removed and recomputed by the caller. A hit refreshes the file's mtime (at most once a minute); the size
 * cap (max_bytes) is enforced when a store that wrote closes: the entries with the oldest mtimes go first
 * (LRU). Safe under concurrent readers and writers of other processes: rename and unlink are atomic, and an
 * entry evicted under a reader stays readable through the reader's open descriptor. */
#ifndef TBERT_STORE_H
#define TBERT_STORE_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_STORE_DEFAULT_MAX ((uint64_t)4 << 30) /* 4 GiB */

typedef struct {
    const char *dir;    /* NULL: $TBERT_CACHE/store */
    uint64_t max_bytes; /* 0: $TBERT_STORE_MAX (bytes, suffix K/M/G allowed), else TBERT_STORE_DEFAULT_MAX */
    bool read_only;     /* never writes, touches or evicts */
} tbert_store_opts;

typedef struct {
    uint64_t hits, misses, corrupt, written, evicted;
} tbert_store_stats;

typedef struct tbert_store tbert_store;

/* Creates the folder when needed (not read_only). A store that cannot be created is an error; callers that
 * treat the store as an optimisation go on without one. */
tbert_status tbert_store_open(const tbert_store_opts *o, tbert_store **out, tbert_error *err);
/* Enforces the size cap when this store wrote anything, then frees. NULL is fine. */
void tbert_store_close(tbert_store *s);
const tbert_store_stats *tbert_store_get_stats(const tbert_store *s);
const char *tbert_store_dir(const tbert_store *s);

/* A key field: name (no '=' or newline) and value (any bytes up to NUL). */
typedef struct {
    const char *name, *value;
} tbert_store_field;
/* sha256 hex of the fields in name order ("name=<len>:value\n" each); the order given does not matter.
 * Duplicate names are refused (TBERT_E_ARG). */
tbert_status tbert_store_key(int n, const tbert_store_field *fields, char out[65], tbert_error *err);
/* sha256 hex of `len` bytes (a document's text). */
void tbert_store_content_hash(const void *data, size_t len, char out[65]);

/* Reads the entry (key, content) into buf, which must be exactly `len` bytes long. *found = false on a miss;
 * an entry of another length or with a bad checksum counts as corrupt, is removed (unless read_only) and
 * reads as a miss. Errors only for I/O failures other than "absent". */
tbert_status tbert_store_get(tbert_store *s, const char key[65], const char content[65], void *buf, size_t len, bool *found,
                             tbert_error *err);
/* Writes the entry atomically (replacing one with the same address). A read_only store does nothing. */
tbert_status tbert_store_put(tbert_store *s, const char key[65], const char content[65], const void *data, size_t len,
                             tbert_error *err);
/* Removes the entry (key, content) if present (*removed says whether it was): `tbert forget`. */
tbert_status tbert_store_remove(tbert_store *s, const char key[65], const char content[65], bool *removed, tbert_error *err);
/* Removes entries (oldest mtime first) until the store holds at most max_bytes; also removes temp files
 * older than an hour (left by a killed writer). Returns the number of entries removed in *evicted. */
tbert_status tbert_store_trim(tbert_store *s, uint64_t max_bytes, uint64_t *evicted, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
