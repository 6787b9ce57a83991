/* tbert score's run metadata: OUT.tbert.json beside a --out file (never inside the records), written
 * atomically when the run starts: which head (first 16 hex digits of sha256(best.safetensors)), model
 * (sha256 of model.safetensors), recipe (sha256 of the recipe's JSON) and label rule (the head's threshold,
 * --threshold or --unsure) produced the records. --resume compares it and refuses to append records of
 * another head, model, recipe or label rule. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "score_internal.h"
#include "tbert/fileio.h"

static const char *const KEYS[] = {"head", "model", "recipe", "labels"};
enum { N_KEYS = sizeof KEYS / sizeof KEYS[0] };

tbert_status tbert_score_sidecar(const char *head, const tbert_classifier *c, const tbert_score_opts *o, tbert_error *err) {
    const char *out = o->out_path;
    if (!out || !strcmp(out, "-")) return TBERT_OK;
    struct stat so;
    bool out_exists = stat(out, &so) == 0;
    if (out_exists && !S_ISREG(so.st_mode)) return TBERT_OK; /* /dev/null, a pipe: no run to describe */

    /* this run's identity */
    const tbert_recipe *r = tbert_classifier_recipe(c);
    char path[4096], head_hex[65], recipe_hex[65], rule[96];
    snprintf(path, sizeof path, tbert_is_dir(head) ? "%s/best.safetensors" : "%s", head);
    tbert_status st = tbert_sha256_file(path, head_hex, err);
    if (st) return st;
    head_hex[16] = '\0';
    char *rj = tbert_recipe_to_json(r);
    if (!rj) return tbert_fail(err, TBERT_E_NOMEM, "%s.tbert.json: out of memory", out);
    tbert_sha256_hex(rj, strlen(rj), recipe_hex);
    free(rj);
    if (o->have_unsure) snprintf(rule, sizeof rule, "unsure=%.17g,%.17g", o->unsure_lo, o->unsure_hi);
    else if (o->have_threshold) snprintf(rule, sizeof rule, "threshold=%.17g", o->threshold);
    else snprintf(rule, sizeof rule, "head");
    const char *mine[N_KEYS] = {head_hex, r->model_hash, recipe_hex, rule};

    char side[4200];
    snprintf(side, sizeof side, "%s.tbert.json", out);
    if (o->resume && out_exists && so.st_size > 0) {
        size_t n = 0;
        char *text = NULL;
        tbert_error e2;
        if (tbert_read_file(side, (size_t)1 << 20, &text, &n, &e2)) {
            fprintf(stderr, "tbert score: --resume: %s has no readable %s (written before tbert recorded it?): cannot check "
                            "which head wrote it; appending\n", out, side);
        } else {
            cJSON *j = cJSON_ParseWithLength(text, n);
            free(text);
            for (int k = 0; k < N_KEYS && !st; k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, KEYS[k]);
                if (!cJSON_IsString(v) || strcmp(v->valuestring, mine[k]))
                    st = tbert_fail(err, TBERT_E_MISMATCH,
                                    "%s: written with %s %s, this run has %s %s (%s): refusing to --resume into it "
                                    "(give another --out, or remove it to start over)",
                                    out, KEYS[k], cJSON_IsString(v) ? v->valuestring : "(unknown)", KEYS[k], mine[k], side);
            }
            cJSON_Delete(j);
            if (st) return st;
        }
    }
    cJSON *j = cJSON_CreateObject();
    char *s = NULL;
    if (j) {
        cJSON_AddStringToObject(j, "tbert_version", TBERT_VERSION);
        for (int k = 0; k < N_KEYS; k++) cJSON_AddStringToObject(j, KEYS[k], mine[k]);
        s = cJSON_Print(j);
        cJSON_Delete(j);
    }
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", side);
    size_t len = strlen(s);
    s[len] = '\n'; /* cJSON's buffer ends in NUL: write the text and a newline in its place */
    st = tbert_write_file_atomic(side, s, len + 1, err);
    free(s);
    return st;
}
