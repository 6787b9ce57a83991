/* The row store (src/store.c): entries round-trip, keys are an open set of fields independent of their
 * order, files are 0600 in 0700 folders, damaged entries (bit flip, truncation, wrong length) read as corrupt
 * misses and are removed, trimming evicts the least recently used entries first and removes stale temp
 * files, a read-only store writes nothing. With the featurizer: adding one document to a set encodes that one
 * document only, and rows from the store are the same bytes as rows computed afresh. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/recipe.h"
#include "tbert/store.h"

static char *make_tmp(void) {
    char *d = strdup("/tmp/tbert_store_XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_rf(const char *d) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    assert_int_equal(system(cmd), 0);
}

/* the single .row file under dir (the test writes one entry before calling) */
static void entry_file(const char *dir, char *out, size_t n) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.row' | head -1", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, (int)n, p));
    pclose(p);
    out[strcspn(out, "\n")] = 0;
}

static int count_rows(const char *dir) {
    char cmd[600], line[64];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.row' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(fgets(line, sizeof line, p));
    pclose(p);
    return atoi(line);
}

static void test_keys(void **state) {
    (void)state;
    tbert_store_field a[3] = {{"kind", "dense-block"}, {"model", "abc"}, {"dtype", "f32"}};
    tbert_store_field b[3] = {{"dtype", "f32"}, {"kind", "dense-block"}, {"model", "abc"}};
    tbert_store_field c[4] = {{"dtype", "f32"}, {"kind", "dense-block"}, {"model", "abc"}, {"layer_cut", "4"}};
    tbert_store_field d[3] = {{"kind", "dense-block"}, {"model", "abc"}, {"dtype", "bf16"}};
    char ka[65], kb[65], kc[65], kd[65];
    assert_int_equal(tbert_store_key(3, a, ka, NULL), TBERT_OK);
    assert_int_equal(tbert_store_key(3, b, kb, NULL), TBERT_OK);
    assert_int_equal(tbert_store_key(4, c, kc, NULL), TBERT_OK);
    assert_int_equal(tbert_store_key(3, d, kd, NULL), TBERT_OK);
    assert_string_equal(ka, kb);
    assert_string_not_equal(ka, kc);
    assert_string_not_equal(ka, kd);
    assert_int_equal(strlen(ka), 64);
    /* "a=b" + "c" must not collide with "a" = "b\nc=" style splicing: values are length-prefixed */
    tbert_store_field s1[2] = {{"a", "x\nb=1:y"}, {"c", ""}}, s2[3] = {{"a", "x"}, {"b", "y"}, {"c", ""}};
    char k1[65], k2[65];
    assert_int_equal(tbert_store_key(2, s1, k1, NULL), TBERT_OK);
    assert_int_equal(tbert_store_key(3, s2, k2, NULL), TBERT_OK);
    assert_string_not_equal(k1, k2);
    tbert_error err;
    tbert_store_field dup[2] = {{"kind", "a"}, {"kind", "b"}}, bad[1] = {{"a=b", "c"}};
    assert_int_equal(tbert_store_key(2, dup, k1, &err), TBERT_E_ARG);
    assert_int_equal(tbert_store_key(1, bad, k1, &err), TBERT_E_ARG);
}

static void test_entries(void **state) {
    (void)state;
    char *dir = make_tmp();
    char sdir[512];
    snprintf(sdir, sizeof sdir, "%s/store", dir);
    tbert_store_opts o = {.dir = sdir};
    tbert_store *s;
    assert_int_equal(tbert_store_open(&o, &s, NULL), TBERT_OK);
    struct stat sb;
    assert_int_equal(stat(sdir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    char key[65], content[65], other[65];
    tbert_store_field f[1] = {{"kind", "test"}};
    assert_int_equal(tbert_store_key(1, f, key, NULL), TBERT_OK);
    tbert_store_content_hash("hello", 5, content);
    tbert_store_content_hash("hellO", 5, other);
    float v[5] = {1, -2, 3.5f, 0, 1e-30f}, back[5];
    bool found = true;
    assert_int_equal(tbert_store_get(s, key, content, back, sizeof back, &found, NULL), TBERT_OK);
    assert_false(found);
    assert_int_equal(tbert_store_put(s, key, content, v, sizeof v, NULL), TBERT_OK);
    assert_int_equal(tbert_store_get(s, key, content, back, sizeof back, &found, NULL), TBERT_OK);
    assert_true(found);
    assert_memory_equal(v, back, sizeof v);
    assert_int_equal(tbert_store_get(s, key, other, back, sizeof back, &found, NULL), TBERT_OK);
    assert_false(found);
    char path[1024];
    entry_file(sdir, path, sizeof path);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char sub[1024];
    snprintf(sub, sizeof sub, "%s", path);
    *strrchr(sub, '/') = 0;
    assert_int_equal(stat(sub, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    /* asked with another length: corrupt, removed */
    const tbert_store_stats *stats = tbert_store_get_stats(s);
    assert_int_equal(tbert_store_get(s, key, content, back, 4 * sizeof(float), &found, NULL), TBERT_OK);
    assert_false(found);
    assert_int_equal(stats->corrupt, 1);
    assert_int_equal(access(path, F_OK), -1);
    /* every single-byte change of the file, and every truncation, is detected */
    assert_int_equal(tbert_store_put(s, key, content, v, sizeof v, NULL), TBERT_OK);
    uint8_t good[64];
    FILE *fp = fopen(path, "rb");
    size_t len = fread(good, 1, sizeof good, fp);
    fclose(fp);
    assert_int_equal(len, 24 + sizeof v);
    for (size_t pos = 0; pos <= len; pos++) {
        uint8_t bad[64];
        memcpy(bad, good, len);
        size_t blen = len;
        if (pos < len) bad[pos] ^= 0x10;
        else blen = len - 3; /* truncated */
        fp = fopen(path, "wb");
        fwrite(bad, 1, blen, fp);
        fclose(fp);
        uint64_t before = stats->corrupt;
        assert_int_equal(tbert_store_get(s, key, content, back, sizeof back, &found, NULL), TBERT_OK);
        if (found) fail_msg("byte %zu flipped: entry still read", pos);
        assert_int_equal(stats->corrupt, before + 1);
        assert_int_equal(access(path, F_OK), -1);
    }
    /* a read-only store reads but never writes or removes */
    assert_int_equal(tbert_store_put(s, key, content, v, sizeof v, NULL), TBERT_OK);
    tbert_store_close(s);
    tbert_store_opts ro = {.dir = sdir, .read_only = true};
    assert_int_equal(tbert_store_open(&ro, &s, NULL), TBERT_OK);
    assert_int_equal(tbert_store_get(s, key, content, back, sizeof back, &found, NULL), TBERT_OK);
    assert_true(found);
    assert_int_equal(tbert_store_put(s, key, other, v, sizeof v, NULL), TBERT_OK);
    assert_int_equal(tbert_store_get(s, key, other, back, sizeof back, &found, NULL), TBERT_OK);
    assert_false(found);
    assert_int_equal(tbert_store_get(s, key, content, back, 8, &found, NULL), TBERT_OK); /* wrong length */
    assert_false(found);
    assert_int_equal(access(path, F_OK), 0); /* not removed */
    tbert_store_close(s);
    rm_rf(dir);
    free(dir);
}

static void set_mtime(const char *path, time_t t) {
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_trim_lru(void **state) {
    (void)state;
    char *dir = make_tmp();
    tbert_store_opts o = {.dir = dir, .max_bytes = 1 << 20};
    tbert_store *s;
    assert_int_equal(tbert_store_open(&o, &s, NULL), TBERT_OK);
    char key[65], content[10][65], path[10][1024];
    tbert_store_field f[1] = {{"kind", "trim"}};
    assert_int_equal(tbert_store_key(1, f, key, NULL), TBERT_OK);
    uint8_t payload[1000] = {7};
    char sub[10][8];
    for (int i = 0; i < 10; i++) {
        snprintf(sub[i], sizeof sub[i], "doc%d", i);
        tbert_store_content_hash(sub[i], strlen(sub[i]), content[i]);
        assert_int_equal(tbert_store_put(s, key, content[i], payload, sizeof payload, NULL), TBERT_OK);
    }
    /* find each entry's file: the only one that disappears when it is read with a wrong length is it; simpler:
     * age all files, then read entries 0..9 in an order that makes 3, 5, 7 the least recently used */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.row' -exec touch -d '2 hours ago' {} +", dir);
    assert_int_equal(system(cmd), 0);
    uint8_t back[1000];
    bool found;
    time_t now = time(NULL);
    for (int i = 0; i < 10; i++) {
        if (i == 3 || i == 5 || i == 7) continue;
        assert_int_equal(tbert_store_get(s, key, content[i], back, sizeof back, &found, NULL), TBERT_OK); /* touches */
        assert_true(found);
    }
    (void)path;
    (void)now;
    /* a stale temp file from a killed writer, and a fresh one (a writer at work) */
    char stale[600], fresh[600];
    snprintf(stale, sizeof stale, "%s/00", dir);
    mkdir(stale, 0700);
    snprintf(stale, sizeof stale, "%s/00/.tmp.AAAAAA", dir);
    snprintf(fresh, sizeof fresh, "%s/00/.tmp.BBBBBB", dir);
    fclose(fopen(stale, "w"));
    fclose(fopen(fresh, "w"));
    set_mtime(stale, time(NULL) - 7200);
    uint64_t ev;
    size_t entry = 24 + sizeof payload;
    assert_int_equal(tbert_store_trim(s, 7 * entry, &ev, NULL), TBERT_OK);
    assert_int_equal(ev, 3);
    assert_int_equal(count_rows(dir), 7);
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(fresh, F_OK), 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(tbert_store_get(s, key, content[i], back, sizeof back, &found, NULL), TBERT_OK);
        assert_int_equal(found, !(i == 3 || i == 5 || i == 7));
    }
    /* under the cap: nothing goes */
    assert_int_equal(tbert_store_trim(s, 100 * entry, &ev, NULL), TBERT_OK);
    assert_int_equal(ev, 0);
    tbert_store_close(s);
    /* closing a store that wrote enforces its cap (here from the environment: 2 entries) */
    setenv("TBERT_STORE_MAX", "2100", 1);
    tbert_store_opts o2 = {.dir = dir};
    assert_int_equal(tbert_store_open(&o2, &s, NULL), TBERT_OK);
    unsetenv("TBERT_STORE_MAX");
    assert_int_equal(tbert_store_put(s, key, content[3], payload, sizeof payload, NULL), TBERT_OK);
    tbert_store_close(s);
    assert_int_equal(count_rows(dir), 2);
    rm_rf(dir);
    free(dir);
}

/* featurizer + store: one more document costs one encoding; stored rows equal fresh rows byte for byte;
 * a damaged entry is recomputed */
static void test_featurize_stored(void **state) {
    (void)state;
    char mdir[512];
    tu_tests_path("models/bert_tiny_shape", mdir, sizeof mdir);
    tbert_model *m = NULL;
    tbert_error err;
    if (tbert_model_load(mdir, &m, &err)) fail_msg("committed model: %s", err.msg);
    tbert_recipe r;
    assert_int_equal(tbert_recipe_preset("mail", &r, &err), TBERT_OK);
    r.max_len = 32; /* the committed model has 64 positions */
    if (tbert_recipe_bind_model(&r, m, &err)) fail_msg("%s", err.msg);
    tbert_encoder_opts eo = tbert_encoder_default_opts();
    eo.device.kind = TBERT_DEVICE_CPU;
    eo.quiet = true;
    eo.threads = 1;
    tbert_encoder *enc;
    assert_int_equal(tbert_encoder_create(m, &eo, &enc, &err), TBERT_OK);
    tbert_featurizer *fz;
    assert_int_equal(tbert_featurizer_create(&r, m, enc, &fz, &err), TBERT_OK);
    enum { N = 6 };
    const char *texts[N] = {"cheap meds online", "meeting at noon", "", "free free free", "the quarterly report is attached",
                            "one more message"};
    const char *ev[N] = {"h.subject:meds from_domain:x.com", NULL, "has:html", "h.from:a@b.c h.subject:free", "", "h.to:me"};
    tbert_doc docs[N];
    for (int i = 0; i < N; i++) docs[i] = (tbert_doc){texts[i], strlen(texts[i]), ev[i]};
    char *dir = make_tmp();
    tbert_store_opts o = {.dir = dir};
    tbert_store *s;
    assert_int_equal(tbert_store_open(&o, &s, NULL), TBERT_OK);
    tbert_rows fresh, a, b;
    assert_int_equal(tbert_featurizer_rows_init(fz, &fresh, &err), TBERT_OK);
    assert_int_equal(tbert_featurizer_rows_init(fz, &a, &err), TBERT_OK);
    assert_int_equal(tbert_featurizer_rows_init(fz, &b, &err), TBERT_OK);
    assert_int_equal(tbert_featurize_rows(fz, N, docs, &fresh, NULL, &err), TBERT_OK);
    tbert_feature_stats fs;
    assert_int_equal(tbert_featurize_stored(fz, s, N - 1, docs, NULL, &a, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, N - 1);
    assert_int_equal(fs.from_store, 0);
    assert_int_equal(tbert_featurize_stored(fz, s, N, docs, NULL, &b, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 1); /* only the new document */
    assert_int_equal(fs.from_store, N - 1);
    assert_int_equal(b.n, N);
    /* the dense block is the stored bits of the batch that encoded it (the CPU encoder's bits depend on the
     * batch: a fresh run of the same batches gives them), the sparse blocks are recomputed */
    tbert_rows one;
    assert_int_equal(tbert_featurizer_rows_init(fz, &one, &err), TBERT_OK);
    assert_int_equal(tbert_featurize_rows(fz, 1, docs + N - 1, &one, NULL, &err), TBERT_OK);
    size_t dd = b.dense_dim;
    assert_memory_equal(b.dense, a.dense, (size_t)(N - 1) * dd * sizeof(float));
    assert_memory_equal(b.dense + (size_t)(N - 1) * dd, one.dense, dd * sizeof(float));
    assert_int_equal(tu_compare("stored dense vs one batch", b.dense, fresh.dense, (size_t)N * dd, 1e-6, 1e-5), 0);
    assert_memory_equal(b.indptr, fresh.indptr, (N + 1) * sizeof(int64_t));
    assert_memory_equal(b.indices, fresh.indices, (size_t)fresh.indptr[N] * sizeof(int32_t));
    assert_memory_equal(b.values, fresh.values, (size_t)fresh.indptr[N] * sizeof(float));
    assert_true(fresh.indptr[N] > 0);
    /* damage every entry: each is detected, recomputed, rewritten, and the rows are the same */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "for f in $(find '%s' -name '*.row'); do printf 'X' | dd of=$f bs=1 seek=30 conv=notrunc 2>/dev/null; done", dir);
    assert_int_equal(system(cmd), 0);
    tbert_rows_clear(&b);
    assert_int_equal(tbert_featurize_stored(fz, s, N, docs, NULL, &b, &fs, &err), TBERT_OK);
    assert_int_equal(fs.corrupt, N);
    assert_int_equal(fs.encoded, N);
    assert_memory_equal(b.dense, fresh.dense, (size_t)N * dd * sizeof(float)); /* all six re-encoded in one batch */
    tbert_rows_clear(&b);
    assert_int_equal(tbert_featurize_stored(fz, s, N, docs, NULL, &b, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 0);
    /* evidence does not reach the dense block: other evidence, same text, no encoding */
    tbert_doc changed = docs[0];
    changed.evidence = "h.subject:other";
    tbert_rows_clear(&b);
    assert_int_equal(tbert_featurize_stored(fz, s, 1, &changed, NULL, &b, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 0);
    tbert_rows_free(&fresh);
    tbert_rows_free(&one);
    tbert_rows_free(&a);
    tbert_rows_free(&b);
    tbert_store_close(s);
    rm_rf(dir);
    free(dir);
    tbert_featurizer_free(fz);
    tbert_encoder_free(enc);
    tbert_model_free(m);
}

/* Four processes write, read and trim one store at once: every read is a miss or the exact payload (never a
 * torn or foreign entry), none is counted corrupt, and afterwards every entry reads back whole. */
static void test_concurrent(void **state) {
    (void)state;
    char *dir = make_tmp();
    enum { PROCS = 4, KEYS = 64, ROUNDS = 300, LEN = 4096 };
    char key[65];
    tbert_store_field f[1] = {{"kind", "race"}};
    assert_int_equal(tbert_store_key(1, f, key, NULL), TBERT_OK);
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] > 0) continue;
        tbert_store_opts o = {.dir = dir};
        tbert_store *s;
        if (tbert_store_open(&o, &s, NULL)) _exit(3);
        uint8_t buf[LEN], back[LEN];
        uint64_t x = (uint64_t)p * 7919 + 1;
        int bad = 0;
        for (int r = 0; r < ROUNDS && !bad; r++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int k = (int)((x >> 33) % KEYS);
            char name[16], content[65];
            snprintf(name, sizeof name, "k%d", k);
            tbert_store_content_hash(name, strlen(name), content);
            memset(buf, k, LEN); /* the payload of key k is always the same bytes */
            bool found;
            if (r % 3 == 0) bad |= tbert_store_put(s, key, content, buf, LEN, NULL) != TBERT_OK;
            else bad |= tbert_store_get(s, key, content, back, LEN, &found, NULL) != TBERT_OK || (found && memcmp(back, buf, LEN));
            if (r % 50 == 49) {
                uint64_t ev;
                bad |= tbert_store_trim(s, (uint64_t)(KEYS / 2) * (LEN + 24), &ev, NULL) != TBERT_OK;
            }
        }
        bad |= tbert_store_get_stats(s)->corrupt != 0;
        tbert_store_close(s);
        _exit(bad ? 1 : 0);
    }
    for (int p = 0; p < PROCS; p++) {
        int status;
        assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail_msg("writer %d: status %d", p, status);
    }
    tbert_store_opts o = {.dir = dir};
    tbert_store *s;
    assert_int_equal(tbert_store_open(&o, &s, NULL), TBERT_OK);
    int present = 0;
    for (int k = 0; k < KEYS; k++) {
        char name[16], content[65];
        uint8_t buf[LEN], back[LEN];
        snprintf(name, sizeof name, "k%d", k);
        tbert_store_content_hash(name, strlen(name), content);
        memset(buf, k, LEN);
        bool found;
        assert_int_equal(tbert_store_get(s, key, content, back, LEN, &found, NULL), TBERT_OK);
        if (found) assert_memory_equal(back, buf, LEN);
        present += found;
    }
    assert_true(present > 0);
    assert_int_equal(tbert_store_get_stats(s)->corrupt, 0);
    tbert_store_close(s);
    rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_keys), cmocka_unit_test(test_entries), cmocka_unit_test(test_trim_lru),
                                       cmocka_unit_test(test_featurize_stored), cmocka_unit_test(test_concurrent)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
