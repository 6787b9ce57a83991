/* Mail input: RFC 822 / MIME messages decoded through GMime (charsets, base64, QP, RFC 2047), HTML turned
 * into text with libxml2, and the enumeration of mixed inputs (mbox, Maildir, folders of message files,
 * gzip'd mbox, stdin, TSV/CSV/JSONL tables) in a deterministic "input order". */
#ifndef TBERT_MAIL_H
#define TBERT_MAIL_H

#include "tbert/common.h"
#include "tbert/dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the reader hands on from one message. All strings are valid UTF-8, NUL-terminated, never NULL
 * (empty when absent) except message_id, which is NULL when the message has none. */
typedef struct {
    char *message_id;
    char *subject;  /* decoded */
    char *from;     /* decoded From header */
    char *body;     /* text/plain parts preferred, else text/html converted to text; attachments skipped */
    char *evidence; /* header evidence as space-separated tokens KEY:VALUE (values lowercased, reduced to
                       [a-z0-9._-], at most 48 bytes), what the mail recipe hashes:
                       from_domain, from_tld, mailer (X-Mailer/User-Agent without versions: "mutt",
                       "microsoft_outlook_express"; "none"), rcvd_hops (0,1,2,3,4,5-6,7-9,10+), ctype (top
                       MIME type), body (plain|html|none), attach (0|1|2plus), charset (first text part),
                       has:/no: for message_id date in_reply_to references list_id list_unsubscribe
                       precedence reply_to x_priority x_msmail_priority organization mime_version cc,
                       hdr:NAME per header field present (X-Spam-* never), rcvd_from (last two labels of
                       each Received "from" host, up to 8), msgid_domain, reply_to_domain,
                       return_path_domain, to_count (0|1|2-5|6plus), subj:reply|forward; then every word
                       of every header value as h.NAME:word (src/mail.c header_words; the mail recipe's
                       header block); "parse:failed" when GMime found no message structure */
} tbert_message;

/* Parses one raw message (any bytes; never crashes). Malformed MIME still yields whatever text is
 * recoverable; an error is returned only when nothing usable is there (or out of memory). */
tbert_status tbert_message_parse(const char *raw, size_t len, const char *label, tbert_message *out, tbert_error *err);
void tbert_message_free(tbert_message *m);
/* The document the recipe sees from a parsed message, the same for train, score and filter
 * (src/mail_document.c): text = Subject "\n" body (len bytes, NUL-terminated), evidence = the message's
 * header evidence and header words (tbert_message.evidence). Both malloc'd; free with tbert_mail_doc_free. */
typedef struct {
    char *text;
    size_t len;
    char *evidence;
} tbert_mail_doc;
tbert_status tbert_mail_document(const tbert_message *m, tbert_mail_doc *out, tbert_error *err);
void tbert_mail_doc_free(tbert_mail_doc *d);

/* HTML to plain text (scripts and styles dropped, block elements give line breaks). */
char *tbert_html_to_text(const char *html, size_t len);

/* One item of input. For a message: raw bytes; for a table row: text (+ label). */
typedef struct {
    char *source;      /* file path ("-" for stdin) */
    uint64_t offset;   /* byte offset of the message in the file (0 for one-message files); row's byte
                          offset for tables */
    bool is_message;   /* raw RFC 822 message (else a table row) */
    char *raw;         /* message bytes (is_message), capped at max_message_bytes */
    size_t raw_len;
    bool truncated;    /* the message was larger than max_message_bytes */
    char *text;        /* table row text (!is_message) */
    size_t text_len;
    char *label;       /* table row label, or NULL */
    char *error;       /* non-NULL: this item could not be read (the run records it and goes on) */
} tbert_input_item;

typedef struct {
    size_t max_message_bytes;     /* 0 = default (32 MiB) */
    tbert_table_opts table;       /* for table inputs */
    int shard_k, shard_n;         /* --shard K/N: keep items with index % N == K (n=0: all) */
    /* Optional: items for which skip(skip_ctx, source, offset) is true are left out without being read
     * (--resume). They still count in the item index, so shards stay the same. Called on the thread that
     * calls tbert_inputs_next. */
    bool (*skip)(void *skip_ctx, const char *source, uint64_t offset);
    void *skip_ctx;
} tbert_input_opts;

/* --shard K/N: 0 <= K < N <= 1,000,000, both plain decimal numbers. */
tbert_status tbert_shard_parse(const char *s, int *k, int *n, tbert_error *err);

typedef struct tbert_inputs tbert_inputs;
/* Opens the inputs (files, folders read recursively in byte-sorted path order, Maildir cur/ + new/,
 * mbox files (start with "From "), .gz mbox, "-" = one message on stdin, tables by extension or
 * --input-format). Fails only when a named path does not exist / cannot be opened at all. */
tbert_status tbert_inputs_open(const char *const *paths, int n_paths, const tbert_input_opts *opts, tbert_inputs **out,
                               tbert_error *err);
/* Next item in input order: 1 = got an item (free with tbert_input_item_free), 0 = end, -1 = fatal. */
int tbert_inputs_next(tbert_inputs *in, tbert_input_item *item, tbert_error *err);
/* Bytes consumed so far and total input bytes (for progress / ETA). */
void tbert_inputs_progress(const tbert_inputs *in, uint64_t *done, uint64_t *total);
void tbert_inputs_close(tbert_inputs *in);
void tbert_input_item_free(tbert_input_item *item);

#ifdef __cplusplus
}
#endif
#endif
