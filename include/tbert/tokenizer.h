/* BERT WordPiece tokenizer, token-for-token identical to Hugging Face `tokenizers` (BertNormalizer,
 * BertPreTokenizer, WordPiece). A loaded tbert_vocab is immutable: any number of threads may share it. */
#ifndef TBERT_TOKENIZER_H
#define TBERT_TOKENIZER_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    bool clean_text;           /* drop NUL/U+FFFD/controls, map whitespace to ' ' (default true) */
    bool handle_chinese_chars; /* spaces around CJK ideographs (default true) */
    bool lowercase;            /* do_lower_case (default true) */
    int strip_accents;         /* -1 = follow lowercase (HF default), 0 = no, 1 = yes */
    int max_input_chars_per_word; /* default 100 */
} tbert_tokenizer_opts;

tbert_tokenizer_opts tbert_tokenizer_default_opts(void);

typedef struct tbert_vocab tbert_vocab;

/* vocab.txt: one token per line, id = line number (0-based). */
tbert_status tbert_vocab_load(const char *vocab_path, const tbert_tokenizer_opts *opts, tbert_vocab **out, tbert_error *err);
/* A model folder: vocab.txt plus, when present, tokenizer_config.json (do_lower_case, strip_accents,
 * tokenize_chinese_chars). */
tbert_status tbert_vocab_load_model_dir(const char *dir, tbert_vocab **out, tbert_error *err);
void tbert_vocab_free(tbert_vocab *v);

int32_t tbert_vocab_size(const tbert_vocab *v);
int32_t tbert_vocab_id(const tbert_vocab *v, const char *token, size_t len); /* -1 when absent */
const char *tbert_vocab_token(const tbert_vocab *v, int32_t id);              /* NULL when out of range */
int32_t tbert_vocab_cls(const tbert_vocab *v);
int32_t tbert_vocab_sep(const tbert_vocab *v);
int32_t tbert_vocab_pad(const tbert_vocab *v);
int32_t tbert_vocab_unk(const tbert_vocab *v);
const tbert_tokenizer_opts *tbert_vocab_opts(const tbert_vocab *v);
/* sha256 of vocab.txt's bytes (hex), recorded in head recipes. */
const char *tbert_vocab_hash(const tbert_vocab *v);

/* All WordPiece ids of a text, without [CLS]/[SEP], appended to out. Any bytes are accepted: invalid
 * UTF-8 is decoded as Python's errors="replace" does. Fails only on out-of-memory. */
tbert_status tbert_tokenize(const tbert_vocab *v, const char *text, size_t len, tbert_i32vec *out, tbert_error *err);

/* [CLS] ids... [SEP], truncated to max_len (>= 2) tokens, written to out (cleared first). */
tbert_status tbert_encode(const tbert_vocab *v, const char *text, size_t len, int max_len, tbert_i32vec *out, tbert_error *err);

/* Splits an id sequence (no specials) into windows of at most max_len tokens each with [CLS]/[SEP]
 * (so max_len-2 content tokens per window), at most max_windows windows (0 = all). Window w occupies
 * out->v[starts[w] .. starts[w]+lens[w]). Returns the number of windows (>= 1: an empty text gives
 * one window [CLS][SEP]) via *n_windows. starts/lens must hold max_windows entries (or enough for all). */
tbert_status tbert_make_windows(const tbert_vocab *v, const int32_t *ids, size_t n_ids, int max_len, int max_windows,
                                tbert_i32vec *out, size_t *starts, int *lens, int *n_windows, tbert_error *err);

/* A padded batch: B rows of T ids (pad id beyond each row's length), lengths[b] real tokens. The
 * attention mask is (t < lengths[b]); token type ids are all 0 (single segment). */
typedef struct {
    int B, T;
    int32_t *ids;     /* B*T */
    int32_t *lengths; /* B */
} tbert_batch;

/* Encodes n texts (with specials, truncated to max_len) using `threads` threads into a batch padded to
 * the longest row (pad_to_max: to max_len). */
tbert_status tbert_encode_batch(const tbert_vocab *v, const char *const *texts, const size_t *lens, int n, int max_len,
                                bool pad_to_max, int threads, tbert_batch *out, tbert_error *err);
void tbert_batch_free(tbert_batch *b);

#ifdef __cplusplus
}
#endif
#endif
