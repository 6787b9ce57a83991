/* Internals of tbert score shared by src/score.c (the pipeline), src/score_output.c (records) and
 * src/score_resume.c (--resume scanning); not public API. */
#ifndef TBERT_SCORE_INTERNAL_H
#define TBERT_SCORE_INTERNAL_H

#include <glib.h>

#include "tbert/score.h"

/* ---- score.c ---- */
/* What a parse worker makes of one input item (all malloc'd): the document the recipe sees (text, len,
 * evidence; a message's through tbert_mail_document, a table row's text as it is), the Message-ID, or an
 * error (the record's error field; then no document). */
typedef struct {
    char *text;
    size_t len;
    char *evidence, *id, *error;
} tbert_score_doc;
/* The parse step of tbert score's workers (and nothing else), for one item; frees it->raw once parsed. */
void tbert_score_parse_item(tbert_input_item *it, tbert_score_doc *out);

/* ---- score_output.c ---- */
typedef struct {
    const char *source;
    uint64_t offset;
    const char *id;    /* may be NULL */
    double score;
    const char *label; /* NULL for an error record */
    int tokens;
    bool truncated;
    const char *error; /* NULL when scored */
} tbert_score_record;

#define TBERT_SCORE_CSV_HEADER "source,offset,id,score,label,tokens,truncated,error\n"

/* o = the record as one JSONL or CSV line (with its '\n'). */
void tbert_score_format_record(GString *o, tbert_score_format fmt, const tbert_score_record *r);
/* Writes all n bytes to fd (EINTR retried); errors name `name`. */
tbert_status tbert_score_write_all(int fd, const char *p, size_t n, const char *name, tbert_error *err);

/* ---- score_resume.c ---- */
/* Reads the existing output at path: drops a partly written last line (truncating the file), counts the
 * (source, offset) pairs of the complete records into done (keys g_malloc'd, values counts).
 * *existed: a non-empty output was found; *has_header: it starts with the CSV header. */
tbert_status tbert_score_load_done(const char *path, tbert_score_format fmt, GHashTable *done, uint64_t *n_records, bool *existed,
                                   bool *has_header, tbert_error *err);
/* Takes one occurrence of (source, offset) out of the done counts; true when there was one. */
bool tbert_score_take_done(GHashTable *done, const char *source, uint64_t offset);

#endif
