/* tbert_par_for (src/par_for.h): contiguous item ranges over threads started for the call. */
#include "par_for.h"

#include <pthread.h>

typedef struct {
    tbert_par_fn fn;
    void *ctx;
    int n, workers, w;
} par_job;

static void *par_run(void *arg) {
    par_job *j = arg;
    int a = (int)((long long)j->n * j->w / j->workers), b = (int)((long long)j->n * (j->w + 1) / j->workers);
    for (int i = a; i < b; i++) j->fn(j->ctx, i, j->w);
    return NULL;
}

void tbert_par_for(int threads, int n, tbert_par_fn fn, void *ctx) {
    int W = threads < n ? threads : n;
    if (W <= 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    par_job jobs[W];
    pthread_t tid[W - 1];
    for (int w = 0; w < W; w++) jobs[w] = (par_job){fn, ctx, n, W, w};
    int started = 0;
    for (int w = 1; w < W; w++) {
        if (pthread_create(&tid[w - 1], NULL, par_run, &jobs[w]) != 0) break;
        started++;
    }
    par_run(&jobs[0]);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    for (int w = 1 + started; w < W; w++) par_run(&jobs[w]); /* ranges whose thread could not start */
}
