/* The default model (sentence-transformers/all-MiniLM-L6-v2, fetched by models/fetch.sh minilm) loads with
 * its published config, checksum and weights. Skips (77) when the model is not in the cache; CI fetches it.
 *
 * Expected weight values were read with numpy from the same file:
 *   /opt/golden/bin/python -c "from safetensors.numpy import load_file;
 *     d = load_file('$TBERT_CACHE/models/minilm/model.safetensors'); print(repr(float(d[NAME][INDEX])))"
 * (file sha256 53aa5117...9db, CONVENTIONS.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/model.h"

static char g_dir[2048];

static void test_minilm(void **state) {
    tbert_model *m;
    tbert_error err = {0};
    double t0 = tbert_now();
    tbert_status s = tbert_model_load(g_dir, &m, &err);
    if (s) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, TBERT_OK);
    fprintf(stderr, "loaded %s in %.3f s\n", g_dir, tbert_now() - t0);
    const tbert_config *c = &m->cfg;
    assert_int_equal(c->vocab_size, 30522);
    assert_int_equal(c->hidden, 384);
    assert_int_equal(c->layers, 6);
    assert_int_equal(c->heads, 12);
    assert_int_equal(c->intermediate, 1536);
    assert_int_equal(c->max_position, 512);
    assert_int_equal(c->type_vocab_size, 2);
    assert_int_equal(c->pad_token_id, 0);
    assert_true(c->layer_norm_eps == 1e-12f);
    assert_string_equal(m->weights_sha256, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db");
    assert_string_equal(m->weights_dtype, "F32");
    /* sum of v.size over the 103 float tensors (all but embeddings.position_ids) */
    assert_int_equal(tbert_model_param_count(m), 22713216);
    assert_non_null(m->pooler_w);
    assert_int_equal(tbert_vocab_size(m->vocab), 30522);
    const int H = 384;
    struct {
        float got, want;
        const char *what;
    } v[] = {
        {m->word_emb[0], -0.019989013671875f, "embeddings.word_embeddings.weight[0,0]"},
        {m->word_emb[1], -0.0034027099609375f, "embeddings.word_embeddings.weight[0,1]"},
        {m->word_emb[2], -0.014678955078125f, "embeddings.word_embeddings.weight[0,2]"},
        {m->pos_emb[511 * H + 383], -0.006320953369140625f, "embeddings.position_embeddings.weight[511,383]"},
        {m->type_emb[1 * H + 0], -0.0008983612060546875f, "embeddings.token_type_embeddings.weight[1,0]"},
        {m->layer[0].q_b[17], -0.06270777434110641f, "encoder.layer.0.attention.self.query.bias[17]"},
        {m->layer[2].attn_out_w[300 * H + 1], 0.022584598511457443f, "encoder.layer.2.attention.output.dense.weight[300,1]"},
        {m->layer[3].inter_w[100 * H + 200], 0.01641804166138172f, "encoder.layer.3.intermediate.dense.weight[100,200]"},
        {m->layer[5].out_ln_b[0], -0.03630739822983742f, "encoder.layer.5.output.LayerNorm.bias[0]"},
        {m->pooler_w[5 * H + 9], -0.0110321044921875f, "pooler.dense.weight[5,9]"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (v[i].got != v[i].want) { /* F32 in the file: the loaded value must be bit-identical */
            fprintf(stderr, "%s: got %.9g want %.9g\n", v[i].what, (double)v[i].got, (double)v[i].want);
            fail();
        }
    }
    tbert_model_free(m);
}

int main(void) {
    tbert_error err;
    if (tbert_resolve_model_dir("minilm", g_dir, sizeof g_dir, &err) != TBERT_OK) tu_skip_external("test_model_minilm", err.msg);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_minilm)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
