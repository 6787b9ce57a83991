/* Shared setup of embed/bench: the encoder options from their common flags, and the pooler check. */
#ifndef TBERT_CLI_ENCODER_COMMON_H
#define TBERT_CLI_ENCODER_COMMON_H

#include <stdbool.h>

#include "tbert/encoder.h"
#include "tbert/model.h"

/* --device and --precision parsed into *eo (from tbert_encoder_default_opts()) and the numbers copied; a bad
 * device or precision is a usage error of `cmd`. Returns CLI_OK, or the exit code after the message. */
int cli_encoder_opts(const char *cmd, const char *device, const char *precision, long threads, long layers, long batch,
                     bool quiet, tbert_encoder_opts *eo);
/* Refuses --pool pooler for a model without a pooler; `what` names the model in the message. */
tbert_status cli_check_pooler(const tbert_model *m, tbert_pool pool, const char *what, tbert_error *err);

#endif
