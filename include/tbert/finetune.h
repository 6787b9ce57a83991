/* Fine-tuned encoders (issue 15): a head trained with `tbert train --finetune K` carries, besides its head
 * tensors, the trained encoder tensors in best.safetensors (and last.safetensors) as float32 named
 * "finetune." + the transformers BertModel name ("finetune.encoder.layer.5.attention.self.query.weight",
 * "finetune.embeddings.LayerNorm.weight", "finetune.pooler.dense.weight"), only the trained ones, and its
 * recipe (recipe_version 2) the key "finetune": {layers K, embeddings, base_model_sha256}.
 * Every command that loads a head and a model and then encodes (score, filter, eval, predict, serve and its
 * reload, embed --head, export) lays those tensors over the base model's weights before an encoder is made. */
#ifndef TBERT_FINETUNE_H
#define TBERT_FINETUNE_H

#include "tbert/common.h"
#include "tbert/model.h"
#include "tbert/recipe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- loading (src/finetune_load.c) ---- */
#define TBERT_FINETUNE_PREFIX "finetune."

/* Lays a fine-tuned head's encoder tensors over m, the base model named by --model. A recipe without
 * "finetune" (r->finetune.layers == 0): nothing happens, TBERT_OK. Otherwise:
 * - m->weights_sha256 must equal r->finetune.base_model_sha256, else TBERT_E_MISMATCH with the one line
 *   "HEAD: fine-tuned from base model SHA, but MODEL has SHA";
 * - ckpt_path_or_dir (CKPT_DIR/best.safetensors, or a .safetensors path) must hold, as F32 with the model's
 *   shapes, all 16 tensors of each of the top r->finetune.layers of the r->layers layers in use, and may hold
 *   embeddings.* (only when r->finetune.embeddings) and pooler.*; any other finetune.* tensor, a wrong shape
 *   or dtype, a non-finite value: TBERT_E_FORMAT naming the file and the tensor;
 * - the values are copied over m's weights and m->finetune_sha256 is set (tbert_finetune_hash).
 * Call it before tbert_encoder_create on m (encoders pack or upload the weights when they are made). After
 * an error m's weights are undefined: free it. */
tbert_status tbert_model_apply_finetune(tbert_model *m, const char *ckpt_path_or_dir, const tbert_recipe *r, tbert_error *err);

/* The sha256 (hex) of a checkpoint's finetune.* tensors: over each in file order its name, NUL, dtype name,
 * NUL, ndim and dims as 8-byte little-endian integers, and its bytes. "" when the file holds none. It keys
 * the dense blocks a fine-tuned encoder makes in the row store (tbert_features_dense_key_ft). */
tbert_status tbert_finetune_hash(const char *ckpt_path_or_dir, char out[65], tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
