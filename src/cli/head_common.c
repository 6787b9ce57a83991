#include "head_common.h"

#include <string.h>

#include "tbert/fileio.h"

tbert_status cli_head_open(const char *model, const char *head_dir, tbert_device dev, int threads, cli_head_ctx *ctx,
                           tbert_error *err) {
    memset(ctx, 0, sizeof *ctx);
    char dir[4096];
    tbert_status st = tbert_resolve_model_dir(model, dir, sizeof dir, err);
    if (!st) st = tbert_model_load(dir, &ctx->model, err);
    if (!st) st = tbert_classifier_load(head_dir, ctx->model, &ctx->clf, err);
    if (st) {
        cli_head_close(ctx);
        return st;
    }
    const tbert_recipe *r = tbert_classifier_recipe(ctx->clf);
    tbert_encoder_opts eo = tbert_encoder_default_opts();
    eo.device = dev;
    eo.threads = threads;
    eo.layers = r->layers;
    eo.precision = r->precision;
    eo.quiet = true;
    st = tbert_encoder_create(ctx->model, &eo, &ctx->enc, err);
    if (!st) st = tbert_featurizer_create(r, ctx->model, ctx->enc, &ctx->fz, err);
    if (st) cli_head_close(ctx);
    return st;
}

void cli_head_close(cli_head_ctx *ctx) {
    tbert_featurizer_free(ctx->fz);
    tbert_encoder_free(ctx->enc);
    tbert_classifier_free(ctx->clf);
    tbert_model_free(ctx->model);
    memset(ctx, 0, sizeof *ctx);
}
