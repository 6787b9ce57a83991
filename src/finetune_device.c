/* The fine-tuning stack on the CPU or on a CUDA device (include/tbert/finetune_device.h). The CUDA side is the
 * plugin's ft_* entries (src/finetune_stack_cuda.c); the optimiser stays on the host (src/optim.c over the CPU
 * stack's list): the device returns gradients, the host steps its float32 masters with the CPU's arithmetic and
 * order (global norm and clipping in list order), and uploads the new values before the next forward. Chosen
 * over an AdamW kernel because it keeps one optimiser, its checkpoint format and its resume bits for both
 * devices; the price is one gradient download and one value upload per step (the trained tensors only:
 * 2 x 7 MB for MiniLM with K = 2). */
#include "tbert/finetune_device.h"

#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "tbert/cuda_plugin.h"
#include "tbert/encoder_backward.h"

struct tbert_ft_dev {
    tbert_ft_stack *cpu;
    tbert_ft_stack_cfg cfg;
    tbert_cuda_plugin *plug;
    const tbert_cuda_api *api;
    tbert_cuda_ft *gpu;
    size_t dim;
    /* the last forward's documents (CUDA): pooled windows, document means before / after L2 */
    int n_doc, n_win;
    int32_t *doc_off, *off, *doc_ne;
    float *pooled, *dpooled, *docpre, *docout, *ddoc;
    int cap_doc, cap_win;
    bool saved;
};

void tbert_ft_dev_free(tbert_ft_dev *d) {
    if (!d) return;
    if (d->gpu) d->api->ft_free(d->gpu);
    tbert_cuda_plugin_close(d->plug);
    tbert_ft_stack_free(d->cpu);
    free(d->doc_off), free(d->off), free(d->doc_ne);
    free(d->pooled), free(d->dpooled), free(d->docpre), free(d->docout), free(d->ddoc);
    free(d);
}

tbert_status tbert_ft_dev_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, int cuda_device,
                                 tbert_precision precision, tbert_ft_dev **out, tbert_error *err) {
    *out = NULL;
    tbert_ft_dev *d = calloc(1, sizeof *d);
    if (!d) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    d->cfg = *cfg;
    tbert_status st = tbert_ft_stack_create(m, cfg, &d->cpu, err);
    if (!st) d->dim = tbert_ft_stack_dense_dim(d->cpu);
    if (!st && cuda_device >= 0) {
        st = tbert_cuda_plugin_open(&d->plug, err);
        if (!st) {
            d->api = tbert_cuda_plugin_table(d->plug);
            st = d->api->ft_create(m, cfg, tbert_ft_stack_params(d->cpu), precision, cuda_device, &d->gpu, err);
        }
    }
    if (st) {
        tbert_ft_dev_free(d);
        return st;
    }
    *out = d;
    return TBERT_OK;
}

tbert_ft_stack *tbert_ft_dev_stack(tbert_ft_dev *d) {
    return d->cpu;
}

bool tbert_ft_dev_is_cuda(const tbert_ft_dev *d) {
    return d->gpu != NULL;
}

static tbert_status reserve(tbert_ft_dev *d, int n_doc, int n_win, tbert_error *err) {
    if (n_doc > d->cap_doc || !d->doc_off) {
        int c = n_doc > 0 ? n_doc : 1;
        free(d->doc_off), free(d->doc_ne), free(d->docpre), free(d->docout), free(d->ddoc);
        d->doc_off = tbert_malloc_array((size_t)c + 1, sizeof(int32_t));
        d->doc_ne = tbert_malloc_array((size_t)c, sizeof(int32_t));
        d->docpre = tbert_malloc_array((size_t)c, (d->dim ? d->dim : 1) * sizeof(float));
        d->docout = tbert_malloc_array((size_t)c, (d->dim ? d->dim : 1) * sizeof(float));
        d->ddoc = tbert_malloc_array((size_t)c, (d->dim ? d->dim : 1) * sizeof(float));
        d->cap_doc = c;
        if (!d->doc_off || !d->doc_ne || !d->docpre || !d->docout || !d->ddoc) {
            d->cap_doc = 0;
            return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory for %d documents", n_doc);
        }
    }
    if (n_win > d->cap_win || !d->off) {
        int c = n_win > 0 ? n_win : 1;
        free(d->off), free(d->pooled), free(d->dpooled);
        d->off = tbert_malloc_array((size_t)c + 1, sizeof(int32_t));
        d->pooled = tbert_malloc_array((size_t)c, (d->dim ? d->dim : 1) * sizeof(float));
        d->dpooled = tbert_malloc_array((size_t)c, (d->dim ? d->dim : 1) * sizeof(float));
        d->cap_win = c;
        if (!d->off || !d->pooled || !d->dpooled) {
            d->cap_win = 0;
            return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory for %d windows", n_win);
        }
    }
    return TBERT_OK;
}

tbert_status tbert_ft_dev_forward(tbert_ft_dev *d, const tbert_ft_batch *b, bool training, uint64_t step, float *out,
                                  tbert_error *err) {
    if (!d->gpu) return tbert_ft_stack_forward(d->cpu, b, training, step, out, err);
    d->saved = false;
    if (b->n_doc < 0 || !b->doc_off || b->doc_off[0] != 0 || b->n_win != b->doc_off[b->n_doc])
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: bad document offsets");
    for (int i = 0; i < b->n_doc; i++)
        if (b->doc_off[i + 1] < b->doc_off[i])
            return tbert_fail(err, TBERT_E_ARG, "finetune stack: document %d has a negative window count", i);
    tbert_status st = reserve(d, b->n_doc, b->n_win, err);
    if (!st) st = d->api->ft_upload(d->gpu, tbert_ft_stack_params(d->cpu), err);
    if (!st) st = d->api->ft_forward(d->gpu, b->n_win, b->off, b->hidden, b->ids, training, step, d->pooled, err);
    if (st) return st;
    d->n_doc = b->n_doc;
    d->n_win = b->n_win;
    memcpy(d->doc_off, b->doc_off, ((size_t)b->n_doc + 1) * sizeof(int32_t));
    memcpy(d->off, b->off, ((size_t)b->n_win + 1) * sizeof(int32_t));
    size_t dim = d->dim;
    tbert_ft_doc_mean(b->n_doc, b->doc_off, b->off, dim, d->cfg.normalize, d->pooled, d->doc_ne, d->docpre, d->docout);
    memcpy(out, d->docout, (size_t)b->n_doc * dim * sizeof(float));
    d->saved = training;
    return TBERT_OK;
}

tbert_status tbert_ft_dev_backward(tbert_ft_dev *d, const float *dout, tbert_error *err) {
    if (!d->gpu) return tbert_ft_stack_backward(d->cpu, dout, err);
    if (!d->saved)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: backward without a training forward of the batch");
    tbert_ft_doc_mean_backward(d->n_doc, d->n_win, d->doc_off, d->off, d->dim, d->cfg.normalize, d->doc_ne, d->docpre, d->docout, dout,
                               d->ddoc, d->dpooled);
    return d->api->ft_backward(d->gpu, d->dpooled, tbert_ft_stack_params(d->cpu), err);
}
