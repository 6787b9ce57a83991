/* Shared setup of eval/predict: model + trained head + encoder + featurizer, checked against each other. */
#ifndef TBERT_CLI_HEAD_COMMON_H
#define TBERT_CLI_HEAD_COMMON_H

#include "tbert/encoder.h"
#include "tbert/model.h"
#include "tbert/recipe.h"

typedef struct {
    tbert_model *model;
    tbert_classifier *clf;
    tbert_encoder *enc;
    tbert_featurizer *fz;
} cli_head_ctx;

tbert_status cli_head_open(const char *model, const char *head_dir, tbert_device dev, int threads, cli_head_ctx *ctx,
                           tbert_error *err);
void cli_head_close(cli_head_ctx *ctx);

#endif
