/* Reads the encoder golden files written by tests/golden/make_encoder_golden.py:
 * <base>.json (inputs: ids, lengths; "arrays": name -> {offset, shape}) and <base>.f64 (float64 LE).
 * Included by tests/test_encoder_cpu.c and tests/test_minilm.c (header-only, static functions). */
#ifndef TBERT_TEST_ENCODER_GOLDEN_H
#define TBERT_TEST_ENCODER_GOLDEN_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"

typedef struct {
    cJSON *json;
    int n;          /* sequences */
    int *lengths;   /* n */
    int32_t **ids;  /* n rows of lengths[i] ids */
    double *data;   /* the whole .f64 file */
    size_t n_data;
} eg_golden;

static void eg_free(eg_golden *g) {
    if (!g) return;
    for (int i = 0; g->ids && i < g->n; i++) free(g->ids[i]);
    free(g->ids);
    free(g->lengths);
    free(g->data);
    cJSON_Delete(g->json);
    memset(g, 0, sizeof *g);
}

/* Loads <base>.json and <base>.f64; returns 0 on success, prints the problem otherwise. */
static int eg_load(const char *base, eg_golden *g) {
    memset(g, 0, sizeof *g);
    char path[4096];
    char *txt = NULL, *bin = NULL;
    size_t len = 0, blen = 0;
    tbert_error err;
    if (snprintf(path, sizeof path, "%s.json", base) >= (int)sizeof path) return -1;
    if (tbert_read_file(path, 0, &txt, &len, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    g->json = cJSON_Parse(txt);
    free(txt);
    const cJSON *lens = cJSON_GetObjectItem(g->json, "lengths"), *ids = cJSON_GetObjectItem(g->json, "ids");
    if (!cJSON_IsArray(lens) || !cJSON_IsArray(ids) || cJSON_GetArraySize(lens) != cJSON_GetArraySize(ids)) {
        fprintf(stderr, "%s: bad golden index\n", path);
        return -1;
    }
    g->n = cJSON_GetArraySize(lens);
    g->lengths = calloc((size_t)g->n, sizeof *g->lengths);
    g->ids = calloc((size_t)g->n, sizeof *g->ids);
    if (!g->lengths || !g->ids) return -1;
    for (int i = 0; i < g->n; i++) {
        const cJSON *row = cJSON_GetArrayItem(ids, i);
        g->lengths[i] = cJSON_GetArrayItem(lens, i)->valueint;
        if (cJSON_GetArraySize(row) != g->lengths[i]) {
            fprintf(stderr, "%s: row %d length mismatch\n", path, i);
            return -1;
        }
        g->ids[i] = calloc((size_t)g->lengths[i], sizeof *g->ids[i]);
        if (!g->ids[i]) return -1;
        for (int t = 0; t < g->lengths[i]; t++) g->ids[i][t] = cJSON_GetArrayItem(row, t)->valueint;
    }
    if (snprintf(path, sizeof path, "%s.f64", base) >= (int)sizeof path) return -1;
    if (tbert_read_file(path, 0, &bin, &blen, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    g->n_data = blen / sizeof(double);
    g->data = malloc(blen ? blen : 1);
    if (!g->data) {
        free(bin);
        return -1;
    }
    memcpy(g->data, bin, blen); /* the file is little-endian like every machine we build on */
    free(bin);
    return 0;
}

/* The array `name` (NULL when absent); *count gets its number of elements. */
static const double *eg_array(const eg_golden *g, const char *name, size_t *count) {
    const cJSON *a = cJSON_GetObjectItem(cJSON_GetObjectItem(g->json, "arrays"), name);
    if (!a) return NULL;
    size_t off = (size_t)cJSON_GetObjectItem(a, "offset")->valuedouble, n = 1;
    const cJSON *shape = cJSON_GetObjectItem(a, "shape");
    for (int i = 0; i < cJSON_GetArraySize(shape); i++) n *= (size_t)cJSON_GetArrayItem(shape, i)->valuedouble;
    if (off + n > g->n_data) return NULL;
    if (count) *count = n;
    return g->data + off;
}

__attribute__((unused)) static int eg_max_len(const eg_golden *g) {
    int T = 0;
    for (int i = 0; i < g->n; i++) T = g->lengths[i] > T ? g->lengths[i] : T;
    return T;
}

/* A padded batch [n, T] of the golden ids (pad id `pad` beyond each length). */
__attribute__((unused)) static int32_t *eg_padded(const eg_golden *g, int T, int32_t pad) {
    int32_t *ids = malloc((size_t)g->n * (size_t)T * sizeof *ids);
    if (!ids) return NULL;
    for (int i = 0; i < g->n; i++)
        for (int t = 0; t < T; t++) ids[(size_t)i * T + t] = t < g->lengths[i] ? g->ids[i][t] : pad;
    return ids;
}

#endif
