/* Random-weight models for a config: `tbert bench --random-weights` and CPU/GPU parity checks on real
 * shapes without a weights file. Laid out like a loaded model (one arena, a table of pointers into it),
 * so tbert_model_free releases it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/encoder.h"

typedef struct {
    uint64_t s;
} rng64;

static uint64_t next64(rng64 *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* uniform with mean `mean` and standard deviation `std` */
static void fill(float *p, size_t n, float mean, float std, rng64 *r) {
    const float a = std * 1.7320508f; /* U(-a, a) has std a/sqrt(3) */
    for (size_t i = 0; i < n; i++) {
        float u = (float)((double)(next64(r) >> 40) * (1.0 / 16777216.0)); /* [0,1) */
        p[i] = mean + a * (2.0f * u - 1.0f);
    }
}

typedef struct {
    float *next;
    size_t left;
} carver;

static float *carve(carver *c, size_t n) {
    size_t padded = (n + 15) / 16 * 16; /* keep every tensor 64-byte aligned */
    if (padded > c->left) return NULL;
    float *p = c->next;
    c->next += padded;
    c->left -= padded;
    return p;
}

tbert_status tbert_model_random(const tbert_config *cfg, bool with_pooler, uint64_t seed, tbert_model **out,
                                tbert_error *err) {
    *out = NULL;
    const tbert_config *c = cfg;
    if (c->vocab_size <= 0 || c->hidden <= 0 || c->layers <= 0 || c->heads <= 0 || c->intermediate <= 0 ||
        c->max_position <= 0 || c->type_vocab_size <= 0 || c->hidden % c->heads || c->hidden > 65536 ||
        c->intermediate > 262144 || c->layers > 1024 || c->vocab_size > 4000000 || c->max_position > 65536)
        return tbert_fail(err, TBERT_E_ARG, "random model: bad config (hidden %d, heads %d, layers %d)", c->hidden,
                          c->heads, c->layers);
    size_t H = (size_t)c->hidden, I = (size_t)c->intermediate;
    size_t per_layer = 4 * (H * H + H) + 2 * H * I + I + H + 4 * H + 16 * 16;
    size_t total = ((size_t)c->vocab_size + (size_t)c->max_position + (size_t)c->type_vocab_size + 2) * H +
                   (size_t)c->layers * per_layer + (H * H + H) + 256; /* + alignment slack */
    tbert_model *m = calloc(1, sizeof *m);
    if (!m) return tbert_fail(err, TBERT_E_NOMEM, "random model: out of memory");
    m->cfg = *c;
    m->arena = aligned_alloc(64, (total * sizeof(float) + 63) / 64 * 64);
    m->layer = tbert_calloc_array((size_t)c->layers, sizeof *m->layer);
    m->dir = tbert_strdup("random weights");
    if (!m->arena || !m->layer || !m->dir) {
        tbert_model_free(m);
        return tbert_fail(err, TBERT_E_NOMEM, "random model: out of memory for %zu parameters", total);
    }
    m->arena_floats = total;
    carver cv = {m->arena, total};
    rng64 r = {seed};
    float *p;
#define TENSOR(field, n, mean, std)                                                                                    \
    do {                                                                                                               \
        p = carve(&cv, (n));                                                                                           \
        fill(p, (n), (mean), (std), &r);                                                                               \
        (field) = p;                                                                                                   \
    } while (0)
    float winv = 1.0f / sqrtf((float)H), iinv = 1.0f / sqrtf((float)I);
    TENSOR(m->word_emb, (size_t)c->vocab_size * H, 0.0f, 1.0f);
    TENSOR(m->pos_emb, (size_t)c->max_position * H, 0.0f, 1.0f);
    TENSOR(m->type_emb, (size_t)c->type_vocab_size * H, 0.0f, 1.0f);
    TENSOR(m->emb_ln_g, H, 1.0f, 0.1f);
    TENSOR(m->emb_ln_b, H, 0.0f, 0.1f);
    for (int l = 0; l < c->layers; l++) {
        tbert_layer_weights *w = &m->layer[l];
        TENSOR(w->q_w, H * H, 0.0f, winv);
        TENSOR(w->q_b, H, 0.0f, 0.1f);
        TENSOR(w->k_w, H * H, 0.0f, winv);
        TENSOR(w->k_b, H, 0.0f, 0.1f);
        TENSOR(w->v_w, H * H, 0.0f, winv);
        TENSOR(w->v_b, H, 0.0f, 0.1f);
        TENSOR(w->attn_out_w, H * H, 0.0f, winv);
        TENSOR(w->attn_out_b, H, 0.0f, 0.1f);
        TENSOR(w->attn_ln_g, H, 1.0f, 0.1f);
        TENSOR(w->attn_ln_b, H, 0.0f, 0.1f);
        TENSOR(w->inter_w, I * H, 0.0f, winv);
        TENSOR(w->inter_b, I, 0.0f, 0.1f);
        TENSOR(w->out_w, H * I, 0.0f, iinv);
        TENSOR(w->out_b, H, 0.0f, 0.1f);
        TENSOR(w->out_ln_g, H, 1.0f, 0.1f);
        TENSOR(w->out_ln_b, H, 0.0f, 0.1f);
    }
    if (with_pooler) {
        TENSOR(m->pooler_w, H * H, 0.0f, winv);
        TENSOR(m->pooler_b, H, 0.0f, 0.1f);
    }
#undef TENSOR
    m->n_params = total - cv.left;
    strcpy(m->weights_dtype, "F32");
    *out = m;
    return TBERT_OK;
}
