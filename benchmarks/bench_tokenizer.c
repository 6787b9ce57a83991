/* Tokenizer throughput on a corpus of one text per line (default: the SMS corpus's text column repeated
 * 20 times): MB/s of input and tokens/s, single thread (tbert_encode per text, and tbert_encode_batch) and
 * tbert_encode_batch with more threads. Best of --rounds. benchmarks/bench_tokenizer.sh runs it together
 * with the Hugging Face peer (benchmarks/peers/hf_tokenizers.py) and prints the table.
 * Output lines: "RESULT <name> <threads> <bytes> <tokens> <seconds> <MB/s> <Mtokens/s>". */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/tokenizer.h"

static void usage(void) {
    fprintf(stderr, "usage: bench_tokenizer --vocab PATH --corpus PATH [--tsv] [--repeat N] [--max-len N] [--threads LIST] [--rounds N]\n"
                    "  --tsv: the corpus is LABEL<TAB>TEXT per line (SMSSpamCollection); the text column is used\n");
}

typedef struct {
    const tbert_vocab *v;
    const char **texts;
    const size_t *lens;
    size_t a, b, tokens;
    int max_len;
} share;

/* one thread's share of the texts, one tbert_encode each (what `tbert tokenize --threads N` does) */
static void *encode_share(void *arg) {
    share *s = arg;
    tbert_i32vec out = {0};
    tbert_error err;
    s->tokens = 0;
    for (size_t i = s->a; i < s->b; i++) {
        if (tbert_encode(s->v, s->texts[i], s->lens[i], s->max_len, &out, &err)) break;
        s->tokens += out.n;
    }
    tbert_i32vec_free(&out);
    return NULL;
}

static double encode_threads(const tbert_vocab *v, const char **texts, const size_t *lens, size_t n, int max_len, int th,
                             size_t *tokens) {
    share sh[64];
    pthread_t tid[64];
    if (th > 64) th = 64;
    double t0 = tbert_now();
    for (int t = 0; t < th; t++) {
        sh[t] = (share){v, texts, lens, n * (size_t)t / (size_t)th, n * (size_t)(t + 1) / (size_t)th, 0, max_len};
        if (t > 0) pthread_create(&tid[t], NULL, encode_share, &sh[t]);
    }
    encode_share(&sh[0]);
    for (int t = 1; t < th; t++) pthread_join(tid[t], NULL);
    double dt = tbert_now() - t0;
    *tokens = 0;
    for (int t = 0; t < th; t++) *tokens += sh[t].tokens;
    return dt;
}

int main(int argc, char **argv) {
    const char *vocab_path = NULL, *corpus = NULL, *threads_list = "1,2";
    int repeat = 20, max_len = 128, rounds = 3;
    bool tsv = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tsv")) { tsv = true; continue; }
        if (!val) { usage(); return 2; }
        if (!strcmp(a, "--vocab")) vocab_path = val;
        else if (!strcmp(a, "--corpus")) corpus = val;
        else if (!strcmp(a, "--repeat")) repeat = atoi(val);
        else if (!strcmp(a, "--max-len")) max_len = atoi(val);
        else if (!strcmp(a, "--threads")) threads_list = val;
        else if (!strcmp(a, "--rounds")) rounds = atoi(val);
        else { usage(); return 2; }
        i++;
    }
    if (!vocab_path || !corpus || repeat < 1 || max_len < 2 || rounds < 1) { usage(); return 2; }
    tbert_error err;
    tbert_vocab *v;
    if (tbert_vocab_load(vocab_path, NULL, &v, &err)) { fprintf(stderr, "bench_tokenizer: %s\n", err.msg); return 2; }
    char *data;
    size_t len;
    if (tbert_read_file(corpus, 0, &data, &len, &err)) { fprintf(stderr, "bench_tokenizer: %s\n", err.msg); return 2; }
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    lines += len && data[len - 1] != '\n';
    size_t n = lines * (size_t)repeat;
    const char **texts = malloc(n * sizeof *texts);
    size_t *lens = malloc(n * sizeof *lens);
    if (!texts || !lens) return 2;
    size_t k = 0, bytes = 0;
    for (char *p = data, *end = data + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *t = p;
        if (tsv) {
            char *tab = memchr(p, '\t', (size_t)(le - p));
            if (tab) t = tab + 1;
        }
        texts[k] = t;
        lens[k] = (size_t)(le - t);
        bytes += lens[k];
        k++;
        p = le + 1;
    }
    for (int r = 1; r < repeat; r++) {
        memcpy(texts + (size_t)r * k, texts, k * sizeof *texts);
        memcpy(lens + (size_t)r * k, lens, k * sizeof *lens);
    }
    n = k * (size_t)repeat;
    bytes *= (size_t)repeat;
    fprintf(stderr, "bench_tokenizer: %zu texts, %.1f MB, max_len %d, best of %d rounds\n", n, bytes / 1e6, max_len, rounds);

    /* single thread, one tbert_encode per text */
    tbert_i32vec out = {0};
    double best = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = tbert_now();
        tokens = 0;
        for (size_t i = 0; i < n; i++) {
            if (tbert_encode(v, texts[i], lens[i], max_len, &out, &err)) { fprintf(stderr, "%s\n", err.msg); return 2; }
            tokens += out.n;
        }
        double dt = tbert_now() - t0;
        if (dt < best) best = dt;
    }
    printf("RESULT tbert_encode 1 %zu %zu %.4f %.2f %.3f\n", bytes, tokens, best, bytes / best / 1e6, tokens / best / 1e6);
    tbert_i32vec_free(&out);

    /* tbert_encode per text, the texts split over N threads */
    for (const char *p = threads_list; *p;) {
        int th = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        if (th < 2) continue;
        best = 1e30;
        for (int r = 0; r < rounds; r++) {
            double dt = encode_threads(v, texts, lens, n, max_len, th, &tokens);
            if (dt < best) best = dt;
        }
        printf("RESULT tbert_encode %d %zu %zu %.4f %.2f %.3f\n", th, bytes, tokens, best, bytes / best / 1e6, tokens / best / 1e6);
    }

    /* tbert_encode_batch (one padded batch of all texts) with each thread count */
    for (const char *p = threads_list; *p;) {
        int th = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        if (th < 1) continue;
        best = 1e30;
        for (int r = 0; r < rounds; r++) {
            tbert_batch b;
            double t0 = tbert_now();
            if (tbert_encode_batch(v, texts, lens, (int)n, max_len, false, th, &b, &err)) { fprintf(stderr, "%s\n", err.msg); return 2; }
            double dt = tbert_now() - t0;
            tokens = 0;
            for (int i = 0; i < b.B; i++) tokens += (size_t)b.lengths[i];
            tbert_batch_free(&b);
            if (dt < best) best = dt;
        }
        printf("RESULT tbert_encode_batch %d %zu %zu %.4f %.2f %.3f\n", th, bytes, tokens, best, bytes / best / 1e6, tokens / best / 1e6);
    }
    free(texts);
    free(lens);
    free(data);
    tbert_vocab_free(v);
    return 0;
}
