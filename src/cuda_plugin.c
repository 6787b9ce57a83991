/* Host side of the CUDA plugin (interface: include/tbert/cuda_plugin.h): finds libtbert_cuda.so, dlopens it
 * and checks its table. No global state: every open returns its own handle; dlopen counts the references.
 *
 * The plugin is opened with RTLD_NODELETE, so closing the last handle never unmaps it: cudart and cuBLAS
 * register the plugin's fat binaries and exit handlers, and unloading a library whose kernels a CUDA context
 * still knows crashes at exit. Staying mapped is the loader's state, not ours; a second open finds it again. */
#include "tbert/cuda_plugin.h"
#include "head_cuda.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tbert_cuda_plugin {
    void *dl;
    const tbert_cuda_api *api;
    char path[PATH_MAX];
};

#if TBERT_HAVE_CUDA

/* The executable's folder (from /proc/self/exe), or false. */
static bool exe_dir(char *dir, size_t cap) {
    ssize_t n = readlink("/proc/self/exe", dir, cap - 1);
    if (n <= 0 || (size_t)n >= cap - 1) return false;
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (!slash) return false;
    *slash = '\0';
    return true;
}

static const char *dl_reason(void) {
    const char *e = dlerror();
    return e ? e : "unknown dlopen error";
}

/* dlopens path; on failure fills err with the loader's reason (which names the missing file: the plugin or
 * one of the CUDA libraries it needs). */
static tbert_status open_path(const char *path, void **dl, tbert_error *err) {
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!*dl) return tbert_fail(err, TBERT_E_NODEV, "%s", dl_reason());
    return TBERT_OK;
}

static tbert_status find_and_open(void **dl, char *path, size_t cap, tbert_error *err) {
    const char *env = getenv("TBERT_CUDA_PLUGIN");
    if (env && *env) {
        snprintf(path, cap, "%s", env);
        tbert_status st = open_path(env, dl, err);
        return st ? tbert_error_prefix(err, "TBERT_CUDA_PLUGIN") : TBERT_OK;
    }
    /* linked into this program (DT_NEEDED): the CUDA tests link the plugin to call its launchers */
    *dl = dlopen(TBERT_CUDA_PLUGIN_FILE, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE | RTLD_NOLOAD);
    if (*dl) {
        snprintf(path, cap, "(linked into the program)");
        return TBERT_OK;
    }
    char dir[PATH_MAX];
    if (!exe_dir(dir, sizeof dir))
        return tbert_fail(err, TBERT_E_NODEV, "cannot read /proc/self/exe to find %s", TBERT_CUDA_PLUGIN_FILE);
    const char *const rel[] = {"/" TBERT_CUDA_PLUGIN_FILE, "/../lib/tbert/" TBERT_CUDA_PLUGIN_FILE};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        int n = snprintf(path, cap, "%s%s", dir, rel[i]);
        if (n < 0 || (size_t)n >= cap || access(path, F_OK) != 0) continue;
        return open_path(path, dl, err); /* present but not loadable (a CUDA library missing): that is the reason */
    }
    return tbert_fail(err, TBERT_E_NODEV, "no %s next to the program or in %s/../lib/tbert", TBERT_CUDA_PLUGIN_FILE, dir);
}

tbert_status tbert_cuda_plugin_open(tbert_cuda_plugin **out, tbert_error *err) {
    *out = NULL;
    tbert_cuda_plugin *p = calloc(1, sizeof *p);
    if (!p) return tbert_fail(err, TBERT_E_NOMEM, "CUDA plugin: out of memory");
    tbert_status st = find_and_open(&p->dl, p->path, sizeof p->path, err);
    if (st) {
        free(p);
        return st;
    }
    tbert_cuda_plugin_entry_fn entry;
    void *sym = dlsym(p->dl, TBERT_CUDA_PLUGIN_ENTRY);
    memcpy(&entry, &sym, sizeof entry); /* POSIX: a data pointer from dlsym holds the function's address */
    if (!sym) {
        st = tbert_fail(err, TBERT_E_NODEV, "%s: not a tbert CUDA plugin (no %s)", p->path, TBERT_CUDA_PLUGIN_ENTRY);
    } else if (!(p->api = entry(TBERT_CUDA_ABI)) || p->api->abi != TBERT_CUDA_ABI) {
        st = tbert_fail(err, TBERT_E_NODEV, "%s: plugin ABI differs from this tbert's (%d)", p->path, TBERT_CUDA_ABI);
    } else if (!p->api->version || strcmp(p->api->version, TBERT_VERSION) != 0) {
        st = tbert_fail(err, TBERT_E_NODEV, "%s: plugin of tbert %s, this is tbert %s", p->path,
                        p->api->version ? p->api->version : "?", TBERT_VERSION);
    }
    if (st) {
        tbert_cuda_plugin_close(p);
        return st;
    }
    *out = p;
    return TBERT_OK;
}

#else /* -DTBERT_CUDA=OFF: no plugin is built, none is looked for */

tbert_status tbert_cuda_plugin_open(tbert_cuda_plugin **out, tbert_error *err) {
    *out = NULL;
    return tbert_fail(err, TBERT_E_NODEV, "this tbert was built without CUDA");
}

#endif

void tbert_cuda_plugin_close(tbert_cuda_plugin *p) {
    if (!p) return;
    if (p->dl) dlclose(p->dl);
    free(p);
}

const tbert_cuda_api *tbert_cuda_plugin_table(const tbert_cuda_plugin *p) {
    return p->api;
}

const char *tbert_cuda_plugin_path(const tbert_cuda_plugin *p) {
    return p->path;
}

void tbert_cuda_probe(tbert_cuda_probe_info *info) {
    memset(info, 0, sizeof *info);
    tbert_cuda_plugin *p;
    tbert_error err;
    if (tbert_cuda_plugin_open(&p, &err)) {
        snprintf(info->why, sizeof info->why, "%s", err.msg);
        return;
    }
    const tbert_cuda_api *api = tbert_cuda_plugin_table(p);
    info->loaded = true;
    info->emulated = api->emulated != 0;
    snprintf(info->path, sizeof info->path, "%s", p->path);
    snprintf(info->name, sizeof info->name, "%s", api->name ? api->name : "?");
    info->devices = api->device_count(info->why, sizeof info->why);
    if (info->devices > 0) info->why[0] = '\0';
    tbert_cuda_plugin_close(p);
}

int tbert_cuda_device_count(void) {
    tbert_cuda_probe_info info;
    tbert_cuda_probe(&info);
    return info.devices;
}

/* Host-side helper of the CUDA head (declared in src/head_cuda.h): the dropout factors are drawn on the host,
 * in the CPU head's order, so the plugin needs no random numbers. */
void tbert_cuda_head_dropout_mask(float p, size_t count, tbert_rng *rng, float *mask) {
    const float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < count; i++) mask[i] = tbert_rng_uniform(rng) >= (double)p ? scale : 0.0f;
}

/* A linear head's dropout on rows (src/head_cuda.h): the CPU head's draws (one per element of n x in_dim, row
 * major, zeros included), applied to the dense block and to the entries present only. */
tbert_status tbert_cuda_head_dropout_rows(float p, const tbert_rows *x, tbert_rng *rng, tbert_rows *out, tbert_error *err) {
    const float scale = 1.0f / (1.0f - p);
    const size_t dd = x->dense_dim, sd = x->sparse_dim;
    if (out->dense_dim != dd || out->sparse_dim != sd)
        return tbert_fail(err, TBERT_E_ARG, "CUDA head dropout: output rows of another shape");
    tbert_rows_clear(out);
    size_t most = 0;
    for (int i = 0; i < x->n; i++)
        if ((size_t)(x->indptr[i + 1] - x->indptr[i]) > most) most = (size_t)(x->indptr[i + 1] - x->indptr[i]);
    float *dense = tbert_malloc_array(dd + 1, sizeof(float)), *val = tbert_malloc_array(most + 1, sizeof(float));
    int32_t *idx = tbert_malloc_array(most + 1, sizeof(int32_t));
    tbert_status st = dense && val && idx ? tbert_rows_reserve(out, (size_t)x->n, tbert_rows_nnz(x), err)
                                          : tbert_fail(err, TBERT_E_NOMEM, "CUDA head dropout: out of memory");
    for (int i = 0; i < x->n && !st; i++) {
        const float *xd = x->dense + (size_t)i * dd;
        for (size_t j = 0; j < dd; j++) dense[j] = tbert_rng_uniform(rng) >= (double)p ? xd[j] * scale : 0.0f;
        int64_t e = x->indptr[i], end = x->indptr[i + 1];
        size_t k = 0;
        for (size_t j = 0; j < sd; j++) {
            bool keep = tbert_rng_uniform(rng) >= (double)p;
            if (e < end && (size_t)x->indices[e] == j) {
                if (keep) idx[k] = x->indices[e], val[k++] = x->values[e] * scale;
                e++;
            }
        }
        st = tbert_rows_append(out, dense, k, idx, val, err);
    }
    free(dense), free(val), free(idx);
    return st;
}
