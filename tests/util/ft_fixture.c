#include "ft_fixture.h"

#include <stdlib.h>

tbert_model *tu_ft_random_model(int H, int heads, int IM, int layers, int vocab, int maxpos, uint64_t seed) {
    tbert_config c = {.vocab_size = vocab, .hidden = H, .layers = layers, .heads = heads, .intermediate = IM,
                      .max_position = maxpos, .type_vocab_size = 2, .pad_token_id = 0, .layer_norm_eps = 1e-12f};
    tbert_model *m = NULL;
    tbert_error err = {0};
    if (tbert_model_random(&c, true, seed, &m, &err) != TBERT_OK) fail_msg("random model: %s", err.msg);
    return m;
}

void tu_ft_batch_make(tu_ft_batch *b, tu_rng *r, int n_doc, const int *wins, const int *lens, int vocab, int H) {
    assert_true(n_doc >= 0 && n_doc < 16);
    b->n_doc = n_doc;
    b->doc_off[0] = 0;
    for (int d = 0; d < n_doc; d++) b->doc_off[d + 1] = b->doc_off[d] + wins[d];
    b->n_win = b->doc_off[n_doc];
    assert_true(b->n_win >= 0 && b->n_win < 64);
    b->off[0] = 0;
    for (int w = 0; w < b->n_win; w++) b->off[w + 1] = b->off[w] + lens[w];
    size_t N = (size_t)b->off[b->n_win];
    b->ids = tu_xcalloc(N, sizeof *b->ids);
    b->hidden = tu_xcalloc(N * (size_t)H, sizeof *b->hidden);
    for (size_t i = 0; i < N; i++) b->ids[i] = (int32_t)(tu_next(r) % (uint64_t)vocab);
    for (size_t i = 0; i < N * (size_t)H; i++) b->hidden[i] = tu_normal(r);
}

void tu_ft_batch_free(tu_ft_batch *b) {
    free(b->ids);
    free(b->hidden);
    b->ids = NULL;
    b->hidden = NULL;
}
