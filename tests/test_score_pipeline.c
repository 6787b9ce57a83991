/* The scoring pipeline in-process, on the committed random model tests/models/bert_tiny_shape and a head
 * with random weights under the mail recipe (windows, lexical + evidence channels):
 *   - one record per item, in input order, with the score that featurize + predict give for that item alone;
 *   - a run cut after a partial record and continued with resume gives the records of one uninterrupted run
 *     (same order and fields; scores within 1e-5);
 *   - shards 0..2 of 3 together hold every record of the full run exactly once;
 *   - CSV output, tables, and error records for unreadable items.
 * (tests/test_score.sh covers the CLI: kill -9 and resume, shards, filter, on the shared corpus.) */
#include <cjson/cJSON.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/score.h"

static char g_model_dir[1024];

static tbert_status make_head(const char *dir, tbert_error *err) {
    tbert_model *m;
    tbert_status st = tbert_model_load(g_model_dir, &m, err);
    if (st) return st;
    tbert_recipe r;
    tbert_recipe_preset("mail", &r, err);
    r.max_len = 32; /* several windows per message on a 64-position model */
    st = tbert_recipe_bind_model(&r, m, err);
    tbert_model_free(m);
    if (st) return st;
    r.n_labels = 2;
    snprintf(r.labels[0], sizeof r.labels[0], "ham");
    snprintf(r.labels[1], sizeof r.labels[1], "spam");
    r.positive = 1;
    r.threshold = 0.5f;
    tbert_head_config cfg = {.in_dim = (int)tbert_recipe_dim(&r), .hidden = 0, .n_classes = 2, .binary = true, .positive = 1};
    tbert_head *h;
    if ((st = tbert_head_create(&cfg, &h, err))) return st;
    tbert_head_init(h, 7);
    /* larger weights than nn.Linear's default so that scores spread over (0, 1) */
    for (size_t i = 0; i < h->n_params; i++) h->params[i] *= 40.0f;
    tbert_ckpt_meta meta = {.recipe = r, .seed = 7};
    memset(meta.data_hash, '0', 64);
    if (!(st = tbert_mkdirs(dir, err))) {
        char p[1200];
        snprintf(p, sizeof p, "%s/best.safetensors", dir);
        st = tbert_checkpoint_save(p, h, &meta, NULL, NULL, err);
    }
    tbert_head_free(h);
    return st;
}

typedef struct {
    char dir[64];
    tbert_score_ctx ctx;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/tbert_score_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    char head[128];
    snprintf(head, sizeof head, "%s/head", f->dir);
    tbert_error err;
    if (make_head(head, &err) || tbert_score_ctx_open(g_model_dir, head, "cpu", 1, 0, true, &f->ctx, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    tbert_score_ctx_close(&f->ctx);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

static char *slurp(const char *path, size_t *len) {
    char *b;
    tbert_error err;
    if (tbert_read_file(path, 0, &b, len, &err)) fail_msg("%s", err.msg);
    return b;
}

static void run(fixture *f, const char *const *in, int n, tbert_score_opts *o, tbert_score_stats *stats) {
    tbert_error err;
    tbert_status st = tbert_score_run(f->ctx.clf, f->ctx.fz, in, n, o, stats, &err);
    if (st) fail_msg("score: %s", err.msg);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_records_match_direct_scoring(void **state) {
    fixture *f = *state;
    char mail[1024], out[200];
    tu_tests_path("data/mail", mail, sizeof mail);
    snprintf(out, sizeof out, "%s/all.jsonl", f->dir);
    const char *in[] = {mail};
    tbert_score_opts o = {.out_path = out, .threads = 3, .batch = 4};
    tbert_score_stats stats;
    run(f, in, 1, &o, &stats);

    /* the reference: enumerate the same inputs, parse and score each item alone */
    tbert_inputs *it;
    tbert_error err;
    assert_int_equal(tbert_inputs_open(in, 1, NULL, &it, &err), TBERT_OK);
    size_t len;
    char *text = slurp(out, &len);
    char *line = text;
    tbert_input_item item;
    int n = 0, errors = 0, spam = 0;
    size_t dim = tbert_featurizer_dim(f->ctx.fz);
    float *feat = malloc(dim * sizeof *feat);
    while (tbert_inputs_next(it, &item, &err) == 1) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        assert_string_equal(cJSON_GetObjectItem(j, "source")->valuestring, item.source);
        assert_int_equal((uint64_t)cJSON_GetObjectItem(j, "offset")->valuedouble, item.offset);
        tbert_message m;
        tbert_status pst = tbert_message_parse(item.raw, item.raw_len, item.source, &m, &err);
        const cJSON *e = cJSON_GetObjectItem(j, "error");
        if (pst != TBERT_OK) {
            assert_true(cJSON_IsString(e));
            errors++;
        } else {
            assert_null(e);
            tbert_mail_doc md;
            assert_int_equal(tbert_mail_document(&m, &md, &err), TBERT_OK);
            tbert_doc doc = {md.text, md.len, md.evidence};
            float p;
            int li, toks;
            assert_int_equal(tbert_featurize(f->ctx.fz, 1, &doc, feat, &toks, &err), TBERT_OK);
            assert_int_equal(tbert_classifier_predict(f->ctx.clf, 1, feat, &p, &li, &err), TBERT_OK);
            double got = cJSON_GetObjectItem(j, "score")->valuedouble;
            if (!(got >= p - 2e-6 && got <= p + 2e-6)) fail_msg("%s: score %f, alone %f", item.source, got, (double)p);
            assert_int_equal(cJSON_GetObjectItem(j, "tokens")->valueint, toks);
            const char *label = cJSON_GetObjectItem(j, "label")->valuestring;
            assert_string_equal(label, p >= 0.5f ? "spam" : "ham");
            spam += !strcmp(label, "spam");
            const cJSON *id = cJSON_GetObjectItem(j, "id");
            if (m.message_id) assert_string_equal(id->valuestring, m.message_id);
            else assert_true(cJSON_IsNull(id));
            tbert_mail_doc_free(&md);
            tbert_message_free(&m);
        }
        cJSON_Delete(j);
        tbert_input_item_free(&item);
        line = nl + 1;
        n++;
    }
    assert_int_equal(*line, '\0'); /* no extra records */
    assert_int_equal((int)stats.records, n);
    assert_int_equal((int)stats.errors, errors);
    assert_true(n >= 17);
    fprintf(stderr, "records %d, errors %d, spam %d\n", n, errors, spam);
    tbert_inputs_close(it);
    free(feat);
    free(text);
}

/* The same records in the same order; scores within 1e-5 (batches are composed differently in a resumed run
 * and BLAS sums need not be bitwise equal), every other byte equal. */
static void assert_same_records(const char *got, const char *ref) {
    int line = 1;
    while (*got && *ref) {
        const char *gs = strstr(got, "\"score\":"), *rs = strstr(ref, "\"score\":");
        const char *gn = strchr(got, '\n'), *rn = strchr(ref, '\n');
        assert_true(gn && rn);
        if (gs && gs < gn && rs && rs < rn) {
            if (gs - got != rs - ref || memcmp(got, ref, (size_t)(gs - got))) fail_msg("record %d differs before the score", line);
            char *ge, *re;
            double a = strtod(gs + 8, &ge), b = strtod(rs + 8, &re);
            if (a - b > 1e-5 || b - a > 1e-5) fail_msg("record %d: score %f vs %f", line, a, b);
            got = ge;
            ref = re;
            gn = strchr(got, '\n');
            rn = strchr(ref, '\n');
        }
        if (gn - got != rn - ref || memcmp(got, ref, (size_t)(gn - got))) fail_msg("record %d differs", line);
        got = gn + 1;
        ref = rn + 1;
        line++;
    }
    if (*got || *ref) fail_msg("different number of records (differ from record %d)", line);
}

static void test_resume_gives_the_same_records(void **state) {
    fixture *f = *state;
    char mail[1024], full[200], part[200];
    tu_tests_path("data/mail", mail, sizeof mail);
    snprintf(full, sizeof full, "%s/full.jsonl", f->dir);
    snprintf(part, sizeof part, "%s/part.jsonl", f->dir);
    const char *in[] = {mail};
    tbert_score_stats stats;
    tbert_score_opts o = {.out_path = full, .threads = 2, .batch = 3};
    run(f, in, 1, &o, &stats);
    size_t len;
    char *ref = slurp(full, &len);
    int lines = count_lines(ref);
    /* cut after k whole records plus half of the next one, for several k */
    for (int k = 0; k <= lines; k += 4) {
        size_t cut = 0, next = 0;
        for (int i = 0; i < k; i++) {
            while (ref[cut] != '\n') cut++;
            cut++;
        }
        if (k < lines) {
            next = cut;
            while (ref[next] != '\n') next++;
        }
        size_t extra = k < lines ? (next - cut) / 2 : 0;
        assert_int_equal(tbert_write_file_atomic(part, ref, cut + extra, NULL), TBERT_OK);
        tbert_score_opts r = {.out_path = part, .threads = 2, .batch = 5, .resume = true};
        run(f, in, 1, &r, &stats);
        assert_int_equal((int)stats.skipped_done, k);
        assert_int_equal((int)stats.records, lines - k);
        size_t l2;
        char *got = slurp(part, &l2);
        assert_same_records(got, ref);
        free(got);
    }
    /* --resume with no output yet starts fresh */
    unlink(part);
    tbert_score_opts r = {.out_path = part, .resume = true};
    run(f, in, 1, &r, &stats);
    assert_false(stats.resumed);
    size_t l3;
    char *got = slurp(part, &l3);
    assert_same_records(got, ref);
    free(got);
    free(ref);
}

/* An input named twice gives its records twice; a resume keeps that count (pairs are counted, not a set). */
static void test_resume_with_repeated_input(void **state) {
    fixture *f = *state;
    char md[1024], out[200];
    tu_tests_path("data/mail/maildir", md, sizeof md);
    snprintf(out, sizeof out, "%s/twice.jsonl", f->dir);
    const char *in[] = {md, md};
    tbert_score_stats stats;
    tbert_score_opts o = {.out_path = out};
    run(f, in, 2, &o, &stats);
    assert_int_equal((int)stats.records, 4);
    size_t len;
    char *ref = slurp(out, &len);
    size_t cut = 0;
    for (int lines = 0; lines < 3 && cut < len; cut++) lines += ref[cut] == '\n';
    assert_int_equal(tbert_write_file_atomic(out, ref, cut, NULL), TBERT_OK);
    o.resume = true;
    run(f, in, 2, &o, &stats);
    assert_int_equal((int)stats.skipped_done, 3);
    assert_int_equal((int)stats.records, 1);
    char *got = slurp(out, &len);
    assert_same_records(got, ref);
    free(got);
    free(ref);
}

/* Shard K's j-th record is item j*N + K of the whole run: merged round-robin, the shards are the run. */
static void test_shards_cover_once(void **state) {
    fixture *f = *state;
    char mail[1024], path[200];
    tu_tests_path("data/mail", mail, sizeof mail);
    const char *in[] = {mail};
    tbert_score_stats stats;
    snprintf(path, sizeof path, "%s/whole.jsonl", f->dir);
    tbert_score_opts o = {.out_path = path};
    run(f, in, 1, &o, &stats);
    size_t len;
    char *whole = slurp(path, &len);
    int n = count_lines(whole);
    char *part[3], *pos[3];
    int total = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/shard%d.jsonl", f->dir, k);
        tbert_score_opts sh = {.out_path = path, .batch = 2 + k, .input = {.shard_k = k, .shard_n = 3}};
        run(f, in, 1, &sh, &stats);
        pos[k] = part[k] = slurp(path, &len);
        total += count_lines(part[k]);
        assert_true(count_lines(part[k]) >= n / 3);
    }
    assert_int_equal(total, n);
    GString *merged = g_string_new("");
    for (int i = 0; i < n; i++) {
        char **p = &pos[i % 3];
        char *nl = strchr(*p, '\n');
        assert_non_null(nl);
        g_string_append_len(merged, *p, nl - *p + 1);
        *p = nl + 1;
    }
    assert_same_records(merged->str, whole);
    for (int k = 0; k < 3; k++) free(part[k]);
    free(whole);
    g_string_free(merged, TRUE);
}

static void test_csv_tables_and_errors(void **state) {
    fixture *f = *state;
    char tsv[200], empty[200], out[200];
    snprintf(tsv, sizeof tsv, "%s/t.tsv", f->dir);
    snprintf(empty, sizeof empty, "%s/empty.eml", f->dir);
    snprintf(out, sizeof out, "%s/o.csv", f->dir);
    const char *rows = "ham\thello there\nspam\tWIN \"cash\", now\nham\tsee you\n";
    assert_int_equal(tbert_write_file_atomic(tsv, rows, strlen(rows), NULL), TBERT_OK);
    assert_int_equal(tbert_write_file_atomic(empty, "", 0, NULL), TBERT_OK);
    const char *in[] = {tsv, empty};
    tbert_score_opts o = {.out_path = out, .format = TBERT_SCORE_CSV};
    tbert_score_stats stats;
    run(f, in, 2, &o, &stats);
    assert_int_equal((int)stats.records, 4);
    assert_int_equal((int)stats.errors, 1);
    size_t len;
    char *csv = slurp(out, &len);
    tbert_table t;
    tbert_error err;
    tbert_table_opts to = {.format = TBERT_TABLE_CSV, .header = TBERT_HEADER_YES, .text_col = "source", .label_col = "offset"};
    assert_int_equal(tbert_table_parse(csv, len, out, TBERT_TABLE_CSV, &to, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 4);
    assert_string_equal(t.text[0], tsv);
    assert_string_equal(t.label[0], "0");
    assert_string_equal(t.label[1], "16"); /* byte offset of the second row */
    assert_string_equal(t.text[3], empty);
    tbert_table_free(&t);
    assert_non_null(strstr(csv, ",empty file\n"));
    assert_true(!strncmp(csv, "source,offset,id,score,label,tokens,truncated,error\n", 52));
    tbert_table_opts te = {.format = TBERT_TABLE_CSV, .header = TBERT_HEADER_YES, .text_col = "error", .label_col = "label"};
    assert_int_equal(tbert_table_parse(csv, len, out, TBERT_TABLE_CSV, &te, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 4);
    assert_string_equal(t.text[0], "");
    assert_true(!strcmp(t.label[0], "ham") || !strcmp(t.label[0], "spam"));
    assert_string_equal(t.text[3], "empty file");
    assert_string_equal(t.label[3], "");
    tbert_table_free(&t);
    /* resume over CSV: nothing left to do, the file is unchanged */
    o.resume = true;
    run(f, in, 2, &o, &stats);
    assert_int_equal((int)stats.records, 0);
    assert_int_equal((int)stats.skipped_done, 4);
    size_t l2;
    char *again = slurp(out, &l2);
    assert_int_equal(l2, len);
    assert_memory_equal(again, csv, len);
    free(again);
    free(csv);
}

int main(void) {
    tu_tests_path("models/bert_tiny_shape", g_model_dir, sizeof g_model_dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_match_direct_scoring),
        cmocka_unit_test(test_resume_gives_the_same_records),
        cmocka_unit_test(test_resume_with_repeated_input),
        cmocka_unit_test(test_shards_cover_once),
        cmocka_unit_test(test_csv_tables_and_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
