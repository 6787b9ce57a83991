/* Fuzz entry points, one per parser of untrusted input. Each takes any bytes, must never crash, hang,
 * leak or read out of bounds, and calls abort() only when an invariant of a successful parse fails.
 * Used by the libFuzzer mains (tests/fuzz/fuzz_main.c, built with -DTBERT_FUZZ=ON and clang) and by
 * tests/test_fuzz_regressions.c, which replays tests/fuzz/regressions/<target>/ and the seed corpora. */
#ifndef TBERT_FUZZ_TARGETS_H
#define TBERT_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

int fuzz_tokenizer(const uint8_t *data, size_t size);   /* bytes -> ids (options from the first byte) */
int fuzz_safetensors(const uint8_t *data, size_t size); /* tbert_st_parse + tensor conversion */
int fuzz_config(const uint8_t *data, size_t size);      /* config.json (tbert_config_load) */
int fuzz_vocab(const uint8_t *data, size_t size);       /* tokenizer_config.json + vocab.txt in a model folder */
int fuzz_table(const uint8_t *data, size_t size);       /* TSV / CSV / JSONL (tbert_table_parse) */
int fuzz_message(const uint8_t *data, size_t size);     /* one RFC 822 / MIME message (tbert_message_parse) */
int fuzz_html(const uint8_t *data, size_t size);        /* HTML to text */
int fuzz_mbox(const uint8_t *data, size_t size);        /* an input file: mbox split + every message parsed */
int fuzz_recipe(const uint8_t *data, size_t size);      /* recipe JSON of head checkpoints (round trip) */
int fuzz_checkpoint(const uint8_t *data, size_t size);  /* head checkpoint file (tbert_checkpoint_load) */
int fuzz_threshold(const uint8_t *data, size_t size);
int fuzz_shard(const uint8_t *data, size_t size);       /* --shard K/N */   /* --threshold f1|fpr=X|VALUE */
int fuzz_spamd(const uint8_t *data, size_t size);       /* a spamd request head; the bytes as a message through
                                                           serve's header rewrite */

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} fuzz_target;

/* All targets, NULL-terminated. */
extern const fuzz_target fuzz_targets[];

#endif
