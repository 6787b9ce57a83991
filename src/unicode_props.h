/* Per-code-point Unicode classes as Hugging Face `tokenizers` (BertNormalizer, BertPreTokenizer) sees them:
 * utf8proc's categories and decompositions, corrected by a generated exception list (src/unicode_exceptions.h,
 * made by tests/golden/make_unicode_exceptions.py) where utf8proc's Unicode 15 tables and the older tables
 * compiled into the Rust crates under `tokenizers` disagree. Internal to the tokenizer modules. */
#ifndef TBERT_UNICODE_PROPS_H
#define TBERT_UNICODE_PROPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    UC_WS = 1u << 0,       /* Rust char::is_whitespace (White_Space) */
    UC_OTHER = 1u << 1,    /* is_other(): dropped by clean_text unless \t \n \r */
    UC_PUNCT = 1u << 2,    /* BERT punctuation: ASCII punctuation or any P* */
    UC_MN = 1u << 3,       /* nonspacing mark: dropped by strip_accents after NFD */
    UC_CJK = 1u << 4,      /* CJK ideograph that handle_chinese_chars surrounds with spaces */
    UC_NODECOMP = 1u << 5, /* HF's NFD leaves this code point as it is */
    UC_NOLOWER = 1u << 6,  /* HF's lowercase leaves this code point as it is */
};

/* An override of utf8proc's view for the code points lo..hi: flags |= set, then flags &= ~clear. */
typedef struct {
    uint32_t lo, hi;
    uint8_t set, clear;
} uc_exception;

/* Flags from utf8proc alone (what the exception generator compares against HF). */
unsigned uc_flags_raw(uint32_t cp);
/* Flags as HF sees them: uc_flags_raw corrected by the exception list. */
unsigned uc_flags(uint32_t cp);
/* Canonical combining class (utf8proc). */
int uc_ccc(uint32_t cp);
/* Full canonical decomposition (NFD of one code point, no reordering) into out (cap >= 8); returns the
 * count. Honours UC_NODECOMP when use_exceptions. */
int uc_nfd(uint32_t cp, uint32_t *out, int cap, bool use_exceptions);
/* Rust char::to_lowercase: 1 or 2 code points into out (cap >= 2). Honours UC_NOLOWER when use_exceptions. */
int uc_lower(uint32_t cp, uint32_t *out, bool use_exceptions);
/* Number of entries of the generated exception list and its description (for `tbert info`, tests). */
size_t uc_exception_count(void);
const uc_exception *uc_exception_table(void);

#endif
