/* Shared setup of eval/predict: model + trained head + encoder + featurizer, checked against each other. */
#ifndef TBERT_CLI_HEAD_COMMON_H
#define TBERT_CLI_HEAD_COMMON_H

#include <stdbool.h>

#include "tbert/encoder.h"
#include "tbert/model.h"
#include "tbert/recipe.h"

typedef struct {
    tbert_model *model;
    tbert_classifier *clf;
    tbert_encoder *enc;
    tbert_featurizer *fz;
} cli_head_ctx;

/* The options eval and predict share: a command numbers its own long options from CLI_HEAD_O_OWN. */
enum { CLI_HEAD_O_MODEL = 256, CLI_HEAD_O_HEAD, CLI_HEAD_O_DEVICE, CLI_HEAD_O_THREADS, CLI_HEAD_O_OWN };
typedef struct {
    const char *model, *head; /* --model NAME|DIR (NULL: the default), --head CKPT_DIR */
    tbert_device dev;         /* --device */
    long threads;             /* --threads (0: the encoder's default) */
} cli_head_args;
/* Takes option c (from cli_getopt) when it is one of the shared ones and returns true; *rc is then CLI_OK, or
 * the exit code after a bad value was reported. False (and *rc untouched) for any other option. */
bool cli_head_getopt(const char *cmd, int c, cli_head_args *a, int *rc);
/* After the options: no stray argument and --head given. CLI_OK, or the exit code after the usage error. */
int cli_head_args_check(const char *cmd, int argc, char **argv, const cli_head_args *a);

tbert_status cli_head_open(const char *model, const char *head_dir, tbert_device dev, int threads, cli_head_ctx *ctx,
                           tbert_error *err);
void cli_head_close(cli_head_ctx *ctx);

#endif
