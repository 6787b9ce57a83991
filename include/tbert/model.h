/* A Hugging Face BERT model folder: config.json + vocab.txt (+ tokenizer_config.json) + model.safetensors.
 * Weights are converted once to float32 into one contiguous allocation with a table of pointers into it.
 * HF nn.Linear layout: W is (out, in), y = x @ W^T + b. */
#ifndef TBERT_MODEL_H
#define TBERT_MODEL_H

#include "tbert/common.h"
#include "tbert/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int vocab_size, hidden, layers, heads, intermediate, max_position, type_vocab_size, pad_token_id;
    float layer_norm_eps;
} tbert_config;

/* Parses and validates config.json: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
 * intermediate_size, max_position_embeddings required; type_vocab_size (2), layer_norm_eps (1e-12),
 * pad_token_id (0) default as in transformers. hidden_act must be "gelu" (erf), model_type "bert" and
 * position_embedding_type "absolute" when present (others: TBERT_E_UNSUPPORTED, named); heads divide
 * hidden; every size within caps far above any published BERT (file at most 1 MB). */
tbert_status tbert_config_load(const char *path, tbert_config *out, tbert_error *err);
/* The same over config.json's bytes in memory (at most 1 MB; `label` names it in errors), e.g. for fuzzing. */
tbert_status tbert_config_parse(const char *json, size_t len, const char *label, tbert_config *out, tbert_error *err);

typedef struct {
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* (H,H), (H) */
    const float *attn_out_w, *attn_out_b;           /* (H,H), (H) */
    const float *attn_ln_g, *attn_ln_b;             /* (H) */
    const float *inter_w, *inter_b;                 /* (I,H), (I) */
    const float *out_w, *out_b;                     /* (H,I), (H) */
    const float *out_ln_g, *out_ln_b;               /* (H) */
} tbert_layer_weights;

typedef struct tbert_model {
    tbert_config cfg;
    const float *word_emb;  /* (V,H) */
    const float *pos_emb;   /* (P,H) */
    const float *type_emb;  /* (TV,H) */
    const float *emb_ln_g, *emb_ln_b;
    tbert_layer_weights *layer; /* cfg.layers entries */
    const float *pooler_w, *pooler_b; /* (H,H), (H); NULL when the checkpoint has no pooler */
    float *arena;           /* the one allocation all weight pointers point into (each tensor 64-byte aligned) */
    size_t arena_floats;
    tbert_vocab *vocab;
    char *dir;
    char weights_sha256[65]; /* sha256 of model.safetensors */
    char weights_dtype[8];   /* "F32", "F16", "BF16" (dtype of the encoder weights in the file) */
    size_t n_params;         /* weights the encoder uses (arena_floats includes 64-byte alignment padding) */
    char finetune_sha256[65]; /* "" for the weights of model.safetensors; else the hash of the fine-tuned tensors laid
                                 over them (tbert_model_apply_finetune, include/tbert/finetune.h) */
} tbert_model;

/* Loads a model folder (already resolved, see tbert_resolve_model_dir). Validates everything before use:
 * config.json (tbert_config_load), vocab.txt (+ tokenizer_config.json; at most vocab_size tokens), and
 * model.safetensors (tbert_st_open) holding every tensor BertModel needs, with or without the `bert.`
 * prefix (BertFor* checkpoints), LayerNorm.weight/bias or the older gamma/beta, pooler optional, in F32,
 * F16, BF16 or F64 with exactly the shape config.json implies, all values finite; no encoder layers beyond
 * num_hidden_layers. Tensors BertModel does not use are ignored. weights_sha256 is the sha256 of the file
 * (for files >= 16 MB remembered in $TBERT_CACHE/hashes, keyed by path, inode, size, mtime and ctime).
 * Errors (one line naming the file and tensor): TBERT_E_IO missing file/folder, TBERT_E_FORMAT malformed
 * or missing tensor, TBERT_E_MISMATCH wrong shape / more layers / vocab.txt larger than vocab_size,
 * TBERT_E_UNSUPPORTED activation, model type, position embedding type or dtype, TBERT_E_NOMEM. */
tbert_status tbert_model_load(const char *dir, tbert_model **out, tbert_error *err);
void tbert_model_free(tbert_model *m);
size_t tbert_model_param_count(const tbert_model *m);

/* One weight of a loaded model under its transformers BertModel name (no `bert.` prefix, LayerNorm.weight/bias),
 * pointing into the arena: what `tbert export` writes and tbert_model_apply_finetune overwrites. */
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[2];
    size_t numel;
    float *data;
} tbert_model_tensor;
/* Every weight the encoder uses (the pooler when the model has one), in the encoder's order; *out is malloc'd. */
tbert_status tbert_model_tensors(const tbert_model *m, tbert_model_tensor **out, int *n, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
