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

/* Parses and validates config.json (hidden_act must be "gelu"; heads divide hidden; sane sizes). */
tbert_status tbert_config_load(const char *path, tbert_config *out, tbert_error *err);

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
    float *arena;           /* the one allocation all weight pointers point into */
    size_t arena_floats;
    tbert_vocab *vocab;
    char *dir;
    char weights_sha256[65]; /* sha256 of model.safetensors */
    char weights_dtype[8];   /* "F32", "F16", "BF16" (dtype of the encoder weights in the file) */
} tbert_model;

/* Loads a model folder (already resolved, see tbert_resolve_model_dir). Validates everything. */
tbert_status tbert_model_load(const char *dir, tbert_model **out, tbert_error *err);
void tbert_model_free(tbert_model *m);
size_t tbert_model_param_count(const tbert_model *m);

#ifdef __cplusplus
}
#endif
#endif
