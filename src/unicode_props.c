/* Unicode classes for the BERT normalizer and pre-tokenizer (see unicode_props.h). */
#include "unicode_props.h"

#include <utf8proc.h>

#include "unicode_exceptions.h"

static bool is_cjk_ideograph(uint32_t cp) {
    /* The ranges BertNormalizer::is_chinese_char lists (the CJK Unified Ideographs blocks it knows). */
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

static bool is_ascii_punct(uint32_t cp) {
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
}

unsigned uc_flags_raw(uint32_t cp) {
    if (cp > 0x10FFFF) return UC_OTHER;
    unsigned f = 0;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    switch (cat) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: f |= UC_WS; break;
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CS: f |= UC_OTHER; break;
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: f |= UC_PUNCT; break;
    case UTF8PROC_CATEGORY_MN: f |= UC_MN; break;
    default: break;
    }
    /* White_Space also holds these controls (Cc). */
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) f |= UC_WS;
    if (is_ascii_punct(cp)) f |= UC_PUNCT;
    if (is_cjk_ideograph(cp)) f |= UC_CJK;
    return f;
}

/* Cn (unassigned) is not "other" for HF: its is_other() covers Cc, Cf, Co and Cs only. */
static const uc_exception *find_exception(uint32_t cp) {
    size_t lo = 0, hi = uc_exceptions_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < uc_exceptions[mid].lo) hi = mid;
        else if (cp > uc_exceptions[mid].hi) lo = mid + 1;
        else return &uc_exceptions[mid];
    }
    return NULL;
}

unsigned uc_flags(uint32_t cp) {
    unsigned f = uc_flags_raw(cp);
    const uc_exception *e = find_exception(cp);
    if (e) f = (f | e->set) & ~(unsigned)e->clear;
    return f;
}

int uc_ccc(uint32_t cp) {
    if (cp > 0x10FFFF) return 0;
    return utf8proc_get_property((utf8proc_int32_t)cp)->combining_class;
}

int uc_nfd(uint32_t cp, uint32_t *out, int cap, bool use_exceptions) {
    if (cp < 0xC0 || cp > 0x10FFFF || (use_exceptions && (uc_flags(cp) & UC_NODECOMP))) {
        out[0] = cp;
        return 1;
    }
    utf8proc_int32_t buf[16];
    int boundclass = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, buf, 16, UTF8PROC_DECOMPOSE, &boundclass);
    if (n <= 0 || n > cap) {
        out[0] = cp;
        return 1;
    }
    for (utf8proc_ssize_t i = 0; i < n; i++) out[i] = (uint32_t)buf[i];
    return (int)n;
}

int uc_lower(uint32_t cp, uint32_t *out, bool use_exceptions) {
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    if (cp == 0x130) { /* the one unconditional multi-code-point lowercase mapping (SpecialCasing.txt) */
        out[0] = 'i';
        out[1] = 0x307;
        return 2;
    }
    if (cp > 0x10FFFF || (use_exceptions && (uc_flags(cp) & UC_NOLOWER))) {
        out[0] = cp;
        return 1;
    }
    if (use_exceptions && cp >= uc_lower_extra[0][0] && cp <= uc_lower_extra[uc_lower_extra_count - 1][0]) {
        size_t lo = 0, hi = uc_lower_extra_count;
        while (lo < hi) { /* mappings HF knows (newer Unicode in Rust's std) and utf8proc does not */
            size_t mid = lo + (hi - lo) / 2;
            if (uc_lower_extra[mid][0] == cp) {
                out[0] = uc_lower_extra[mid][1];
                return 1;
            }
            if (uc_lower_extra[mid][0] < cp) lo = mid + 1;
            else hi = mid;
        }
    }
    out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
    return 1;
}

size_t uc_exception_count(void) { return uc_exceptions_count; }
const uc_exception *uc_exception_table(void) { return uc_exceptions; }
