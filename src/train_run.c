/* The `tbert train` job: read labelled texts (a table, or --ham/--spam mail), build the recipe, encode once
 * (dense blocks through the row store), split, fit, write checkpoints, metrics.json, split.tsv and report.html. */
#include <cjson/cJSON.h>
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/learn.h"
#include "tbert/mail.h"
#include "tbert/model.h"
#include "tbert/train.h"
#include "train_internal.h"

static const char *const ft_head_phase_names[] = {[TBERT_FT_HEAD_JOINT] = "joint", [TBERT_FT_HEAD_FIRST] = "first",
                                                   [TBERT_FT_HEAD_REFIT] = "refit"};
enum { N_FT_HEAD_PHASES = sizeof ft_head_phase_names / sizeof *ft_head_phase_names };

const char *tbert_ft_head_phase_name(int phase) {
    return phase >= 0 && phase < N_FT_HEAD_PHASES ? ft_head_phase_names[phase] : "joint";
}

bool tbert_ft_head_phase_parse(const char *s, int *phase) {
    for (int p = 0; p < N_FT_HEAD_PHASES; p++)
        if (!strcmp(s, ft_head_phase_names[p])) return *phase = p, true;
    return false;
}

void tbert_train_opts_default(tbert_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->pool = o->max_len = o->layers = o->windows = o->normalize = o->lexical_dim = o->lexical_ngrams = o->evidence_dim = o->evidence_set = o->header_dim = -1;
    o->header_weight = -1;
    o->hidden = o->epochs = o->batch = -1;
    o->lr = o->weight_decay = o->dropout = -1;
    o->seed = 42;
    o->val_fraction = o->test_fraction = -1; /* the recipe's: text 0.1 / 0.2, mail 0 (5-fold cross-fitting) / 0 */
    o->cv_folds = -1;
    o->device.kind = TBERT_DEVICE_AUTO;
    o->precision = TBERT_PREC_FP32;
    o->encoder_lr = 5e-5;
    o->finetune_epochs = 4;
    o->finetune_dropout = 1;
    o->finetune_head = TBERT_FT_HEAD_FIRST; /* chosen on the training parts only: benchmarks/RESULTS.md */
}

void tbert_train_result_free(tbert_train_result *r) {
    if (!r) return;
    tbert_fit_result_free(&r->fit);
}

/* ---- labels ---- */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* labels sorted byte-wise and unique; y[i] = index of doc i's label */
static tbert_status discover_labels(const tbert_labelled *L, const char *positive, tbert_recipe *r, int *y, const char *src,
                                    tbert_error *err) {
    char **tmp = tbert_malloc_array((size_t)L->n + 1, sizeof(char *));
    if (!tmp) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    memcpy(tmp, L->label, (size_t)L->n * sizeof(char *));
    qsort(tmp, (size_t)L->n, sizeof(char *), cmp_str);
    r->n_labels = 0;
    for (int i = 0; i < L->n; i++) {
        if (i > 0 && !strcmp(tmp[i], tmp[i - 1])) continue;
        if (r->n_labels == TBERT_MAX_LABELS || strlen(tmp[i]) >= TBERT_MAX_LABEL_LEN) {
            free(tmp);
            return tbert_fail(err, TBERT_E_ARG, "%s: more than %d labels, or a label longer than %d bytes", src, TBERT_MAX_LABELS,
                              TBERT_MAX_LABEL_LEN - 1);
        }
        snprintf(r->labels[r->n_labels++], TBERT_MAX_LABEL_LEN, "%s", tmp[i]);
    }
    free(tmp);
    if (r->n_labels < 2)
        return tbert_fail(err, TBERT_E_ARG, "%s: needs at least 2 different labels, found %d", src, r->n_labels);
    for (int i = 0; i < L->n; i++) y[i] = tbert_recipe_label_index(r, L->label[i]);
    r->positive = -1;
    if (r->n_labels == 2) {
        if (positive) {
            r->positive = tbert_recipe_label_index(r, positive);
            if (r->positive < 0)
                return tbert_fail(err, TBERT_E_ARG, "--positive '%s' is not one of the labels ('%s', '%s')", positive, r->labels[0],
                                  r->labels[1]);
        } else {
            r->positive = tbert_recipe_label_index(r, "spam");
            if (r->positive < 0) r->positive = 1;
        }
    } else if (positive) {
        return tbert_fail(err, TBERT_E_ARG, "--positive needs exactly 2 labels, %s has %d", src, r->n_labels);
    }
    return TBERT_OK;
}

static void data_hash(const tbert_labelled *L, const char *docs_hash, char out[65]) {
    GChecksum *cs = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(cs, (const guchar *)docs_hash, 64);
    for (int i = 0; i < L->n; i++) g_checksum_update(cs, (const guchar *)L->label[i], strlen(L->label[i]) + 1);
    snprintf(out, 65, "%s", g_checksum_get_string(cs));
    g_checksum_free(cs);
}

/* ---- outputs ---- */
/* the rows densified, as one n x dim float32 .npy (the layout before the row format) */
static tbert_status write_npy(const char *path, const tbert_rows *X, tbert_error *err) {
    int n = X->n;
    size_t dim = tbert_rows_dim(X);
    char hdr[128];
    int len = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %zu), }", n, dim);
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    char head[256];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    uint16_t hl = (uint16_t)(len + pad + 1);
    head[8] = (char)(hl & 0xff);
    head[9] = (char)(hl >> 8);
    memcpy(head + 10, hdr, (size_t)len);
    memset(head + 10 + len, ' ', (size_t)pad);
    head[10 + len + pad] = '\n';
    tbert_atomic_file *f;
    tbert_status st = tbert_atomic_open(path, &f, err);
    if (st) return st;
    st = tbert_atomic_write(f, head, (size_t)(11 + len + pad), err);
    float *row = tbert_malloc_array(dim, sizeof(float));
    if (!row && !st) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    for (int i = 0; i < n && !st; i++) {
        tbert_rows_densify(X, i, 1, row, dim);
        st = tbert_atomic_write(f, row, dim * sizeof(float), err);
    }
    free(row);
    if (st) {
        tbert_atomic_abort(f);
        return st;
    }
    return tbert_atomic_commit(f, err);
}

static tbert_status write_split(const char *dir, const tbert_labelled *L, const tbert_fit_data *d, tbert_error *err) {
    char *split = calloc((size_t)L->n + 1, 1);
    if (!split) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    for (int i = 0; i < d->n_train; i++) split[d->train_idx[i]] = 't';
    for (int i = 0; i < d->n_val; i++) split[d->val_idx[i]] = 'v';
    for (int i = 0; i < d->n_test; i++) split[d->test_idx[i]] = 'x';
    GString *s = g_string_new("row\tline\tsplit\tlabel\n");
    for (int i = 0; i < L->n; i++)
        g_string_append_printf(s, "%d\t%lld\t%s\t%s\n", i, (long long)L->line[i],
                               split[i] == 't' ? "train" : split[i] == 'v' ? "val" : "test", L->label[i]);
    char path[4200];
    snprintf(path, sizeof path, "%s/split.tsv", dir);
    tbert_status st = tbert_write_file_atomic(path, s->str, s->len, err);
    g_string_free(s, TRUE);
    free(split);
    return st;
}

static char *settings_json(const tbert_recipe *r, const tbert_hparams *hp, const tbert_train_opts *o, const char *dh) {
    tbert_recipe k = *r;
    k.threshold = 0; /* chosen by the run, not a setting */
    char *rj = tbert_recipe_to_json(&k);
    cJSON *s = cJSON_CreateObject();
    cJSON *rec = rj ? cJSON_Parse(rj) : NULL;
    free(rj);
    if (!s || !rec) {
        cJSON_Delete(s);
        cJSON_Delete(rec);
        return NULL;
    }
    cJSON_AddItemToObject(s, "recipe", rec);
    cJSON_AddStringToObject(s, "data_hash", dh);
    cJSON_AddNumberToObject(s, "hidden", hp->hidden);
    cJSON_AddNumberToObject(s, "dropout", round((double)hp->dropout * 1e6) / 1e6);
    cJSON_AddNumberToObject(s, "epochs", hp->epochs);
    cJSON_AddNumberToObject(s, "batch", hp->batch);
    cJSON_AddNumberToObject(s, "lr", hp->lr);
    cJSON_AddNumberToObject(s, "weight_decay", hp->weight_decay);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)hp->seed);
    cJSON_AddStringToObject(s, "seed", seed);
    cJSON_AddBoolToObject(s, "class_weights_auto", hp->class_weights_auto);
    cJSON_AddStringToObject(s, "threshold", hp->threshold);
    cJSON_AddNumberToObject(s, "val_fraction", o->val_fraction);
    cJSON_AddNumberToObject(s, "test_fraction", o->test_fraction);
    if (hp->cv_folds >= 2) cJSON_AddNumberToObject(s, "cv_folds", hp->cv_folds); /* only then: older runs resume as before */
    if (r->finetune.layers > 0) { /* only then, likewise: what a fine-tuning --resume must match */
        cJSON *ft = cJSON_AddObjectToObject(s, "finetune");
        cJSON_AddNumberToObject(ft, "layers", r->finetune.layers);
        cJSON_AddBoolToObject(ft, "embeddings", r->finetune.embeddings);
        cJSON_AddNumberToObject(ft, "encoder_lr", o->encoder_lr);
        cJSON_AddNumberToObject(ft, "epochs", o->finetune_epochs);
        cJSON_AddBoolToObject(ft, "dropout", o->finetune_dropout != 0);
        cJSON_AddStringToObject(ft, "head", tbert_ft_head_phase_name(o->finetune_head));
    }
    char *out = cJSON_PrintUnformatted(s);
    cJSON_Delete(s);
    return out;
}

/* training.json: what this head was trained from, so that `tbert learn` (src/learn.c) can retrain it with
 * the corrections added: the recipe, the model folder, the training paths (absolute) and every setting given
 * (-1 = the recipe's). The learned messages are not in it (they live in learned.jsonl). */
static cJSON *abs_paths(const char *const *p, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        char *rp = realpath(p[i], NULL);
        cJSON_AddItemToArray(a, cJSON_CreateString(rp ? rp : p[i]));
        free(rp);
    }
    return a;
}

static tbert_status write_manifest(const char *work, const tbert_train_opts *o, const char *rname, const char *model_dir,
                                   const char *dh, int n_docs, tbert_error *err) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    char *mrp = realpath(model_dir, NULL);
    cJSON_AddNumberToObject(j, "version", 1);
    cJSON_AddStringToObject(j, "recipe", rname);
    cJSON_AddStringToObject(j, "model", mrp ? mrp : model_dir);
    free(mrp);
    char *drp = o->data ? realpath(o->data, NULL) : NULL;
    if (o->data) cJSON_AddStringToObject(j, "data", drp ? drp : o->data);
    free(drp);
    cJSON_AddItemToObject(j, "ham", abs_paths(o->ham, o->n_ham));
    cJSON_AddItemToObject(j, "spam", abs_paths(o->spam, o->n_spam));
    cJSON_AddStringToObject(j, "data_hash", dh);
    cJSON_AddNumberToObject(j, "n_docs", n_docs);
    cJSON *s = cJSON_AddObjectToObject(j, "settings");
    const struct {
        const char *name;
        double v;
    } num[] = {{"pool", o->pool}, {"max_len", o->max_len}, {"layers", o->layers}, {"windows", o->windows},
               {"normalize", o->normalize}, {"lexical_dim", o->lexical_dim}, {"lexical_ngrams", o->lexical_ngrams},
               {"evidence_set", o->evidence_set}, {"evidence_dim", o->evidence_dim}, {"header_dim", o->header_dim},
               {"header_weight", o->header_weight}, {"hidden", o->hidden}, {"epochs", o->epochs}, {"batch", o->batch},
               {"lr", o->lr}, {"weight_decay", o->weight_decay}, {"dropout", o->dropout}, {"val_fraction", o->val_fraction},
               {"test_fraction", o->test_fraction}, {"cv_folds", o->cv_folds}, {"precision", (double)o->precision}};
    for (size_t k = 0; s && k < sizeof num / sizeof num[0]; k++) cJSON_AddNumberToObject(s, num[k].name, num[k].v);
    if (s && o->finetune != 0) { /* fine-tuning (only then: a frozen run's training.json is as before); learn retrains alike */
        cJSON_AddNumberToObject(s, "finetune", o->finetune);
        cJSON_AddNumberToObject(s, "encoder_lr", o->encoder_lr);
        cJSON_AddNumberToObject(s, "finetune_epochs", o->finetune_epochs);
        cJSON_AddNumberToObject(s, "finetune_dropout", o->finetune_dropout);
        cJSON_AddNumberToObject(s, "finetune_head", o->finetune_head);
    }
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    cJSON_AddStringToObject(s, "seed", seed);
    cJSON_AddBoolToObject(s, "class_weights_auto", o->class_weights_auto);
    if (o->positive) cJSON_AddStringToObject(s, "positive", o->positive);
    if (o->threshold) cJSON_AddStringToObject(s, "threshold", o->threshold);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    char *path = g_strdup_printf("%s/training.json", work);
    tbert_status st = tbert_write_file_atomic(path, txt, strlen(txt), err);
    g_free(path);
    free(txt);
    return st;
}

/* LEARNED/NAME when it holds at least one entry */
static char *learned_sub(const char *learned, const char *name) {
    if (!learned) return NULL;
    char *p = g_strdup_printf("%s/%s", learned, name);
    GDir *d = g_dir_open(p, 0, NULL);
    bool any = d && g_dir_read_name(d);
    if (d) g_dir_close(d);
    if (!any) {
        g_free(p);
        return NULL;
    }
    return p;
}

/* ---- the job ---- */
static tbert_status build_recipe(const tbert_train_opts *o, const char *name, tbert_recipe *r, tbert_error *err) {
    tbert_status st = tbert_recipe_preset(name, r, err);
    if (st) return st;
    if (o->pool >= 0) r->pool = (tbert_pool)o->pool;
    if (o->max_len > 0) r->max_len = o->max_len;
    if (o->layers > 0) r->layers = o->layers;
    if (o->windows > 0) r->windows = o->windows;
    if (o->normalize >= 0) r->normalize = o->normalize;
    if (o->lexical_dim >= 0) {
        r->lexical_dim = o->lexical_dim;
        if (!r->lexical_dim && r->evidence == TBERT_EVIDENCE_LEXICAL) r->evidence = TBERT_EVIDENCE_NONE;
    }
    if (o->lexical_ngrams > 0) r->lexical_ngrams = o->lexical_ngrams;
    if (o->evidence_set >= 0) r->evidence_set = o->evidence_set;
    if (o->evidence_dim > 0 && r->evidence != TBERT_EVIDENCE_NONE) {
        r->evidence = TBERT_EVIDENCE_BLOCK;
        r->evidence_dim = o->evidence_dim;
    } else if (o->evidence_dim == 0 && r->evidence == TBERT_EVIDENCE_BLOCK) {
        r->evidence = r->lexical_dim > 0 ? TBERT_EVIDENCE_LEXICAL : TBERT_EVIDENCE_NONE;
        r->evidence_dim = 0;
    }
    if (o->header_dim >= 0) {
        if (o->header_dim > 0 && r->header_dim == 0) r->header_weight = 1.0f;
        r->header_dim = o->header_dim;
    }
    if (o->header_weight > 0) r->header_weight = (float)o->header_weight;
    if (r->header_dim == 0) r->header_weight = 0;
    r->precision = o->precision;
    if (r->pool == TBERT_POOL_FLATTEN && r->windows != 1)
        return tbert_fail(err, TBERT_E_ARG, "--pool flatten cannot average %d windows (use --windows 1)", r->windows);
    return TBERT_OK;
}

static tbert_status check_out_dir(const char *dir, tbert_error *err) {
    tbert_status st = tbert_mkdirs(dir, err);
    if (st) return st;
    if (access(dir, W_OK) != 0)
        return tbert_fail(err, TBERT_E_IO, "%s: output folder is not writable", dir);
    return TBERT_OK;
}

/* The held-out scores the threshold was chosen on (out-of-fold, else validation) into work/oof.safetensors, and
 * the operating point there with its intervals into res (metrics.json); one stderr line when the held-out ham
 * are too few for the rule's false-positive target. Nothing for multi-class heads or without a held-out part. */
static tbert_status keep_heldout_scores(const char *work, const tbert_fit_data *d, const tbert_hparams *hp, const tbert_recipe *r,
                                        tbert_train_result *res, bool quiet, tbert_error *err) {
    const tbert_fit_result *f = &res->fit;
    const int *idx = f->n_oof ? d->train_idx : d->val_idx;
    int n = f->n_oof ? f->n_oof : d->n_val;
    if (r->positive < 0 || r->n_labels != 2 || n == 0 || !f->val_probs) return TBERT_OK;
    tbert_oof o = {.n = n, .threshold = f->threshold};
    snprintf(o.source, sizeof o.source, "%s", f->n_oof ? "out-of-fold" : "validation");
    snprintf(o.rule, sizeof o.rule, "%s", hp->threshold ? hp->threshold : "f1");
    o.score = tbert_malloc_array((size_t)n, sizeof(float));
    o.is_pos = tbert_malloc_array((size_t)n, sizeof(bool));
    tbert_status st = TBERT_OK;
    if (!o.score || !o.is_pos) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    for (int i = 0; !st && i < n; i++) {
        o.score[i] = f->val_probs[(size_t)i * 2 + r->positive];
        o.is_pos[i] = d->y[idx[i]] == r->positive;
    }
    if (!st) st = tbert_oof_save(work, &o, r, err);
    if (!st) {
        tbert_operating_point_compute(n, o.score, o.is_pos, f->threshold, o.rule, &res->op);
        snprintf(res->op_source, sizeof res->op_source, "%s", o.source);
        res->has_op = true;
        if (res->op.warning[0]) fprintf(stderr, "tbert: warning: %s\n", res->op.warning);
        else if (!quiet)
            fprintf(stderr, "tbert: %s operating point: false-positive rate %.4g [%.4g, %.4g], recall %.4g [%.4g, %.4g] (95%% intervals)\n",
                    o.source, res->op.fpr, res->op.fpr_lo, res->op.fpr_hi, res->op.recall, res->op.recall_lo, res->op.recall_hi);
    }
    tbert_oof_free(&o);
    return st;
}

/* DIR/learn.state (src/learn_state.c): the training rows, their folds and the fold heads, for a warm-started
 * `tbert learn`; a row read from LEARNED/{ham,spam}/SHA.eml carries its correction's SHA as its origin */
static tbert_status keep_learn_state(const char *work, const tbert_fit_data *d, const tbert_labelled *L, const char *learned,
                                     const tbert_fit_result *f, const char *dh, tbert_error *err) {
    uint8_t *origin = tbert_calloc_array((size_t)d->n_train, 32);
    if (!origin) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    size_t ll = learned ? strlen(learned) : 0;
    for (int i = 0; learned && L->name && i < d->n_train; i++) {
        const char *nm = L->name[d->train_idx[i]];
        if (!nm || strncmp(nm, learned, ll) || nm[ll] != '/') continue;
        const char *base = strrchr(nm, '/') + 1;
        if (strlen(base) != 68 || strcmp(base + 64, ".eml")) continue;
        for (int b = 0; b < 32; b++) {
            unsigned v;
            if (sscanf(base + 2 * b, "%2x", &v) != 1) break;
            origin[(size_t)i * 32 + b] = (uint8_t)v;
        }
    }
    tbert_status st = tbert_learn_state_save(work, d->X, d->y, d->train_idx, d->n_train, f->fold, origin, f->fold_heads,
                                             f->n_fold_heads, dh, err);
    free(origin);
    return st;
}

tbert_status tbert_train_run(const tbert_train_opts *o, tbert_train_result *res, tbert_error *err) {
    memset(res, 0, sizeof *res);
    double t0 = tbert_now();
    const char *rname = o->recipe ? o->recipe : (o->data ? "text" : "mail");
    /* settings left at -1 take the recipe's defaults: mail chooses its threshold and epoch count by 5-fold
     * cross-fitting on all the training mail (a low-FPR threshold needs many held-out ham: a 20% validation
     * split of 2,000 ham has 400, and one odd message there moved the cut; benchmarks/RESULTS.md) and keeps no
     * test part (the training mail is all for the head; benchmarks test elsewhere) */
    tbert_train_opts resolved = *o;
    bool mail_defaults = !strcmp(rname, "mail");
    bool cv_default = resolved.cv_folds < 0;
    if (resolved.cv_folds < 0) resolved.cv_folds = mail_defaults && resolved.val_fraction <= 0 ? 5 : 0;
    if (resolved.cv_folds == 1) resolved.cv_folds = 0;
    if (resolved.val_fraction < 0) resolved.val_fraction = resolved.cv_folds >= 2 ? 0.0 : mail_defaults ? 0.2 : 0.1;
    if (resolved.test_fraction < 0) resolved.test_fraction = mail_defaults ? 0.0 : 0.2;
    o = &resolved;
    if (o->cv_folds >= 2 && o->val_fraction > 0)
        return tbert_fail(err, TBERT_E_ARG, "train: --cv %d takes its folds from the training split; give --val-fraction 0 or --cv 0",
                          o->cv_folds);
    if (!o->out_dir) return tbert_fail(err, TBERT_E_ARG, "train: --out CKPT_DIR is required");
    if (o->finetune != 0 && o->export_features) /* the rows' dense block comes from layers not trained yet */
        return tbert_fail(err, TBERT_E_ARG, "train: --export-features writes frozen features; it does not go with --finetune");
    if (!o->data && o->n_ham + o->n_spam == 0) return tbert_fail(err, TBERT_E_ARG, "train: give --data FILE or --ham/--spam");
    if (o->data && o->n_ham + o->n_spam > 0) return tbert_fail(err, TBERT_E_ARG, "train: --data and --ham/--spam exclude each other");
    if (o->data && o->n_ham + o->n_spam == 0 && !tbert_is_regular_file(o->data))
        return tbert_fail(err, TBERT_E_IO, "%s: no such file", o->data);
    tbert_recipe *r = &res->recipe;
    tbert_status st = build_recipe(o, rname, r, err);
    if (st) return st;
    tbert_hparams hp;
    tbert_hparams_preset(rname, &hp);
    if (o->hidden >= 0) hp.hidden = o->hidden;
    if (o->epochs > 0) hp.epochs = o->epochs;
    if (o->batch > 0) hp.batch = o->batch;
    if (o->lr > 0) hp.lr = o->lr;
    if (o->weight_decay >= 0) hp.weight_decay = o->weight_decay;
    if (o->dropout >= 0) hp.dropout = (float)o->dropout;
    hp.seed = o->seed;
    hp.class_weights_auto = o->class_weights_auto;
    hp.cv_folds = o->cv_folds;
    if (o->threshold) hp.threshold = o->threshold;
    if (o->quiet) hp.progress = TBERT_PROGRESS_OFF;
    st = tbert_threshold_parse(hp.threshold, err);
    if (st) return st;
    st = check_out_dir(o->out_dir, err);
    if (st) return st;

    tbert_labelled L = {0};
    tbert_model *m = NULL;
    tbert_encoder *enc = NULL;
    tbert_featurizer *fz = NULL;
    tbert_rows X = {0};
    tbert_store *store = NULL;
    int *y = NULL, *tr = NULL, *va = NULL, *te = NULL;
    char *settings = NULL, *work_report = NULL;
    int skipped = 0;
    tbert_ckpt_plan plan = {0};
    bool planned = false;
    tbert_ft_opts fto = {0};
    tbert_ft_data *ftd = NULL;
    char *lham = learned_sub(o->learned_dir, "ham"), *lspam = learned_sub(o->learned_dir, "spam");
    if (o->data) st = tbert_labelled_read_table(o, &L, err);
    else {
        st = tbert_labelled_read_mail(o->ham, o->n_ham, "ham", &L, &skipped, err);
        if (!st && lham) st = tbert_labelled_read_mail((const char *const *)&lham, 1, "ham", &L, &skipped, err);
        if (!st) st = tbert_labelled_read_mail(o->spam, o->n_spam, "spam", &L, &skipped, err);
        if (!st && lspam) st = tbert_labelled_read_mail((const char *const *)&lspam, 1, "spam", &L, &skipped, err);
    }
    if (st) goto done;
    const char *src = o->data ? o->data : "--ham/--spam";
    if (L.n == 0) {
        st = tbert_fail(err, TBERT_E_ARG, "%s: no examples to train on", src);
        goto done;
    }
    y = tbert_malloc_array((size_t)L.n, sizeof(int));
    if (!y) {
        st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        goto done;
    }
    st = discover_labels(&L, o->positive, r, y, src, err);
    if (st) goto done;
    char model_dir[4096];
    st = tbert_resolve_model_dir(o->model, model_dir, sizeof model_dir, err);
    if (!st) st = tbert_model_load(model_dir, &m, err);
    if (!st) st = tbert_recipe_bind_model(r, m, err);
    if (!st && o->finetune != 0) { /* --finetune K: the top K of the layers in use (recipe_version 2's "finetune") */
        int k = o->finetune == TBERT_FINETUNE_ALL ? r->layers : o->finetune;
        if (k < 1 || k > r->layers)
            st = tbert_fail(err, TBERT_E_ARG, "--finetune %d: the recipe uses %d layers (give 1..%d or all)", k, r->layers, r->layers);
        r->finetune.layers = k;
        r->finetune.embeddings = o->finetune == TBERT_FINETUNE_ALL;
        snprintf(r->finetune.base_model_sha256, sizeof r->finetune.base_model_sha256, "%s", m->weights_sha256);
    }
    if (st) goto done;
    tbert_encoder_opts eo = tbert_encoder_default_opts();
    eo.device = o->device;
    eo.precision = o->precision;
    eo.threads = o->threads;
    eo.layers = r->layers;
    eo.quiet = o->quiet;
    st = tbert_encoder_create(m, &eo, &enc, err);
    if (!st) st = tbert_featurizer_create(r, m, enc, &fz, err);
    if (!st && r->finetune.layers > 0) tbert_featurizer_skip_dense(fz); /* the trained layers make the dense block */
    if (st) goto done;
    /* the head trains where the encoder runs */
    if (tbert_encoder_is_cuda(enc)) hp.cuda_device = o->device.kind == TBERT_DEVICE_CUDA ? o->device.index : 0;
    size_t dim = tbert_featurizer_dim(fz);
    st = tbert_featurizer_rows_init(fz, &X, err);
    if (st) goto done;
    char docs_hash[65], dh[65];
    tbert_docs_hash(L.n, L.docs, docs_hash);
    data_hash(&L, docs_hash, dh);
    if (!o->quiet)
        fprintf(stderr, "tbert: %d examples (%s), %d labels, recipe %s: %s pooling, max_len %d, %d window(s), %zu features\n",
                L.n, src, r->n_labels, r->name, tbert_pool_name(r->pool), r->max_len, r->windows, dim);
    double tf = tbert_now();
    /* the row store: a document encoded by an earlier run (same text, model and dense-shaping recipe) is not
     * encoded again; a store that cannot be opened costs time, not the run */
    tbert_error serr;
    if (tbert_store_open(NULL, &store, &serr)) fprintf(stderr, "tbert: warning: no feature store: %s\n", serr.msg);
    tbert_feature_stats fs;
    st = tbert_featurize_stored(fz, store, L.n, L.docs, o->quiet ? NULL : "encode", &X, &fs, err);
    res->seconds_features = tbert_now() - tf;
    if (st) goto done;
    res->cache_hit = fs.encoded == 0;
    res->docs_encoded = fs.encoded;
    if (!o->quiet)
        fprintf(stderr, "tbert: features: %d documents, %d encoded, %d from the store%s (%.2f s, %.1f MB of rows)\n", fs.docs,
                fs.encoded, fs.from_store, fs.corrupt ? " (damaged entries recomputed)" : "", res->seconds_features,
                (double)tbert_rows_bytes(&X) / 1e6);
    if (o->export_features) {
        size_t el = strlen(o->export_features);
        bool npz = el > 4 && !strcmp(o->export_features + el - 4, ".npz");
        int32_t *lab = npz ? tbert_malloc_array((size_t)L.n, sizeof(int32_t)) : NULL;
        if (npz && !lab) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        for (int i = 0; lab && i < L.n; i++) lab[i] = y[i];
        if (!st) st = npz ? tbert_rows_write_npz(o->export_features, &X, lab, err) : write_npy(o->export_features, &X, err);
        free(lab);
        if (st) goto done;
    }
    if (o->finetune != 0) { /* the top K layers train: the frozen layers below run once here (src/finetune.c) */
        int from_store = 0;
        fto.k = r->finetune.layers;
        fto.embeddings = r->finetune.embeddings;
        fto.encoder_lr = o->encoder_lr;
        fto.epochs = o->finetune_epochs;
        fto.warmup_fraction = 0.1;
        fto.hidden_dropout = fto.attn_dropout = o->finetune_dropout ? 0.1f : 0.0f;
        fto.clip_norm = 1.0;
        fto.head_phase = o->finetune_head;
        fto.enc = eo;
        fto.quiet = o->quiet;
        st = tbert_ft_data_build(r, m, fz, L.n, L.docs, &fto, store, &ftd, &from_store, err);
        if (st) goto done;
        res->docs_encoded = r->finetune.layers < r->layers ? L.n - from_store : 0;
        res->cache_hit = res->docs_encoded == 0;
    }
    int ntr, nva, nte;
    st = tbert_split_stratified(L.n, y, r->n_labels, o->val_fraction, o->test_fraction, o->seed, &tr, &ntr, &va, &nva, &te, &nte,
                                err);
    if (st) goto done;
    if (cv_default && hp.cv_folds >= 2) { /* the recipe's folds need K examples of each class; else no folds */
        int least = ntr;
        for (int c = 0; c < r->n_labels; c++) {
            int cnt = 0;
            for (int i = 0; i < ntr; i++) cnt += y[tr[i]] == c;
            if (cnt < least) least = cnt;
        }
        if (least < hp.cv_folds) {
            if (!o->quiet)
                fprintf(stderr, "tbert: a class has %d training examples, too few for %d-fold cross-fitting: training without it\n",
                        least, hp.cv_folds);
            hp.cv_folds = 0;
        }
    }
    tbert_fit_data d = {.n_classes = r->n_labels, .positive = r->positive, .dim = dim, .X = &X, .y = y, .n_train = ntr,
                        .n_val = nva, .n_test = nte, .train_idx = tr, .val_idx = va, .test_idx = te};
    st = tbert_ckpt_plan_open(o->out_dir, o->resume, &plan, err);
    if (st) goto done;
    planned = true;
    st = write_split(plan.work, &L, &d, err);
    if (st) goto done;
    settings = settings_json(r, &hp, o, dh);
    if (!settings) {
        st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        goto done;
    }
    tbert_fit_ckpt ck = {.out_dir = plan.work, .recipe = *r, .resume = plan.resume, .seed = o->seed, .settings_json = settings};
    memcpy(ck.data_hash, dh, sizeof dh);
    if (!o->quiet)
        fprintf(stderr, "tbert: training a %s head (%s) on %d examples, %d validation%s, %d test\n",
                hp.hidden ? "MLP" : "linear", r->positive >= 0 ? "binary" : "multi-class", ntr, nva,
                hp.cv_folds >= 2 ? " (cross-fitting instead)" : "", nte);
    if (ftd && !o->quiet)
        fprintf(stderr, "tbert: fine-tuning the top %d of %d layers%s with the head: %d epochs, encoder lr %g, head lr %g, warm-up 10%%, "
                        "dropout %s, head phase %s\n", r->finetune.layers, r->layers, r->finetune.embeddings ? " and the embeddings" : "",
                o->finetune_epochs, o->encoder_lr, hp.lr, o->finetune_dropout ? "0.1" : "off", tbert_ft_head_phase_name(o->finetune_head));
    st = ftd ? tbert_fit_finetune(&d, &hp, &fto, m, ftd, &ck, &res->fit, err) : tbert_fit(&d, &hp, &ck, &res->fit, err);
    if (st) goto done;
    r->threshold = res->fit.threshold;
    res->n_docs = L.n;
    res->seconds_total = tbert_now() - t0;
    st = keep_heldout_scores(plan.work, &d, &hp, r, res, o->quiet, err);
    if (!st) st = tbert_train_metrics_write(plan.work, res, r, err);
    work_report = g_strdup_printf("%s/report.html", plan.work);
    tbert_fit_data dr = d; /* cross-fitting: the out-of-fold view is the report's validation */
    if (res->fit.n_oof > 0) {
        dr.val_idx = d.train_idx;
        dr.n_val = d.n_train;
    }
    if (!st) { /* names for the report: the messages' paths, a table's FILE:LINE */
        char **names = tbert_calloc_array((size_t)L.n, sizeof *names);
        for (int i = 0; names && i < L.n; i++)
            names[i] = L.name && L.name[i] ? g_strdup(L.name[i])
                                           : g_strdup_printf("%s:%lld", o->data ? o->data : "item", (long long)L.line[i]);
        tbert_report_info info = {(const char *const *)names, o->command_line};
        st = tbert_report_write_ex(work_report, &res->fit, &dr, r, settings, &info, err);
        for (int i = 0; names && i < L.n; i++) g_free(names[i]);
        free(names);
    }
    if (!st && res->fit.n_fold_heads) st = keep_learn_state(plan.work, &d, &L, o->learned_dir, &res->fit, dh, err);
    if (!st) st = write_manifest(plan.work, o, rname, model_dir, dh, L.n, err);
    if (!st) st = tbert_ckpt_plan_commit(o->out_dir, &plan, err);
    snprintf(res->report_path, sizeof res->report_path, "%s/report.html", o->out_dir);
done:
    if (st && planned) tbert_ckpt_plan_failed(o->out_dir, &plan, err);
    tbert_ckpt_plan_free(&plan);
    g_free(work_report);
    free(settings);
    free(tr);
    free(va);
    free(te);
    tbert_rows_free(&X);
    tbert_ft_data_free(ftd);
    tbert_store_close(store);
    free(y);
    tbert_featurizer_free(fz);
    tbert_encoder_free(enc);
    tbert_model_free(m);
    tbert_labelled_free(&L);
    g_free(lham);
    g_free(lspam);
    return st;
}
