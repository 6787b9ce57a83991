/* config.json of a Hugging Face BERT model: parsed with cJSON, every field range-checked, and anything the
 * encoder does not implement (another activation, relative position embeddings, a non-BERT model type)
 * refused by name rather than computed wrongly. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/model.h"

#define CONFIG_MAX_BYTES (1u << 20) /* real configs are ~1 KB */

/* Sanity caps: far above any BERT published, low enough that products of them cannot overflow and an
 * absurd value is reported before anything is allocated. */
#define CAP_VOCAB 4000000
#define CAP_HIDDEN 65536
#define CAP_LAYERS 512
#define CAP_INTERMEDIATE 1048576
#define CAP_POSITIONS 1048576
#define CAP_TYPE_VOCAB 1024

/* Reads an integer field; `dflt` < 0 means required. Returns false with err filled on any problem. */
static bool get_int(const cJSON *root, const char *path, const char *key, long lo, long hi, long dflt, int *out,
                    tbert_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || (cJSON_IsNull(it) && dflt >= 0)) {
        if (dflt < 0) {
            tbert_fail(err, TBERT_E_FORMAT, "%s: missing field '%s'", path, key);
            return false;
        }
        *out = (int)dflt;
        return true;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        if (cJSON_IsNumber(it))
            tbert_fail(err, TBERT_E_FORMAT, "%s: '%s' must be an integer in [%ld, %ld] (got %.17g)", path, key, lo, hi, d);
        else
            tbert_fail(err, TBERT_E_FORMAT, "%s: '%s' must be an integer in [%ld, %ld]", path, key, lo, hi);
        return false;
    }
    *out = (int)d;
    return true;
}

/* An optional string field that, when present, must equal `want`. */
static bool check_string(const cJSON *root, const char *path, const char *key, const char *want, const char *why,
                         tbert_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return true;
    if (!cJSON_IsString(it)) {
        tbert_fail(err, TBERT_E_FORMAT, "%s: '%s' is not a string", path, key);
        return false;
    }
    if (strcmp(it->valuestring, want) != 0) {
        tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: %s '%.60s' is not supported (%s)", path, key, it->valuestring, why);
        return false;
    }
    return true;
}

static tbert_status parse_config(const cJSON *root, const char *path, tbert_config *c, tbert_error *err) {
    if (!cJSON_IsObject(root)) return tbert_fail(err, TBERT_E_FORMAT, "%s: not a JSON object", path);
    if (!check_string(root, path, "model_type", "bert", "tbert runs BERT encoders (model_type \"bert\")", err) ||
        !check_string(root, path, "hidden_act", "gelu", "tbert implements \"gelu\", the erf form", err) ||
        !check_string(root, path, "position_embedding_type", "absolute", "tbert implements \"absolute\" positions", err))
        return err ? err->code : TBERT_E_FORMAT;
    if (!get_int(root, path, "vocab_size", 1, CAP_VOCAB, -1, &c->vocab_size, err) ||
        !get_int(root, path, "hidden_size", 1, CAP_HIDDEN, -1, &c->hidden, err) ||
        !get_int(root, path, "num_hidden_layers", 1, CAP_LAYERS, -1, &c->layers, err) ||
        !get_int(root, path, "num_attention_heads", 1, CAP_HIDDEN, -1, &c->heads, err) ||
        !get_int(root, path, "intermediate_size", 1, CAP_INTERMEDIATE, -1, &c->intermediate, err) ||
        !get_int(root, path, "max_position_embeddings", 1, CAP_POSITIONS, -1, &c->max_position, err) ||
        /* transformers' BertConfig defaults for the rest */
        !get_int(root, path, "type_vocab_size", 1, CAP_TYPE_VOCAB, 2, &c->type_vocab_size, err) ||
        !get_int(root, path, "pad_token_id", 0, CAP_VOCAB, 0, &c->pad_token_id, err))
        return err ? err->code : TBERT_E_FORMAT;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    c->layer_norm_eps = 1e-12f;
    if (eps && !cJSON_IsNull(eps)) {
        double d = cJSON_IsNumber(eps) ? eps->valuedouble : NAN;
        if (!(d > 0.0 && d < 1.0))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: 'layer_norm_eps' must be a number in (0, 1)", path);
        c->layer_norm_eps = (float)d;
    }
    if (c->hidden % c->heads != 0)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: num_attention_heads (%d) does not divide hidden_size (%d)", path, c->heads,
                          c->hidden);
    if (c->pad_token_id >= c->vocab_size)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: pad_token_id (%d) is not below vocab_size (%d)", path, c->pad_token_id,
                          c->vocab_size);
    return TBERT_OK;
}

tbert_status tbert_config_parse(const char *text, size_t len, const char *label, tbert_config *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    const char *path = label ? label : "config.json";
    if (len > CONFIG_MAX_BYTES)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: %zu bytes, more than the limit of %u", path, len, CONFIG_MAX_BYTES);
    /* a NUL-terminated copy: cJSON then never depends on its length checks to stay inside the buffer */
    char *copy = tbert_strndup(text, len);
    if (!copy) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    text = copy;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t pos = end && end >= text ? (size_t)(end - text) : 0;
        free(copy);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: not valid JSON (near byte %zu)", path, pos);
    }
    tbert_status s = TBERT_OK;
    for (const char *p = end; (size_t)(p - text) < len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: extra bytes after the JSON object (byte %zu)", path, (size_t)(p - text));
            break;
        }
    }
    tbert_config c;
    memset(&c, 0, sizeof c);
    if (s == TBERT_OK) s = parse_config(root, path, &c, err);
    cJSON_Delete(root);
    free(copy);
    if (s == TBERT_OK) *out = c;
    else if (err) /* quoted values come from the file: keep the message on one line */
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    return s;
}

tbert_status tbert_config_load(const char *path, tbert_config *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    char *text;
    size_t len;
    tbert_status s = tbert_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
    if (s) return s;
    s = tbert_config_parse(text, len, path, out, err);
    free(text);
    return s;
}
