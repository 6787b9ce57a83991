/* The feature recipe (how a text becomes a feature vector), the featurizer that applies it (rows, through
 * the row store), and the trained classifier (a head checkpoint + its recipe) that train/eval/predict/score/filter
 * use. CONVENTIONS.md "Files and caches".
 *
 * Feature vector layout (dim = dense + lexical_dim + evidence_dim + header_dim):
 *   [ dense: pooled encoder output, tbert_pool_dim(model, pool, max_len) floats; with windows > 1 the
 *     pooled vectors of up to `windows` windows of max_len tokens are averaged (then L2-normalised when
 *     normalize is set) |
 *     lexical: when lexical_dim > 0, counts of the text's WordPiece ids hashed into lexical_dim buckets
 *     (all tokens of the text, not only the encoded windows; with lexical_ngrams 2 also each pair of
 *     adjacent ids), log1p, then L2 normalisation of the block |
 *     evidence: when evidence == TBERT_EVIDENCE_BLOCK, the message's evidence tokens (space-separated)
 *     hashed into evidence_dim buckets, log1p + L2 |
 *     headers: when header_dim > 0, the message's header words (evidence tokens "h.NAME:word", src/mail.c)
 *     hashed into header_dim buckets, log1p, L2, times header_weight ]
 * The evidence block never takes the "h." header words (they have their own block).
 * With evidence == TBERT_EVIDENCE_LEXICAL the evidence tokens are hashed into the lexical block (before
 * its log1p + L2) and evidence_dim is 0. A doc without evidence (NULL or "") contributes nothing there.
 * Hashes: WordPiece id k -> bucket fmix64(k + 1) % lexical_dim; pair (a, b) -> fmix64(((a + 1) << 32 | (b + 1)) ^
 * 0x9e3779b97f4a7c15) % lexical_dim; evidence token s -> fmix64(fnv1a64(s)) % dim
 * (fmix64 = MurmurHash3's 64-bit finaliser). */
#ifndef TBERT_RECIPE_H
#define TBERT_RECIPE_H

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/head.h"
#include "tbert/model.h"
#include "tbert/rows.h"
#include "tbert/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_RECIPE_VERSION 2     /* what tbert writes (2: the optional "finetune" key) */
#define TBERT_RECIPE_VERSION_MIN 1 /* the oldest that still loads (1 = no fine-tuned encoder) */
#define TBERT_MAX_LABELS 128
#define TBERT_MAX_LABEL_LEN 64 /* bytes including the NUL */

typedef enum { TBERT_EVIDENCE_NONE = 0, TBERT_EVIDENCE_LEXICAL, TBERT_EVIDENCE_BLOCK } tbert_evidence_mode;

typedef struct {
    int recipe_version;        /* TBERT_RECIPE_VERSION */
    char name[16];             /* "text", "seed", "mail" or "custom" (informational) */
    /* the model the features come from (filled by tbert_recipe_bind_model) */
    char model_hash[65];       /* sha256 of model.safetensors */
    char vocab_hash[65];       /* sha256 of vocab.txt */
    int model_hidden;          /* H */
    int model_layers;          /* the model's layer count */
    /* dense channel */
    tbert_pool pool;
    int max_len;               /* tokens per window, [CLS]/[SEP] included */
    int layers;                /* first K layers used (resolved: 1..model_layers) */
    int windows;               /* >= 1 */
    bool normalize;            /* L2 after pooling (and after averaging windows) */
    tbert_precision precision; /* encoder precision the features were made with */
    /* sparse channels */
    int lexical_dim;           /* 0 = off */
    int lexical_ngrams;        /* 1: WordPiece ids; 2: ids and pairs of adjacent ids (JSON key only when != 1) */
    tbert_evidence_mode evidence;
    int evidence_dim;          /* > 0 only for TBERT_EVIDENCE_BLOCK */
    int evidence_set;          /* 0: every evidence token; 1: only the "E1" keys (from_domain from_tld mailer
                                  rcvd_hops ctype body attach charset has: no:; docs/mail-recipe-research.md).
                                  JSON key "evidence_set" only when != 0 */
    int header_dim;            /* 0 = off; JSON keys "header_dim"/"header_weight" only when > 0 */
    float header_weight;       /* scale of the L2-normalised header block (> 0) */
    /* classification */
    int n_labels;
    char labels[TBERT_MAX_LABELS][TBERT_MAX_LABEL_LEN]; /* sorted byte-wise, unique */
    int positive;              /* binary: index of the positive class; else -1 */
    float threshold;           /* binary: predict positive when P(positive) >= threshold */
    /* fine-tuned encoder (recipe_version 2; JSON key "finetune" only when layers > 0): the top `layers` of the
     * layers in use (and the embeddings when set) were trained with the head; their tensors are in the
     * checkpoint (include/tbert/finetune.h); base_model_sha256 is the base model.safetensors' sha256 */
    struct {
        int layers;
        bool embeddings;
        char base_model_sha256[65];
    } finetune;
} tbert_recipe;

/* Presets (model fields left empty until bind_model):
 *   "text": mean pooling, max_len 128, 1 window, no normalize, lexical 1024, no evidence
 *   "seed": flatten, max_len 128, 1 window (the tutorial's recipe)
 *   "mail": mean pooling, max_len 128, 1 window, normalize, lexical 30522 (the WordPiece vocabulary's size) and the
 *           every header evidence key in its own block of 1024, and the header words in a block of 16384
 *           weighted 4 (benchmarks/RESULTS.md, mail accuracy) */
tbert_status tbert_recipe_preset(const char *name, tbert_recipe *out, tbert_error *err);
/* Fills model_hash, vocab_hash, model_hidden, model_layers; resolves layers (0 = all). Checks the recipe
 * fits (max_len <= max_position, pooler present for pooling "pooler"). */
tbert_status tbert_recipe_bind_model(tbert_recipe *r, const tbert_model *m, tbert_error *err);
/* Refuses (TBERT_E_MISMATCH, one line) a recipe that does not fit the model: hidden size, vocab hash, layers,
 * max_len (flatten), pooler. A model hash difference alone is allowed (e.g. F16 copy of the same weights) only
 * when strict is false. */
tbert_status tbert_recipe_check_model(const tbert_recipe *r, const tbert_model *m, bool strict, tbert_error *err);
/* Feature dimension of the recipe (needs model_hidden). */
size_t tbert_recipe_dim(const tbert_recipe *r);
size_t tbert_recipe_dense_dim(const tbert_recipe *r);
/* Index of a label, -1 when absent. */
int tbert_recipe_label_index(const tbert_recipe *r, const char *label);

/* JSON (one object, keys in a fixed order) for checkpoint metadata and store keys. from_json refuses an
 * unknown recipe_version or missing/invalid fields with a one-line error that names `label`. */
char *tbert_recipe_to_json(const tbert_recipe *r); /* malloc'd, NULL on OOM */
tbert_status tbert_recipe_from_json(const char *json, const char *label, tbert_recipe *out, tbert_error *err);

/* ---- featurizer ---- */
typedef struct {
    const char *text; /* bytes (any encoding; invalid UTF-8 is handled by the tokenizer) */
    size_t len;
    const char *evidence; /* space-separated evidence tokens, or NULL */
} tbert_doc;

typedef struct tbert_featurizer tbert_featurizer;
/* The model and encoder are borrowed (must outlive the featurizer). The encoder must use the recipe's
 * layers (tbert_encoder_opts.layers) and precision; a featurizer is used by one thread at a time. */
tbert_status tbert_featurizer_create(const tbert_recipe *r, const tbert_model *m, tbert_encoder *enc, tbert_featurizer **out,
                                     tbert_error *err);
void tbert_featurizer_free(tbert_featurizer *fz);
/* From now on tbert_featurize_stored leaves the dense block zero and encodes nothing (the sparse blocks as
 * always): `tbert train --finetune K` recomputes the dense block with the trained layers (src/finetune.c). */
void tbert_featurizer_skip_dense(tbert_featurizer *fz);
size_t tbert_featurizer_dim(const tbert_featurizer *fz);
/* The featurizer in two stages (tbert score runs the first in its parse workers, the second on its scoring
 * thread):
 * 1. document -> token ids: the featurizer's tokenization of doc's text, into ids (cleared first). Needs no
 *    encoder and changes nothing: any number of threads may call it at once, also while another thread
 *    featurizes.
 * 2. token ids -> encoder batches -> rows: tbert_featurize_rows_ids below. */
tbert_status tbert_featurizer_tokenize(const tbert_featurizer *fz, const tbert_doc *doc, tbert_i32vec *ids, tbert_error *err);
/* Rows of the featurizer's shape (dense block: the pooled encoder output; sparse blocks: lexical, evidence,
 * header, those the recipe has, in that order), empty. */
tbert_status tbert_featurizer_rows_init(const tbert_featurizer *fz, tbert_rows *rows, tbert_error *err);
/* Features of n docs appended to out (a batch from tbert_featurizer_rows_init). tokens_seen (may be NULL):
 * per doc, the number of WordPiece tokens of its text (before truncation to the windows). The sparse
 * values are bit for bit those the dense layout had (recipe.h). */
tbert_status tbert_featurize_rows(tbert_featurizer *fz, int n, const tbert_doc *docs, tbert_rows *out, int *tokens_seen,
                                  tbert_error *err);
/* tbert_featurize_rows with the docs' token ids given: ids[i] from tbert_featurizer_tokenize(docs[i]) (the text
 * is then not tokenized again; evidence is still read). The same rows, bit for bit. */
tbert_status tbert_featurize_rows_ids(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *ids,
                                      tbert_rows *out, int *tokens_seen, tbert_error *err);
/* The same as dense feature vectors: out (n x dim, row i = docs[i]) = the rows densified. */
tbert_status tbert_featurize(tbert_featurizer *fz, int n, const tbert_doc *docs, float *out, int *tokens_seen,
                             tbert_error *err);

/* tbert_featurize_rows with the row store (store.h; NULL: none): a document whose dense block the store
 * holds (same text, same model, same dense-shaping recipe fields) is not encoded again; the others are
 * encoded and stored. progress_label (may be NULL) names the stage on the progress bar. */
typedef struct {
    int docs, encoded, from_store, corrupt; /* corrupt: store entries found damaged (recomputed) */
    bool write_failed;                      /* the store could not be written (warned once on stderr) */
} tbert_feature_stats;
tbert_status tbert_featurize_stored(tbert_featurizer *fz, tbert_store *store, int n, const tbert_doc *docs,
                                    const char *progress_label, tbert_rows *out, tbert_feature_stats *stats, tbert_error *err);
/* The store key of the dense blocks a featurizer with recipe r (bound to its model, frozen encoder) reads and
 * writes; the content half of an entry's address is tbert_store_content_hash of the document's text (`tbert
 * forget`). The featurizer puts its model's weights_sha256 in r's model_hash first (the weights that encode). */
tbert_status tbert_features_dense_key(const tbert_recipe *r, char key[65], tbert_error *err);
/* The same for an encoder whose weights carry a fine-tuned overlay: finetune_sha256 is the model's
 * finetune_sha256 (tbert_finetune_hash, include/tbert/finetune.h); "" or NULL gives the frozen key above.
 * The featurizer keys by its model's finetune_sha256, so a fine-tuned head never reads a frozen head's rows.
 * A frozen recipe of version 2 gets the key version 1 gave (recipe_version 1 and no finetune in the key). */
tbert_status tbert_features_dense_key_ft(const tbert_recipe *r, const char *finetune_sha256, char key[65], tbert_error *err);
/* sha256 hex over the docs (text and evidence bytes, length-prefixed, in order). */
void tbert_docs_hash(int n, const tbert_doc *docs, char out[65]);

/* ---- trained classifier (CKPT_DIR/best.safetensors) ---- */
typedef struct tbert_classifier tbert_classifier;
/* Reads CKPT_DIR/best.safetensors (or a .safetensors file path), validates tensors and metadata. When m is
 * not NULL also checks the recipe against the model (tbert_recipe_check_model, not strict). */
tbert_status tbert_classifier_load(const char *ckpt, const tbert_model *m, tbert_classifier **out, tbert_error *err);
void tbert_classifier_free(tbert_classifier *c);
const tbert_recipe *tbert_classifier_recipe(const tbert_classifier *c);
const tbert_head *tbert_classifier_head(const tbert_classifier *c);
/* For n feature rows (n x tbert_recipe_dim): p_positive[i] = P(positive) for a binary head (else the
 * probability of the predicted class); label_idx[i] = predicted class index (binary: positive when
 * p >= threshold). Either output may be NULL. Thread-safe (no shared scratch). */
tbert_status tbert_classifier_predict(const tbert_classifier *c, int n, const float *feats, float *p_positive, int *label_idx,
                                      tbert_error *err);
/* The same on rows (tbert_featurize_rows): bit for bit what tbert_classifier_predict gives on the rows
 * densified (tbert_head_predict_rows), so a head scores as it did before the row format. */
tbert_status tbert_classifier_predict_rows(const tbert_classifier *c, const tbert_rows *rows, float *p_positive, int *label_idx,
                                           tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
