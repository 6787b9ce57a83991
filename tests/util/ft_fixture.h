/* Random models and packed window batches for the fine-tuning stack tests (CPU and CUDA). */
#ifndef TBERT_TEST_FT_FIXTURE_H
#define TBERT_TEST_FT_FIXTURE_H

#include <stdint.h>

#include "testutil.h"
#include "tbert/encoder.h"

/* A random BERT (tbert_model_random, with pooler) of these shapes; fails the running test when it cannot. */
tbert_model *tu_ft_random_model(int H, int heads, int IM, int layers, int vocab, int maxpos, uint64_t seed);

/* A batch: n_doc documents (at most 15) of wins[d] windows each (at most 63 in all), window w of lens[w] tokens;
 * ids uniform in [0, vocab) and hidden (N x H) N(0,1), drawn from r in that order. */
typedef struct {
    int n_doc, n_win;
    int32_t doc_off[16], off[64];
    int32_t *ids;
    float *hidden;
} tu_ft_batch;

void tu_ft_batch_make(tu_ft_batch *b, tu_rng *r, int n_doc, const int *wins, const int *lens, int vocab, int H);
void tu_ft_batch_free(tu_ft_batch *b);

#endif
