/* The encoder front end: backend choice (auto/cpu/cuda), length-sorted dynamic batching, pooling,
 * L2 normalisation and input order. The math lives in the backends (encoder_cpu.c, encoder_cuda.c).
 * An encoder runs one call at a time (it owns scratch buffers); use one encoder per thread. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "tbert/cuda_plugin.h"

static const char *const precision_names[] = {"fp32", "tf32", "bf16"};
static_assert(sizeof precision_names / sizeof precision_names[0] == TBERT_PREC_COUNT, "one name per precision");

const char *tbert_precision_name(tbert_precision p) {
    return (unsigned)p < TBERT_PREC_COUNT ? precision_names[p] : "?";
}

tbert_status tbert_precision_parse(const char *s, tbert_precision *out, tbert_error *err) {
    for (int i = 0; i < TBERT_PREC_COUNT; i++) {
        if (s && !strcmp(s, precision_names[i])) {
            *out = (tbert_precision)i;
            return TBERT_OK;
        }
    }
    return tbert_fail(err, TBERT_E_ARG, "--precision: expected fp32, tf32 or bf16, got '%s'", s ? s : "");
}

tbert_encoder_opts tbert_encoder_default_opts(void) {
    return (tbert_encoder_opts){.device = {TBERT_DEVICE_AUTO, 0}, .precision = TBERT_PREC_FP32};
}

/* CPU: each thread takes a share of a batch's sequences and runs them through all layers alone (see
 * encoder_cpu.c), so a batch gives every thread at least 16 sequences; padding costs nothing there. */
enum { CPU_DEFAULT_BATCH = 32, CPU_SEQS_PER_THREAD = 16, CUDA_DEFAULT_BATCH = 256 };

struct tbert_encoder {
    const tbert_model *m;
    tbert_encoder_opts opts; /* resolved: device CPU or CUDA, layers and threads > 0, batch > 0 */
    tbert_cpu_encoder *cpu;
    tbert_cuda_plugin *plugin; /* held while cuda lives; the CUDA backend is reached only through cu */
    const tbert_cuda_api *cu;
    tbert_cuda_encoder *cuda;
};

double tbert_encoder_flops(const tbert_config *c, int layers, int L) {
    double H = c->hidden, I = c->intermediate, n = L;
    double per_layer = 2.0 * n * (4.0 * H * H + 2.0 * H * I) + 4.0 * n * n * H;
    return (layers > 0 && layers < c->layers ? layers : c->layers) * per_layer;
}

/* The backend for o->device: the CPU, or CUDA through the plugin (*plugin is then open and owned by the
 * caller). auto without a loadable plugin or without a device falls back to the CPU and puts the reason in
 * why; cuda then fails with TBERT_E_NODEV and one line. */
static tbert_status resolve_device(const tbert_encoder_opts *o, tbert_device_kind *kind, tbert_cuda_plugin **plugin,
                                   char *why, size_t cap, tbert_error *err) {
    *plugin = NULL;
    *kind = TBERT_DEVICE_CPU;
    why[0] = '\0';
    if (o->device.kind == TBERT_DEVICE_CPU) return TBERT_OK;
    bool want = o->device.kind == TBERT_DEVICE_CUDA;
    tbert_error perr;
    if (tbert_cuda_plugin_open(plugin, &perr)) {
        if (want) return tbert_fail(err, TBERT_E_NODEV, "--device cuda: no CUDA: %s (use --device cpu)", perr.msg);
        snprintf(why, cap, "%s", perr.msg);
        return TBERT_OK;
    }
    const tbert_cuda_api *cu = tbert_cuda_plugin_table(*plugin);
    int ndev = cu->device_count(why, cap);
    if (!want && cu->emulated) { /* issue 12: in an EMU build auto means the CPU, cuda the emulated device */
        snprintf(why, cap, "this build's CUDA device is emulated; --device cuda uses it");
        ndev = 0;
    }
    int index = want ? o->device.index : 0;
    if (index < ndev) {
        *kind = TBERT_DEVICE_CUDA;
        return TBERT_OK;
    }
    tbert_cuda_plugin_close(*plugin);
    *plugin = NULL;
    if (!want) return TBERT_OK;
    if (ndev == 0) return tbert_fail(err, TBERT_E_NODEV, "--device cuda: no CUDA device: %s", why);
    return tbert_fail(err, TBERT_E_NODEV, "--device cuda:%d: %d CUDA device(s) present", index, ndev);
}

tbert_status tbert_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_encoder **out,
                                  tbert_error *err) {
    *out = NULL;
    tbert_encoder_opts o = opts ? *opts : tbert_encoder_default_opts();
    if (o.layers < 0 || o.layers > m->cfg.layers)
        return tbert_fail(err, TBERT_E_ARG, "--layers %d: the model has %d layers", o.layers, m->cfg.layers);
    if (o.threads < 0 || o.batch < 0) return tbert_fail(err, TBERT_E_ARG, "encoder: negative --threads or --batch");
    if ((unsigned)o.precision >= TBERT_PREC_COUNT) return tbert_fail(err, TBERT_E_ARG, "encoder: unknown precision");
    if (o.device.kind == TBERT_DEVICE_CPU && o.precision == TBERT_PREC_TF32)
        return tbert_fail(err, TBERT_E_UNSUPPORTED,
                          "--precision %s needs a CUDA device; the CPU computes in fp32 or bf16",
                          tbert_precision_name(o.precision));
    tbert_device_kind kind;
    tbert_cuda_plugin *plugin;
    char why[1024];
    tbert_status st = resolve_device(&o, &kind, &plugin, why, sizeof why, err);
    if (st) return st;
    if (kind == TBERT_DEVICE_CPU && o.precision == TBERT_PREC_TF32)
        return tbert_fail(err, TBERT_E_UNSUPPORTED,
                          "--precision %s needs a CUDA device (no CUDA: %s); the CPU computes in fp32 or bf16",
                          tbert_precision_name(o.precision), why);
    if (o.layers == 0) o.layers = m->cfg.layers;
    if (o.threads == 0) o.threads = tbert_num_cores();
    if (o.batch == 0 && kind == TBERT_DEVICE_CPU)
        o.batch = o.threads * CPU_SEQS_PER_THREAD > CPU_DEFAULT_BATCH ? o.threads * CPU_SEQS_PER_THREAD : CPU_DEFAULT_BATCH;
    if (o.batch == 0) o.batch = CUDA_DEFAULT_BATCH;
    if (kind == TBERT_DEVICE_CPU && o.device.kind == TBERT_DEVICE_AUTO && !o.quiet)
        fprintf(stderr, "tbert: no CUDA (%s); encoding on the CPU (%d threads)\n", why, o.threads);
    o.device.kind = kind;

    tbert_encoder *e = calloc(1, sizeof *e);
    if (!e) {
        tbert_cuda_plugin_close(plugin);
        return tbert_fail(err, TBERT_E_NOMEM, "encoder: out of memory");
    }
    e->m = m;
    e->opts = o;
    e->plugin = plugin;
    if (kind == TBERT_DEVICE_CPU) {
        st = tbert_cpu_encoder_create(m, &o, &e->cpu, err);
    } else {
        e->cu = tbert_cuda_plugin_table(plugin);
        st = e->cu->encoder_create(m, &o, &e->cuda, err);
    }
    if (st) {
        tbert_encoder_free(e);
        return st;
    }
    *out = e;
    return TBERT_OK;
}

void tbert_encoder_free(tbert_encoder *e) {
    if (!e) return;
    tbert_cpu_encoder_free(e->cpu);
    if (e->cuda) e->cu->encoder_free(e->cuda);
    tbert_cuda_plugin_close(e->plugin);
    free(e);
}

bool tbert_encoder_is_cuda(const tbert_encoder *e) {
    return e->opts.device.kind == TBERT_DEVICE_CUDA;
}

const tbert_model *tbert_encoder_model(const tbert_encoder *e) {
    return e->m;
}

tbert_encoder_opts tbert_encoder_get_opts(const tbert_encoder *e) {
    return e->opts;
}

static tbert_status check_batch(const tbert_encoder *e, int B, int T, const int32_t *lengths, tbert_error *err) {
    if (B <= 0 || T <= 0 || T > e->m->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "encoder: bad batch shape %d x %d (the model allows %d positions)", B, T,
                          e->m->cfg.max_position);
    for (int b = 0; b < B; b++)
        if (lengths[b] < 1 || lengths[b] > T)
            return tbert_fail(err, TBERT_E_ARG, "encoder: sequence %d has length %d, batch length %d", b,
                              (int)lengths[b], T);
    return TBERT_OK;
}

tbert_status tbert_encoder_forward(tbert_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                   float *hidden, tbert_error *err) {
    tbert_status st = check_batch(e, B, T, lengths, err);
    if (st) return st;
    if (e->cuda) return e->cu->encoder_forward(e->cuda, B, T, ids, lengths, hidden, err);
    return tbert_cpu_encoder_forward(e->cpu, B, T, ids, lengths, hidden, err);
}

tbert_status tbert_encoder_pool_batch(tbert_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                      tbert_pool pool, int out_T, bool normalize, float *out, tbert_error *err) {
    tbert_status st = check_batch(e, B, T, lengths, err);
    if (st) return st;
    if ((unsigned)pool >= TBERT_POOL_COUNT) return tbert_fail(err, TBERT_E_ARG, "encoder: unknown pooling");
    if (pool == TBERT_POOL_POOLER && !e->m->pooler_w)
        return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none",
                          e->m->dir ? e->m->dir : "model");
    if (pool == TBERT_POOL_FLATTEN && out_T < T)
        return tbert_fail(err, TBERT_E_ARG, "flatten pooling: output length %d < batch length %d", out_T, T);
    if (pool != TBERT_POOL_FLATTEN) out_T = T;
    if (e->cuda) st = e->cu->encoder_forward_pool(e->cuda, B, T, ids, lengths, pool, out_T, out, err);
    else st = tbert_cpu_encoder_forward_pool(e->cpu, B, T, ids, lengths, pool, out_T, out, err);
    if (st) return st;
    if (normalize) tbert_l2_normalize_rows(out, (size_t)B, tbert_pool_dim(e->m, pool, out_T));
    return TBERT_OK;
}

typedef struct {
    int len, idx;
} len_idx;

static int cmp_len_idx(const void *a, const void *b) {
    const len_idx *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

tbert_status tbert_encoder_pool(tbert_encoder *e, int n, const int32_t *const *seqs, const int *lens, int max_len,
                                tbert_pool pool, bool normalize, float *out, tbert_error *err) {
    if (n <= 0) return n == 0 ? TBERT_OK : tbert_fail(err, TBERT_E_ARG, "encoder: negative sequence count");
    if (max_len < 1 || max_len > e->m->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "--max-len %d: the model allows 1..%d", max_len, e->m->cfg.max_position);
    for (int i = 0; i < n; i++)
        if (lens[i] < 1 || lens[i] > max_len)
            return tbert_fail(err, TBERT_E_ARG, "encoder: sequence %d has %d tokens (max_len %d)", i, lens[i], max_len);
    size_t dim = tbert_pool_dim(e->m, pool, max_len);
    int bs = e->opts.batch;
    len_idx *order = tbert_malloc_array((size_t)n, sizeof *order);
    int32_t *ids = tbert_malloc_array((size_t)bs * (size_t)max_len, sizeof *ids);
    int32_t *blen = tbert_malloc_array((size_t)bs, sizeof *blen);
    float *tmp = tbert_malloc_array((size_t)bs, dim * sizeof *tmp);
    tbert_status st = TBERT_OK;
    if (!order || !ids || !blen || !tmp) {
        st = tbert_fail(err, TBERT_E_NOMEM, "encoder: out of memory for %d sequences", n);
        goto done;
    }
    for (int i = 0; i < n; i++) order[i] = (len_idx){lens[i], i};
    qsort(order, (size_t)n, sizeof *order, cmp_len_idx);
    int32_t pad = e->m->cfg.pad_token_id;
    for (int start = 0; start < n; start += bs) {
        int B = n - start < bs ? n - start : bs;
        int T = order[start + B - 1].len; /* sorted: the last is the longest */
        for (int b = 0; b < B; b++) {
            const len_idx *s = &order[start + b];
            int32_t *row = ids + (size_t)b * T;
            memcpy(row, seqs[s->idx], (size_t)s->len * sizeof *row);
            for (int t = s->len; t < T; t++) row[t] = pad;
            blen[b] = s->len;
        }
        /* flatten computes only to the batch's longest sequence too: padded rows do not change real
         * rows, and the output is zero beyond each length up to max_len */
        st = tbert_encoder_pool_batch(e, B, T, ids, blen, pool, max_len, normalize, tmp, err);
        if (st) goto done;
        for (int b = 0; b < B; b++) memcpy(out + (size_t)order[start + b].idx * dim, tmp + b * dim, dim * sizeof *out);
    }
done:
    free(order);
    free(ids);
    free(blen);
    free(tmp);
    return st;
}
