#include "encoder_common.h"

#include "cli.h"

int cli_encoder_opts(const char *cmd, const char *device, const char *precision, long threads, long layers, long batch,
                     bool quiet, tbert_encoder_opts *eo) {
    tbert_error err = {0};
    *eo = tbert_encoder_default_opts();
    if (tbert_device_parse(device, &eo->device, &err) || tbert_precision_parse(precision, &eo->precision, &err))
        return cli_usage_error(cmd, "%s", err.msg);
    eo->threads = (int)threads, eo->layers = (int)layers, eo->batch = (int)batch, eo->quiet = quiet;
    return CLI_OK;
}

tbert_status cli_check_pooler(const tbert_model *m, tbert_pool pool, const char *what, tbert_error *err) {
    if (pool == TBERT_POOL_POOLER && !m->pooler_w)
        return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none", what);
    return TBERT_OK;
}
