/* The CUDA backend as a run-time plugin: libtbert_cuda.so holds the kernels (kernels/, .cu), src/encoder_cuda.c and
 * src/head_cuda.c (and src/common.c for tbert_fail); it links cudart and cuBLAS with a RUNPATH to the
 * toolkit's lib folder. The tbert binary and libtbert never link CUDA: they dlopen the plugin
 * (src/cuda_plugin.c) and reach it only through the one table below, returned by the plugin's one entry
 * point tbert_cuda_plugin_api(). A machine without the plugin or without the CUDA libraries runs everything on
 * the CPU (`--device auto`) or refuses `--device cuda` with one line (exit 2).
 *
 * The plugin and the host are built from one tree: the table passes tbert's own structs (tbert_model,
 * tbert_head, tbert_adam, tbert_rows, tbert_encoder_opts, tbert_error) by pointer. TBERT_CUDA_ABI changes whenever the
 * table or one of those structs changes; the host refuses a plugin of another ABI or another tbert version.
 * Semantics of each entry: src/encoder_backend.h (encoder_*) and src/head_cuda.h (head_*). */
#ifndef TBERT_CUDA_PLUGIN_H
#define TBERT_CUDA_PLUGIN_H

#include <stddef.h>

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/finetune_stack.h"
#include "tbert/head.h"
#include "tbert/params.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_CUDA_ABI 3 /* 2: head_forward_rows, head_train_step_rows; 3: ft_* (fine-tuning stack) */
#define TBERT_CUDA_PLUGIN_FILE "libtbert_cuda.so"
#define TBERT_CUDA_PLUGIN_ENTRY "tbert_cuda_plugin_api"

typedef struct tbert_cuda_encoder tbert_cuda_encoder;
typedef struct tbert_cuda_head tbert_cuda_head;
typedef struct tbert_cuda_ft tbert_cuda_ft;

typedef struct {
    int abi;             /* TBERT_CUDA_ABI */
    const char *version; /* TBERT_VERSION the plugin was built as */
    const char *name;    /* e.g. "CUDA + cuBLAS, built with cudart 13000", "emulated CUDA device (...)" */
    int emulated;        /* 1: the -DTBERT_CUDA=EMU build (kernels run on the CPU under kernels/emu/) */
    /* Usable devices; 0 with a one-line reason in why[cap] (e.g. "cudaGetDeviceCount: no CUDA-capable
     * device is detected"). Never fails otherwise. */
    int (*device_count)(char *why, size_t cap);

    tbert_status (*encoder_create)(const tbert_model *m, const tbert_encoder_opts *opts, tbert_cuda_encoder **out,
                                   tbert_error *err);
    void (*encoder_free)(tbert_cuda_encoder *e);
    tbert_status (*encoder_forward)(tbert_cuda_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                    float *hidden, tbert_error *err);
    tbert_status (*encoder_forward_pool)(tbert_cuda_encoder *e, int B, int T, const int32_t *ids,
                                         const int32_t *lengths, tbert_pool pool, int out_T, float *out,
                                         tbert_error *err);

    tbert_status (*head_create)(const tbert_head *h, const tbert_adam *a, int max_n, int device, tbert_cuda_head **out,
                                tbert_error *err);
    void (*head_free)(tbert_cuda_head *g);
    tbert_status (*head_forward)(tbert_cuda_head *g, int n, const float *x, float *z, tbert_error *err);
    tbert_status (*head_train_step)(tbert_cuda_head *g, tbert_adam *a, int n, const float *x, const int *y,
                                    const float *class_weight, const float *mask, double *loss, tbert_error *err);
    tbert_status (*head_download)(tbert_cuda_head *g, tbert_head *h, tbert_adam *a, tbert_error *err);
    tbert_status (*head_last_grad)(tbert_cuda_head *g, float *grad, tbert_error *err);
    /* sparse rows (dense block + CSR; src/head_cuda.h): the batch goes to the device as it is, never densified */
    tbert_status (*head_forward_rows)(tbert_cuda_head *g, const tbert_rows *x, float *z, tbert_error *err);
    tbert_status (*head_train_step_rows)(tbert_cuda_head *g, tbert_adam *a, const tbert_rows *x, const int *y,
                                         const float *class_weight, const float *mask, double *loss, float *z,
                                         tbert_error *err);
    /* the trainable top of the encoder for --finetune K on the device (src/finetune_stack_cuda.h) */
    tbert_status (*ft_create)(const tbert_model *m, const tbert_ft_stack_cfg *cfg, const tbert_params *ps,
                              tbert_precision precision, int device, tbert_cuda_ft **out, tbert_error *err);
    void (*ft_free)(tbert_cuda_ft *g);
    tbert_status (*ft_upload)(tbert_cuda_ft *g, const tbert_params *ps, tbert_error *err);
    tbert_status (*ft_forward)(tbert_cuda_ft *g, int n_win, const int32_t *off, const float *hidden,
                               const int32_t *ids, bool training, uint64_t step, float *pooled, tbert_error *err);
    tbert_status (*ft_backward)(tbert_cuda_ft *g, const float *dpooled, tbert_params *ps, tbert_error *err);
} tbert_cuda_api;

/* The plugin's one entry point (src/cuda_plugin_api.c): the table, or NULL when abi_version is not its own. */
typedef const tbert_cuda_api *(*tbert_cuda_plugin_entry_fn)(int abi_version);
const tbert_cuda_api *tbert_cuda_plugin_api(int abi_version);

/* ---- host side (src/cuda_plugin.c, in libtbert) ---------------------------------------------------------
 * tbert_cuda_plugin_open finds and loads the plugin, in this order:
 *   1. $TBERT_CUDA_PLUGIN, a path (when set and not empty, the only place looked at);
 *   2. a copy already loaded in this process (programs linked against the plugin: the CUDA tests);
 *   3. libtbert_cuda.so next to the executable (the build tree);
 *   4. ../lib/tbert/libtbert_cuda.so relative to the executable's folder (the install layout).
 * It fails with TBERT_E_NODEV and a one-line reason (the dlopen error, "built without CUDA", ...). Each open
 * returns its own handle (dlopen counts references); the encoder and the CUDA head each own one. */
typedef struct tbert_cuda_plugin tbert_cuda_plugin;
tbert_status tbert_cuda_plugin_open(tbert_cuda_plugin **out, tbert_error *err);
void tbert_cuda_plugin_close(tbert_cuda_plugin *p);
const tbert_cuda_api *tbert_cuda_plugin_table(const tbert_cuda_plugin *p);
/* The file it was loaded from ("(linked into the program)" for case 2). */
const char *tbert_cuda_plugin_path(const tbert_cuda_plugin *p);

/* What `tbert info` reports: whether a plugin loaded (and from where), its name, emulated, the device count,
 * and the reason when there is no usable device. */
typedef struct {
    bool loaded;
    bool emulated;
    int devices;
    char path[4096];
    char name[128];
    char why[1024]; /* empty when loaded and devices > 0 */
} tbert_cuda_probe_info;
void tbert_cuda_probe(tbert_cuda_probe_info *info);

#ifdef __cplusplus
}
#endif
#endif
