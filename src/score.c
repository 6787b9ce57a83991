/* tbert score's pipeline. One reader thread enumerates items (mailinput.c) into a ring of C slots; N parse
 * workers turn claimed slots into docs (MIME decoding, Subject + body, header evidence) and tokenize them
 * (document -> token ids: tbert_featurizer_tokenize); the calling thread takes contiguous parsed slots in input
 * order, turns their token ids into encoder batches and rows and classifies them a batch at a time
 * (tbert_featurize_rows_ids, then the head) and writes one record per item, flushed with one write() each, in
 * input order. The ring bounds memory: the reader
 * waits when it is C items ahead of the writer. One mutex + one condition variable guard the ring; all heavy
 * work (reading, parsing, encoding) happens outside the lock. The records are formatted in src/score_output.c,
 * --resume reads the existing output in src/score_resume.c. */
#include "tbert/score.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "score_internal.h"
#include "tbert/fileio.h"
#include "tbert/finetune.h"
#include "tbert/progress.h"

uint64_t tbert_kill_at_record(void) {
    const char *s = getenv("TBERT_TEST_KILL_AT");
    if (!s || strncmp(s, "record:", 7)) return 0;
    return strtoull(s + 7, NULL, 10);
}

/* ---- setup --------------------------------------------------------------- */

tbert_status tbert_score_ctx_open(const char *model, const char *head, const char *device, int threads, int batch, bool quiet,
                                  tbert_score_ctx *ctx, tbert_error *err) {
    memset(ctx, 0, sizeof *ctx);
    char dir[4096];
    tbert_status st = tbert_resolve_model_dir(model, dir, sizeof dir, err);
    tbert_encoder_opts eo = tbert_encoder_default_opts();
    if (!st && device) st = tbert_device_parse(device, &eo.device, err);
    if (!st) st = tbert_model_load(dir, &ctx->model, err);
    if (!st) st = tbert_classifier_load(head, ctx->model, &ctx->clf, err);
    if (!st) st = tbert_model_apply_finetune(ctx->model, head, tbert_classifier_recipe(ctx->clf), err);
    if (!st) {
        const tbert_recipe *r = tbert_classifier_recipe(ctx->clf);
        eo.layers = r->layers;
        eo.precision = r->precision;
        eo.threads = threads;
        eo.batch = batch;
        eo.quiet = quiet;
        st = tbert_encoder_create(ctx->model, &eo, &ctx->enc, err);
        if (!st) st = tbert_featurizer_create(r, ctx->model, ctx->enc, &ctx->fz, err);
    }
    if (st) tbert_score_ctx_close(ctx);
    return st;
}

void tbert_score_ctx_close(tbert_score_ctx *ctx) {
    if (ctx->fz) tbert_featurizer_free(ctx->fz);
    if (ctx->enc) tbert_encoder_free(ctx->enc);
    if (ctx->clf) tbert_classifier_free(ctx->clf);
    if (ctx->model) tbert_model_free(ctx->model);
    memset(ctx, 0, sizeof *ctx);
}

/* ---- the ring ------------------------------------------------------------ */

enum { SLOT_FREE = 0, SLOT_READ, SLOT_PARSED };

typedef struct {
    int state;
    tbert_input_item item;
    tbert_score_doc doc; /* what the parse worker made of it */
    tbert_i32vec ids;    /* the doc's token ids, when tokenized (then doc.text is freed) */
    bool tokenized;
} slot;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    slot *ring;
    uint64_t cap;
    uint64_t n_read, n_parse, n_done; /* next seq to fill / to parse / to write */
    bool reader_done, abort;
    uint64_t bytes_done, bytes_total;
    uint64_t skipped; /* reader thread only until joined */
    double parse_seconds, tokenize_seconds;
    const tbert_featurizer *fz; /* the workers only tokenize with it (thread-safe) */
    tbert_inputs *in;
    GHashTable *done;
    tbert_error reader_err;
    bool reader_failed;
} pipeline;

static void slot_clear(slot *s) {
    tbert_input_item_free(&s->item);
    free(s->doc.text);
    free(s->doc.evidence);
    free(s->doc.id);
    free(s->doc.error);
    tbert_i32vec_free(&s->ids);
    memset(s, 0, sizeof *s);
}

/* tbert_input_opts.skip: the item is in the existing output (called on the reader thread only) */
static bool skip_done(void *ctx, const char *source, uint64_t offset) {
    pipeline *p = ctx;
    if (g_hash_table_size(p->done) == 0) return false;
    bool seen = tbert_score_take_done(p->done, source, offset);
    if (seen) p->skipped++;
    return seen;
}

static void *reader_main(void *arg) {
    pipeline *p = arg;
    for (;;) {
        tbert_input_item item;
        tbert_error e;
        int r = tbert_inputs_next(p->in, &item, &e);
        uint64_t bd, bt;
        tbert_inputs_progress(p->in, &bd, &bt);
        if (r <= 0) {
            pthread_mutex_lock(&p->mu);
            if (r < 0) {
                p->reader_failed = true;
                p->reader_err = e;
            }
            p->bytes_done = bd;
            p->reader_done = true;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        /* items the reader could not skip unread (error items, whole-file reads) are checked here */
        if (p->done && g_hash_table_size(p->done) > 0) {
            if (tbert_score_take_done(p->done, item.source, item.offset)) {
                tbert_input_item_free(&item);
                p->skipped++;
                continue;
            }
        }
        pthread_mutex_lock(&p->mu);
        while (p->n_read - p->n_done >= p->cap && !p->abort) pthread_cond_wait(&p->cv, &p->mu);
        if (p->abort) {
            pthread_mutex_unlock(&p->mu);
            tbert_input_item_free(&item);
            pthread_mutex_lock(&p->mu);
            p->reader_done = true;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        slot *s = &p->ring[p->n_read % p->cap];
        s->item = item;
        s->state = SLOT_READ;
        p->n_read++;
        p->bytes_done = bd;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

void tbert_score_parse_item(tbert_input_item *it, tbert_score_doc *s) {
    memset(s, 0, sizeof *s);
    if (it->error) {
        s->error = tbert_strdup(it->error);
        return;
    }
    if (!it->is_message) {
        s->text = tbert_strndup(it->text ? it->text : "", it->text_len);
        s->len = it->text_len;
        if (!s->text) s->error = tbert_strdup("out of memory");
        return;
    }
    tbert_message m;
    tbert_error e;
    if (tbert_message_parse(it->raw, it->raw_len, it->source, &m, &e) != TBERT_OK) {
        /* the source and offset are in the record already; keep only the problem */
        const char *msg = e.msg;
        size_t sl = strlen(it->source);
        if (!strncmp(msg, it->source, sl) && msg[sl] == ':' && msg[sl + 1] == ' ') msg += sl + 2;
        s->error = tbert_strdup(msg);
        return;
    }
    tbert_mail_doc doc;
    if (tbert_mail_document(&m, &doc, &e) == TBERT_OK) {
        s->text = doc.text;
        s->len = doc.len;
        s->evidence = doc.evidence;
    } else {
        s->error = tbert_strdup("out of memory");
    }
    s->id = m.message_id;
    m.message_id = NULL;
    tbert_message_free(&m);
    /* the raw bytes are not needed any more: free them early (flat memory) */
    free(it->raw);
    it->raw = NULL;
}

/* The featurizer's first stage, in the worker: document -> token ids. The text is not needed after that (flat
 * memory). A failure (out of memory) leaves the slot untokenized: the scoring thread then tokenizes it and
 * meets the failure as before. */
static void tokenize_slot(const tbert_featurizer *fz, slot *s) {
    if (s->doc.error) return;
    tbert_doc d = {s->doc.text, s->doc.len, s->doc.evidence};
    tbert_error e;
    if (tbert_featurizer_tokenize(fz, &d, &s->ids, &e) != TBERT_OK) return;
    s->tokenized = true;
    free(s->doc.text);
    s->doc.text = NULL;
}

static void *worker_main(void *arg) {
    pipeline *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->n_parse == p->n_read && !p->reader_done && !p->abort) pthread_cond_wait(&p->cv, &p->mu);
        if (p->abort || (p->n_parse == p->n_read && p->reader_done)) break;
        slot *s = &p->ring[p->n_parse % p->cap];
        p->n_parse++;
        pthread_mutex_unlock(&p->mu);
        double t0 = tbert_now();
        tbert_score_parse_item(&s->item, &s->doc);
        double t1 = tbert_now();
        tokenize_slot(p->fz, s);
        double t2 = tbert_now();
        pthread_mutex_lock(&p->mu);
        p->parse_seconds += t1 - t0;
        p->tokenize_seconds += t2 - t1;
        s->state = SLOT_PARSED;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- the scoring stage --------------------------------------------------- */

typedef struct {
    const tbert_classifier *c;
    tbert_featurizer *fz;
    size_t dim;
    int batch;
    tbert_rows rows, one; /* the batch's rows; one doc's row (a failed batch retried doc by doc) */
    tbert_rows *export;   /* --export-features: every scored item's row, in record order (NULL: off) */
    float *prob;
    int *label_idx, *tokens;
    tbert_doc *docs;
    tbert_i32vec *ids; /* per doc of the batch: its slot's token ids (a view) */
    int *doc_slot;
    double t_feat, t_head;
} scorer;

/* Featurizes (token ids -> encoder batches -> rows) and classifies the docs of slots [0, k); a batch that fails
 * is retried doc by doc so that one bad doc becomes one error record. Fatal errors (memory, device) stop the
 * run. */
static tbert_status score_batch(scorer *sc, slot **slots, int k, tbert_error *err) {
    int n = 0;
    tbert_error e;
    double t0 = tbert_now();
    for (int i = 0; i < k; i++) {
        slot *s = slots[i];
        if (s->doc.error) continue;
        sc->docs[n] = (tbert_doc){s->doc.text, s->doc.len, s->doc.evidence};
        if (!s->tokenized) { /* the worker could not: the featurizer's own tokenization, its failure fatal as before */
            tbert_status st = tbert_featurizer_tokenize(sc->fz, &sc->docs[n], &s->ids, &e);
            if (st) {
                *err = e;
                return st;
            }
            s->tokenized = true;
        }
        sc->ids[n] = s->ids;
        sc->doc_slot[n++] = i;
    }
    if (n == 0) return TBERT_OK;
    tbert_rows_clear(&sc->rows);
    tbert_status st = tbert_featurize_rows_ids(sc->fz, n, sc->docs, sc->ids, &sc->rows, sc->tokens, &e);
    double t1 = tbert_now();
    if (st == TBERT_OK) st = tbert_classifier_predict_rows(sc->c, &sc->rows, sc->prob, sc->label_idx, &e);
    sc->t_feat += t1 - t0;
    sc->t_head += tbert_now() - t1;
    for (int j = 0; st == TBERT_OK && sc->export && j < n; j++) st = tbert_rows_append_row(sc->export, &sc->rows, j, &e);
    if (st == TBERT_OK) return TBERT_OK;
    if (st == TBERT_E_NOMEM || st == TBERT_E_CUDA || st == TBERT_E_INTERNAL || st == TBERT_E_MISMATCH || n == 1) {
        if (n == 1 && st != TBERT_E_NOMEM && st != TBERT_E_CUDA && st != TBERT_E_INTERNAL && st != TBERT_E_MISMATCH) {
            slots[sc->doc_slot[0]]->doc.error = tbert_strdup(e.msg);
            return TBERT_OK;
        }
        *err = e;
        return st;
    }
    for (int j = 0; j < n; j++) {
        tbert_rows_clear(&sc->one);
        tbert_status s1 = tbert_featurize_rows_ids(sc->fz, 1, &sc->docs[j], &sc->ids[j], &sc->one, &sc->tokens[j], &e);
        if (s1 == TBERT_OK) s1 = tbert_classifier_predict_rows(sc->c, &sc->one, &sc->prob[j], &sc->label_idx[j], &e);
        if (s1 == TBERT_OK && sc->export) s1 = tbert_rows_append_row(sc->export, &sc->one, 0, &e);
        if (s1 == TBERT_E_NOMEM || s1 == TBERT_E_CUDA || s1 == TBERT_E_INTERNAL) {
            *err = e;
            return s1;
        }
        if (s1 != TBERT_OK) slots[sc->doc_slot[j]]->doc.error = tbert_strdup(e.msg);
    }
    return TBERT_OK;
}

tbert_status tbert_score_run(const tbert_classifier *c, tbert_featurizer *fz, const char *const *inputs, int n_inputs,
                             const tbert_score_opts *opts, tbert_score_stats *stats, tbert_error *err) {
    memset(stats, 0, sizeof *stats);
    double t0 = tbert_now();
    const tbert_recipe *rec = tbert_classifier_recipe(c);
    int threads = opts->threads > 0 ? opts->threads : tbert_num_cores();
    int batch = opts->batch > 0 ? opts->batch : 64;
    bool to_stdout = !opts->out_path || !strcmp(opts->out_path, "-");
    const char *out_name = to_stdout ? "stdout" : opts->out_path;

    /* the output */
    GHashTable *done = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    bool existed = false, has_header = false;
    tbert_status st = TBERT_OK;
    int fd = STDOUT_FILENO;
    if (!to_stdout) {
        if (opts->resume) {
            uint64_t n_done = 0;
            st = tbert_score_load_done(opts->out_path, opts->format, done, &n_done, &existed, &has_header, err);
            if (st) {
                g_hash_table_destroy(done);
                return st;
            }
            if (!existed) fprintf(stderr, "tbert score: --resume: %s holds no records yet, starting fresh\n", opts->out_path);
            else
                fprintf(stderr, "tbert score: --resume: %llu records already in %s are skipped\n", (unsigned long long)n_done,
                        opts->out_path);
        }
        fd = open(opts->out_path, O_WRONLY | O_CREAT | O_CLOEXEC | (opts->resume ? O_APPEND : O_TRUNC), 0644);
        if (fd < 0) {
            g_hash_table_destroy(done);
            return tbert_fail(err, TBERT_E_IO, "%s: cannot open for writing: %s", opts->out_path, strerror(errno));
        }
    } else if (opts->resume) {
        fprintf(stderr, "tbert score: --resume: the output is stdout, nothing to resume from; starting fresh\n");
    }
    stats->resumed = existed;
    if (opts->format == TBERT_SCORE_CSV && !has_header)
        st = tbert_score_write_all(fd, TBERT_SCORE_CSV_HEADER, sizeof TBERT_SCORE_CSV_HEADER - 1, out_name, err);

    pipeline p = {0};
    scorer sc = {0};
    sc.c = c;
    sc.fz = fz;
    sc.dim = tbert_featurizer_dim(fz);
    sc.batch = batch;
    tbert_rows exported = {0};
    if (st == TBERT_OK) st = tbert_featurizer_rows_init(fz, &sc.rows, err);
    if (st == TBERT_OK) st = tbert_featurizer_rows_init(fz, &sc.one, err);
    if (st == TBERT_OK && opts->export_features) {
        st = tbert_featurizer_rows_init(fz, &exported, err);
        sc.export = &exported;
    }
    double t_write = 0, t_wait = 0;
    p.cap = (uint64_t)batch * 2 + (uint64_t)threads * 4;
    p.ring = tbert_calloc_array(p.cap, sizeof *p.ring);
    sc.prob = tbert_malloc_array((size_t)batch, sizeof *sc.prob);
    sc.label_idx = tbert_malloc_array((size_t)batch, sizeof *sc.label_idx);
    sc.tokens = tbert_malloc_array((size_t)batch, sizeof *sc.tokens);
    sc.docs = tbert_malloc_array((size_t)batch, sizeof *sc.docs);
    sc.ids = tbert_malloc_array((size_t)batch, sizeof *sc.ids);
    sc.doc_slot = tbert_malloc_array((size_t)batch, sizeof *sc.doc_slot);
    slot **batch_slots = tbert_malloc_array((size_t)batch, sizeof *batch_slots);
    if (st == TBERT_OK && (!p.ring || !sc.prob || !sc.label_idx || !sc.tokens || !sc.docs || !sc.ids || !sc.doc_slot || !batch_slots))
        st = tbert_fail(err, TBERT_E_NOMEM, "score: out of memory for batches of %d", batch);
    tbert_input_opts iopts = opts->input;
    if (g_hash_table_size(done) > 0) {
        iopts.skip = skip_done;
        iopts.skip_ctx = &p;
    }
    p.done = done;
    p.fz = fz;
    if (st == TBERT_OK) st = tbert_inputs_open(inputs, n_inputs, &iopts, &p.in, err);

    pthread_t reader, *workers = NULL;
    int n_workers = 0;
    bool reader_started = false;
    if (st == TBERT_OK) {
        tbert_inputs_progress(p.in, NULL, &p.bytes_total);
        pthread_mutex_init(&p.mu, NULL);
        pthread_cond_init(&p.cv, NULL);
        workers = tbert_calloc_array((size_t)threads, sizeof *workers);
        if (!workers || pthread_create(&reader, NULL, reader_main, &p) != 0) {
            st = tbert_fail(err, TBERT_E_NOMEM, "score: cannot start the reader thread");
        } else {
            reader_started = true;
            for (int i = 0; i < threads; i++) {
                if (pthread_create(&workers[i], NULL, worker_main, &p) != 0) break;
                n_workers++;
            }
            if (n_workers == 0) st = tbert_fail(err, TBERT_E_NOMEM, "score: cannot start parse threads");
        }
    }

    tbert_progress *prog = NULL;
    if (st == TBERT_OK && opts->progress)
        prog = tbert_progress_start("score", (p.bytes_total + 999999) / 1000000, "MB", TBERT_PROGRESS_AUTO);
    GString *line = g_string_new("");
    while (st == TBERT_OK) {
        /* wait for a full batch of parsed items in order, or the end */
        double tw0 = tbert_now();
        pthread_mutex_lock(&p.mu);
        int k;
        for (;;) {
            k = 0;
            while ((uint64_t)k < (uint64_t)batch && p.n_done + (uint64_t)k < p.n_read &&
                   p.ring[(p.n_done + (uint64_t)k) % p.cap].state == SLOT_PARSED)
                k++;
            bool all_read_parsed = p.reader_done && p.n_done + (uint64_t)k == p.n_read;
            if (k == batch || (all_read_parsed && k > 0) || (p.reader_done && p.n_done == p.n_read)) break;
            /* a partial batch also goes when the ring is full (the reader cannot add more) */
            if (k > 0 && p.n_read - p.n_done >= p.cap && k == (int)(p.n_read - p.n_done)) break;
            pthread_cond_wait(&p.cv, &p.mu);
        }
        for (int i = 0; i < k; i++) batch_slots[i] = &p.ring[(p.n_done + (uint64_t)i) % p.cap];
        uint64_t bytes_done = p.bytes_done;
        pthread_mutex_unlock(&p.mu);
        t_wait += tbert_now() - tw0;
        if (k == 0) break;

        st = score_batch(&sc, batch_slots, k, err);
        if (st) break;
        int d = 0;
        double twr = tbert_now();
        for (int i = 0; i < k && st == TBERT_OK; i++) {
            slot *s = batch_slots[i];
            tbert_score_record r = {s->item.source, s->item.offset, s->doc.id, 0, NULL, 0, s->item.truncated, s->doc.error};
            if (!s->doc.error) {
                r.score = sc.prob[d];
                int li = sc.label_idx[d];
                r.label = li >= 0 && li < rec->n_labels ? rec->labels[li] : "?";
                if (rec->n_labels == 2 && rec->positive >= 0) /* --threshold / --unsure (cmd_score.c) */
                    r.label = tbert_score_label(opts, rec, r.score, r.label);
                r.tokens = sc.tokens[d];
                d++;
            }
            tbert_score_format_record(line, opts->format, &r);
            st = tbert_score_write_all(fd, line->str, line->len, out_name, err);
            if (st) break;
            stats->records++;
            stats->errors += s->doc.error != NULL;
            if (opts->kill_at_record && stats->records == opts->kill_at_record) raise(SIGKILL);
        }
        t_write += tbert_now() - twr;
        pthread_mutex_lock(&p.mu);
        for (int i = 0; i < k; i++) slot_clear(batch_slots[i]);
        p.n_done += (uint64_t)k;
        pthread_cond_broadcast(&p.cv);
        pthread_mutex_unlock(&p.mu);
        if (prog) {
            char note[96];
            double el = tbert_now() - t0;
            snprintf(note, sizeof note, "%llu msgs, %.0f msg/s", (unsigned long long)stats->records,
                     el > 0 ? (double)stats->records / el : 0.0);
            tbert_progress_update(prog, bytes_done / 1000000, note);
        }
    }
    g_string_free(line, TRUE);

    if (reader_started) {
        pthread_mutex_lock(&p.mu);
        if (st) p.abort = true;
        pthread_cond_broadcast(&p.cv);
        pthread_mutex_unlock(&p.mu);
        pthread_join(reader, NULL);
        for (int i = 0; i < n_workers; i++) pthread_join(workers[i], NULL);
        if (st == TBERT_OK && p.reader_failed) {
            *err = p.reader_err;
            st = p.reader_err.code ? p.reader_err.code : TBERT_E_INTERNAL;
        }
        for (uint64_t i = 0; i < p.cap; i++) slot_clear(&p.ring[i]);
        pthread_mutex_destroy(&p.mu);
        pthread_cond_destroy(&p.cv);
        stats->skipped_done = p.skipped;
        stats->parse_seconds = p.parse_seconds;
        stats->tokenize_seconds = p.tokenize_seconds;
        stats->bytes = p.bytes_done;
    }
    stats->seconds = tbert_now() - t0;
    stats->featurize_seconds = sc.t_feat;
    stats->head_seconds = sc.t_head;
    stats->write_seconds = t_write;
    stats->wait_seconds = t_wait;
    if (prog) {
        char note[96];
        snprintf(note, sizeof note, "%llu msgs, %.0f msg/s", (unsigned long long)stats->records,
                 stats->seconds > 0 ? (double)stats->records / stats->seconds : 0.0);
        tbert_progress_update(prog, stats->bytes / 1000000, NULL);
        tbert_progress_finish(prog, note);
    }
    if (fd != STDOUT_FILENO && close(fd) != 0 && st == TBERT_OK)
        st = tbert_fail(err, TBERT_E_IO, "%s: write failed: %s", out_name, strerror(errno));
    free(workers);
    tbert_inputs_close(p.in);
    free(p.ring);
    if (st == TBERT_OK && opts->export_features) st = tbert_rows_write_npz(opts->export_features, &exported, NULL, err);
    tbert_rows_free(&exported);
    tbert_rows_free(&sc.rows);
    tbert_rows_free(&sc.one);
    free(sc.prob);
    free(sc.label_idx);
    free(sc.tokens);
    free(sc.docs);
    free(sc.ids);
    free(sc.doc_slot);
    free(batch_slots);
    g_hash_table_destroy(done);
    return st;
}
