/* Fuzz entry points (see targets.h). Files-only APIs get the input through a memfd (/proc/self/fd/N) or,
 * for a model folder, through files in a private temp folder. Per-process caches (vocabularies, the
 * temp folder) live in static storage: this is a test harness, not library code. */
#include "targets.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tbert/checkpoint.h"
#include "tbert/dataset.h"
#include "tbert/fileio.h"
#include "tbert/mail.h"
#include "tbert/metrics.h"
#include "tbert/model.h"
#include "tbert/recipe.h"
#include "tbert/safetensors.h"
#include "tbert/tokenizer.h"
#include "serve.h"

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static const char *tests_dir(void) {
    const char *d = getenv("TBERT_TESTS_DIR");
#ifdef TBERT_FUZZ_TESTS_DIR
    if (!d || !*d) d = TBERT_FUZZ_TESTS_DIR;
#endif
    return d && *d ? d : "tests";
}

/* A memfd holding the bytes; its /proc path goes to APIs that take a file name. -1 on failure. */
static int memfd_with(const uint8_t *data, size_t size, char path[64]) {
    int fd = memfd_create("tbert-fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

/* ---- tokenizer ---- */

static tbert_vocab *vocab_for(unsigned sel) {
    static tbert_vocab *cache[32];
    static bool tried[32];
    sel &= 31;
    if (!tried[sel]) {
        tried[sel] = true;
        tbert_tokenizer_opts o = tbert_tokenizer_default_opts();
        o.lowercase = sel & 1;
        o.strip_accents = (sel >> 1) & 1 ? -1 : (int)((sel >> 2) & 1);
        o.handle_chinese_chars = !((sel >> 3) & 1);
        o.max_input_chars_per_word = (sel >> 4) & 1 ? 5 : 100;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/data/tokenizer/cased_vocab.txt", tests_dir());
        tbert_error err;
        if (tbert_vocab_load(path, &o, &cache[sel], &err)) {
            fprintf(stderr, "fuzz_tokenizer: %s (set TBERT_TESTS_DIR)\n", err.msg);
            abort();
        }
    }
    return cache[sel];
}

int fuzz_tokenizer(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const tbert_vocab *v = vocab_for(data[0]);
    int max_len = 2 + data[1] % 40;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    tbert_error err;
    tbert_i32vec all = {0}, enc = {0}, win = {0};
    CHECK(tbert_tokenize(v, text, len, &all, &err) == TBERT_OK);
    for (size_t i = 0; i < all.n; i++) CHECK(all.v[i] >= 0 && all.v[i] < tbert_vocab_size(v));
    /* encode = [CLS] + first max_len-2 ids + [SEP] */
    CHECK(tbert_encode(v, text, len, max_len, &enc, &err) == TBERT_OK);
    size_t keep = all.n < (size_t)max_len - 2 ? all.n : (size_t)max_len - 2;
    CHECK(enc.n == keep + 2);
    CHECK(enc.v[0] == tbert_vocab_cls(v) && enc.v[enc.n - 1] == tbert_vocab_sep(v));
    CHECK(keep == 0 || !memcmp(enc.v + 1, all.v, keep * sizeof *all.v));
    /* windows cover all ids in order */
    if (max_len >= 3) {
        size_t per = (size_t)max_len - 2, nw_max = all.n / per + 2;
        size_t *starts = malloc(nw_max * sizeof *starts);
        int *lens = malloc(nw_max * sizeof *lens);
        int nw = 0;
        if (starts && lens) {
            CHECK(tbert_make_windows(v, all.v, all.n, max_len, 0, &win, starts, lens, &nw, &err) == TBERT_OK);
            size_t k = 0;
            for (int w = 0; w < nw; w++)
                for (int i = 1; i < lens[w] - 1; i++) CHECK(win.v[starts[w] + (size_t)i] == all.v[k++]);
            CHECK(k == all.n);
        }
        free(starts);
        free(lens);
    }
    /* a batch of the text and its halves gives the same rows as encode */
    const char *texts[2] = {text, text + len / 2};
    size_t lens2[2] = {len, len - len / 2};
    tbert_batch b;
    CHECK(tbert_encode_batch(v, texts, lens2, 2, max_len, data[1] & 1, (data[1] & 6) == 6 ? 2 : 1, &b, &err) == TBERT_OK);
    CHECK(b.lengths[0] == (int32_t)enc.n && !memcmp(b.ids, enc.v, enc.n * sizeof *enc.v));
    tbert_batch_free(&b);
    tbert_i32vec_free(&all);
    tbert_i32vec_free(&enc);
    tbert_i32vec_free(&win);
    return 0;
}

/* ---- safetensors ---- */

int fuzz_safetensors(const uint8_t *data, size_t size) {
    tbert_safetensors *st = NULL;
    tbert_error err;
    if (tbert_st_parse(data, size, "fuzz.safetensors", &st, &err) != TBERT_OK) return 0;
    size_t total = 0;
    const void *bytes = tbert_st_bytes(st, &total);
    CHECK(bytes == (const void *)data && total == size);
    for (int i = 0; i < tbert_st_count(st); i++) {
        const tbert_st_tensor *t = tbert_st_at(st, i);
        CHECK(t && t->name && t->nbytes == t->numel * tbert_dtype_size(t->dtype));
        CHECK(t->nbytes <= size && (const uint8_t *)t->data >= data && (const uint8_t *)t->data + t->nbytes <= data + size);
        CHECK(tbert_st_find(st, t->name) != NULL);
        if (t->dtype == TBERT_DT_F32 || t->dtype == TBERT_DT_F16 || t->dtype == TBERT_DT_BF16 || t->dtype == TBERT_DT_F64) {
            float *out = malloc((t->numel ? t->numel : 1) * sizeof *out);
            if (out) {
                (void)tbert_st_to_f32(st, t, out, &err);
                free(out);
            }
        }
    }
    for (int i = 0; i < tbert_st_meta_count(st); i++) {
        const char *k = tbert_st_meta_key(st, i);
        CHECK(k && tbert_st_meta(st, k) != NULL);
    }
    tbert_st_close(st);
    return 0;
}

/* ---- config.json ---- */

int fuzz_config(const uint8_t *data, size_t size) {
    char path[64];
    int fd = memfd_with(data, size, path);
    if (fd < 0) return 0;
    tbert_config c;
    tbert_error err;
    if (tbert_config_load(path, &c, &err) == TBERT_OK) {
        CHECK(c.hidden > 0 && c.heads > 0 && c.hidden % c.heads == 0 && c.layers > 0 && c.vocab_size > 0);
        CHECK(c.intermediate > 0 && c.max_position > 0);
    }
    close(fd);
    return 0;
}

/* ---- tokenizer_config.json + vocab.txt ---- */

static char g_model_dir[64];

static void remove_model_tmpdir(void) {
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", g_model_dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/vocab.txt", g_model_dir);
    unlink(p);
    rmdir(g_model_dir);
}

static const char *model_tmpdir(void) {
    if (!g_model_dir[0]) {
        /* tmpfs when there is one: this target writes two files per input */
        snprintf(g_model_dir, sizeof g_model_dir, "%s/tbert_fuzz_vocab_%ld", tbert_is_dir("/dev/shm") ? "/dev/shm" : "/tmp", (long)getpid());
        if (mkdir(g_model_dir, 0700) != 0 && errno != EEXIST) abort();
        atexit(remove_model_tmpdir);
    }
    return g_model_dir;
}

int fuzz_vocab(const uint8_t *data, size_t size) {
    /* input: tokenizer_config.json, the separator "\n--VOCAB--\n", vocab.txt (no separator: vocab only) */
    static const char sep[] = "\n--VOCAB--\n";
    const uint8_t *cfg = NULL, *voc = data;
    size_t cfg_len = 0, voc_len = size;
    const uint8_t *m = memmem(data, size, sep, sizeof sep - 1);
    if (m) {
        cfg = data;
        cfg_len = (size_t)(m - data);
        voc = m + sizeof sep - 1;
        voc_len = size - cfg_len - (sizeof sep - 1);
    }
    const char *dir = model_tmpdir();
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    unlink(p);
    if (cfg) {
        FILE *f = fopen(p, "wb");
        if (!f) return 0;
        fwrite(cfg, 1, cfg_len, f);
        fclose(f);
    }
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    FILE *f = fopen(p, "wb");
    if (!f) return 0;
    fwrite(voc, 1, voc_len, f);
    fclose(f);
    tbert_vocab *v = NULL;
    tbert_error err;
    if (tbert_vocab_load_model_dir(dir, &v, &err) == TBERT_OK) {
        static const char text[] = "Hello [CLS] w\xc3\xb6rld, caf\xe9 \xe4\xb8\xad\xe6\x96\x87 ##x unaffable [MASK]";
        tbert_i32vec out = {0};
        CHECK(tbert_encode(v, text, sizeof text - 1, 64, &out, &err) == TBERT_OK);
        for (size_t i = 0; i < out.n; i++) {
            CHECK(out.v[i] >= 0 && out.v[i] < tbert_vocab_size(v));
            const char *tok = tbert_vocab_token(v, out.v[i]);
            CHECK(tok != NULL);
        }
        tbert_i32vec_free(&out);
        tbert_vocab_free(v);
    }
    return 0;
}

/* ---- tables ---- */

int fuzz_table(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const char *const cols[] = {NULL, "1", "2", "3", "text", "label", "none", "0"};
    tbert_table_opts o = {.format = (tbert_table_format)(data[0] & 3),
                          .header = (tbert_header_mode)((data[0] >> 2) % 3),
                          .text_col = cols[(data[0] >> 4) & 7],
                          .label_col = cols[((data[0] >> 7) | ((data[0] & 0x30) >> 3)) & 7]};
    tbert_table t;
    tbert_error err;
    if (tbert_table_parse((const char *)data + 1, size - 1, "fuzz.table", o.format, &o, &t, &err) == TBERT_OK) {
        for (int i = 0; i < t.n; i++) {
            CHECK(t.text[i] != NULL && strlen(t.text[i]) <= t.text_len[i]);
            CHECK(t.offset[i] <= size - 1);
        }
        char h[65];
        tbert_table_hash(&t, h);
        tbert_table_free(&t);
    }
    return 0;
}

/* ---- mail ---- */

int fuzz_message(const uint8_t *data, size_t size) {
    tbert_message m;
    tbert_error err;
    if (tbert_message_parse((const char *)data, size, "fuzz.eml", &m, &err) == TBERT_OK) {
        CHECK(m.subject && m.from && m.body && m.evidence);
        tbert_message_free(&m);
    }
    return 0;
}

int fuzz_html(const uint8_t *data, size_t size) {
    char *t = tbert_html_to_text((const char *)data, size);
    free(t);
    return 0;
}

int fuzz_mbox(const uint8_t *data, size_t size) {
    char path[64];
    int fd = memfd_with(data, size, path);
    if (fd < 0) return 0;
    const char *paths[1] = {path};
    tbert_input_opts o = {.max_message_bytes = 1 << 20};
    tbert_inputs *in = NULL;
    tbert_error err;
    if (tbert_inputs_open(paths, 1, &o, &in, &err) == TBERT_OK) {
        tbert_input_item it;
        int r, items = 0;
        while ((r = tbert_inputs_next(in, &it, &err)) == 1 && items < 10000) {
            items++;
            if (it.is_message && !it.error) {
                tbert_message m;
                if (tbert_message_parse(it.raw, it.raw_len, "fuzz.mbox", &m, &err) == TBERT_OK) tbert_message_free(&m);
            }
            tbert_input_item_free(&it);
        }
        tbert_inputs_close(in);
    }
    close(fd);
    return 0;
}

/* ---- head checkpoints ---- */

int fuzz_recipe(const uint8_t *data, size_t size) {
    char *s = tbert_strndup((const char *)data, size);
    if (!s) return 0;
    tbert_recipe r, r2;
    tbert_error err;
    if (tbert_recipe_from_json(s, "fuzz recipe", &r, &err) == TBERT_OK) {
        char *j = tbert_recipe_to_json(&r);
        if (j) { /* what we write we read back the same */
            CHECK(tbert_recipe_from_json(j, "fuzz recipe (round trip)", &r2, &err) == TBERT_OK);
            char *j2 = tbert_recipe_to_json(&r2);
            CHECK(j2 && !strcmp(j, j2));
            free(j2);
            free(j);
        }
    }
    free(s);
    return 0;
}

int fuzz_checkpoint(const uint8_t *data, size_t size) {
    char path[64];
    int fd = memfd_with(data, size, path);
    if (fd < 0) return 0;
    tbert_head *h = NULL;
    tbert_ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    tbert_adam adam;
    memset(&adam, 0, sizeof adam);
    tbert_rng rng;
    tbert_error err;
    bool full = size > 0 && (data[size - 1] & 1); /* sometimes ask for the optimizer state too */
    if (tbert_checkpoint_load(path, &h, &meta, full ? &adam : NULL, full ? &rng : NULL, &err) == TBERT_OK) {
        tbert_head_free(h);
        tbert_ckpt_meta_free(&meta);
        if (full) tbert_adam_free(&adam);
    }
    close(fd);
    return 0;
}

int fuzz_threshold(const uint8_t *data, size_t size) {
    char *s = tbert_strndup((const char *)data, size);
    if (!s) return 0;
    tbert_error err;
    if (tbert_threshold_parse(s, &err) == TBERT_OK) {
        float score[6] = {0.9f, 0.8f, 0.8f, 0.3f, 0.2f, 0.1f}, thr = NAN;
        bool pos[6] = {true, true, false, true, false, false};
        if (tbert_threshold_choose(s, 6, score, pos, &thr, &err) == TBERT_OK) CHECK(!isnan(thr));
    }
    free(s);
    return 0;
}

int fuzz_shard(const uint8_t *data, size_t size) {
    char *s = tbert_strndup((const char *)data, size);
    if (!s) return 0;
    int k = -1, n = -1;
    tbert_error err;
    if (tbert_shard_parse(s, &k, &n, &err) == TBERT_OK) CHECK(k >= 0 && n >= 1 && k < n);
    else CHECK(err.msg[0] != '\0');
    free(s);
    return 0;
}

int fuzz_spamd(const uint8_t *data, size_t size) {
    spamd_request q;
    const char *why = NULL;
    int code = serve_spamd_parse((const char *)data, size, &q, &why);
    if (code == 0) CHECK(q.verb >= 0 && q.verb < 10 && (q.clen >= 0 || q.verb == 6 || q.verb == 7) && q.vmaj == 1);
    else if (code > 0) CHECK(why && *why);
    /* the same bytes as a message through the header rewrite (PROCESS / HEADERS / milter) */
    size_t n = 0;
    char *o = serve_rewrite_message((const char *)data, size, "X-Spam-Flag: NO\r\nX-TBert-Spam: No\r\n", size & 1, &n);
    if (o) {
        CHECK(n <= size + 40);
        CHECK(memmem(o, n, "X-Spam-Flag: NO", 15) && memmem(o, n, "X-TBert-Spam: No", 16));
        free(o);
    }
    return 0;
}

const fuzz_target fuzz_targets[] = {
    {"tokenizer", fuzz_tokenizer}, {"safetensors", fuzz_safetensors}, {"config", fuzz_config},
    {"vocab", fuzz_vocab},         {"table", fuzz_table},             {"message", fuzz_message},
    {"html", fuzz_html},           {"mbox", fuzz_mbox},               {"recipe", fuzz_recipe},
    {"checkpoint", fuzz_checkpoint}, {"threshold", fuzz_threshold},   {"shard", fuzz_shard},
    {"spamd", fuzz_spamd},
    {NULL, NULL},
};
