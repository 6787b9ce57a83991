/* Labelled text tables: TSV (split at TAB, no quoting), CSV (RFC 4180), JSONL (one object per line).
 * Format detection, header detection and column selection follow CONVENTIONS.md. */
#ifndef TBERT_DATASET_H
#define TBERT_DATASET_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TBERT_TABLE_AUTO = 0, TBERT_TABLE_TSV, TBERT_TABLE_CSV, TBERT_TABLE_JSONL } tbert_table_format;
typedef enum { TBERT_HEADER_AUTO = 0, TBERT_HEADER_YES, TBERT_HEADER_NO } tbert_header_mode;

typedef struct {
    tbert_table_format format;
    tbert_header_mode header;
    const char *text_col;  /* header name or 1-based number; NULL = default (TSV/CSV: 2, JSONL: "text") */
    const char *label_col; /* header name or 1-based number; NULL = default (TSV/CSV: 1, JSONL: "label");
                              "" or "none" = unlabelled table */
    bool label_optional;   /* score: a JSONL row without the label key, or a one-column TSV/CSV file (with
                              default columns), is read with a NULL label instead of being an error */
} tbert_table_opts;

typedef struct {
    int n;
    char **text;    /* n NUL-terminated UTF-8-or-not byte strings (bytes kept as in the file) */
    size_t *text_len;
    char **label;   /* n labels, or NULL for an unlabelled table (with label_optional, entries may be NULL) */
    int64_t *line;  /* 1-based line number of each record in the file */
    uint64_t *offset; /* byte offset of each record's first byte in the file */
} tbert_table;

tbert_status tbert_table_format_parse(const char *s, tbert_table_format *out, tbert_error *err);
tbert_status tbert_header_mode_parse(const char *s, tbert_header_mode *out, tbert_error *err);
/* Detects the format of a file from its extension, else its first line. */
tbert_table_format tbert_table_detect(const char *path, const char *first_line, size_t len);

/* Reads a whole table. Errors (missing file, bad column, malformed CSV quote, bad JSON, missing field,
 * record with too few fields) name the file and the line. */
tbert_status tbert_table_read(const char *path, const tbert_table_opts *opts, tbert_table *out, tbert_error *err);
/* Same over a buffer (fuzzing); `label` names it in errors. */
tbert_status tbert_table_parse(const char *buf, size_t len, const char *label, tbert_table_format fmt,
                               const tbert_table_opts *opts, tbert_table *out, tbert_error *err);
void tbert_table_free(tbert_table *t);

/* Hash of the table content (texts and labels), hex sha256 — recorded as the data hash in checkpoints. */
void tbert_table_hash(const tbert_table *t, char out[65]);

#ifdef __cplusplus
}
#endif
#endif
