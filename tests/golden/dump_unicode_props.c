/* Helper of make_unicode_exceptions.py: prints, for every code point, how tbert's tokenizer classes it.
 *   raw   : "cp flags_raw nfd lower" from utf8proc alone (nfd/lower as comma-separated hex, no exceptions)
 *   final : "cp A B C D E" with the exception list applied, where A..D are tbert_normalize_cp's output
 *           under the four single-option normalizers (clean_text, handle_chinese_chars, strip_accents,
 *           lowercase) as hex lists ("-" when empty) and E the pre-tokenizer class (w, p or s).
 * Built by the script from src/ (gcc ... src/unicode_props.c src/normalizer.c src/common.c -lutf8proc). */
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_internal.h"
#include "unicode_props.h"

static void put_list(const uint32_t *v, int n) {
    if (n == 0) {
        fputs(" -", stdout);
        return;
    }
    for (int i = 0; i < n; i++) printf("%s%X", i ? "," : " ", v[i]);
}

static void put_norm(bool clean, bool cjk, bool strip, bool lower, uint32_t cp) {
    tbert_tokenizer_opts o = {.clean_text = clean, .handle_chinese_chars = cjk, .lowercase = lower,
                              .strip_accents = strip ? 1 : 0, .max_input_chars_per_word = 100};
    uint32_t out[TBERT_NORM_MAX], kept[TBERT_NORM_MAX];
    uint8_t ccc[TBERT_NORM_MAX];
    int n = tbert_normalize_cp(&o, strip, cp, out, ccc), m = 0;
    for (int i = 0; i < n; i++)
        if (out[i] != TBERT_NORM_BOUNDARY) kept[m++] = out[i];
    put_list(kept, m);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "version")) {
        printf("%s (Unicode %s)\n", utf8proc_version(), utf8proc_unicode_version());
        return 0;
    }
    bool raw = argc > 1 && !strcmp(argv[1], "raw");
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        printf("%X", cp);
        if (raw) {
            uint32_t d[8], l[2];
            printf(" %u", uc_flags_raw(cp));
            put_list(d, uc_nfd(cp, d, 8, false));
            put_list(l, uc_lower(cp, l, false));
        } else {
            put_norm(true, false, false, false, cp);
            put_norm(false, true, false, false, cp);
            put_norm(false, false, true, false, cp);
            put_norm(false, false, false, true, cp);
            unsigned f = uc_flags(cp);
            printf(" %c", (f & UC_WS) ? 's' : (f & UC_PUNCT) ? 'p' : 'w');
        }
        putchar('\n');
    }
    return 0;
}
