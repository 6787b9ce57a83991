#include "head_common.h"

#include <string.h>

#include "cli.h"
#include "tbert/fileio.h"
#include "tbert/finetune.h"

tbert_status cli_head_open(const char *model, const char *head_dir, tbert_device dev, int threads, cli_head_ctx *ctx,
                           tbert_error *err) {
    memset(ctx, 0, sizeof *ctx);
    char dir[4096];
    tbert_status st = tbert_resolve_model_dir(model, dir, sizeof dir, err);
    if (!st) st = tbert_model_load(dir, &ctx->model, err);
    if (!st) st = tbert_classifier_load(head_dir, ctx->model, &ctx->clf, err);
    if (!st) st = tbert_model_apply_finetune(ctx->model, head_dir, tbert_classifier_recipe(ctx->clf), err);
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

bool cli_head_getopt(const char *cmd, int c, cli_head_args *a, int *rc) {
    tbert_error err;
    *rc = CLI_OK;
    switch (c) {
    case CLI_HEAD_O_MODEL: a->model = optarg; return true;
    case CLI_HEAD_O_HEAD: a->head = optarg; return true;
    case CLI_HEAD_O_DEVICE:
        if (tbert_device_parse(optarg, &a->dev, &err)) *rc = cli_report(&err);
        return true;
    case CLI_HEAD_O_THREADS:
        if (!cli_parse_int(cmd, "--threads", optarg, 0, 4096, &a->threads)) *rc = CLI_USAGE;
        return true;
    default: return false;
    }
}

int cli_head_args_check(const char *cmd, int argc, char **argv, const cli_head_args *a) {
    if (optind < argc) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!a->head) return cli_usage_error(cmd, "--head CKPT_DIR is required");
    return CLI_OK;
}
