/* safetensors reader and writer.
 *
 * The reader trusts nothing in the file: every size and count is checked against the file size and caps
 * before it is used, every product and sum is overflow-checked, and tensors must tile the data area exactly
 * (sorted by offset, no holes, no overlaps, header + data = file size), as the reference implementation
 * (huggingface/safetensors `validate`) requires. Tensor data is never copied: tbert_st_tensor.data points
 * into the mapping (or the caller's buffer). */
#include "tbert/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tbert/fileio.h"

/* ---- dtypes ---------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [TBERT_DT_F32] = {"F32", 4},  [TBERT_DT_F16] = {"F16", 2},       [TBERT_DT_BF16] = {"BF16", 2},
    [TBERT_DT_F64] = {"F64", 8},  [TBERT_DT_I64] = {"I64", 8},       [TBERT_DT_I32] = {"I32", 4},
    [TBERT_DT_I16] = {"I16", 2},  [TBERT_DT_I8] = {"I8", 1},         [TBERT_DT_U8] = {"U8", 1},
    [TBERT_DT_BOOL] = {"BOOL", 1}, [TBERT_DT_U16] = {"U16", 2},      [TBERT_DT_U32] = {"U32", 4},
    [TBERT_DT_U64] = {"U64", 8},  [TBERT_DT_F8_E4M3] = {"F8_E4M3", 1}, [TBERT_DT_F8_E5M2] = {"F8_E5M2", 1},
};
_Static_assert(sizeof dtype_table / sizeof dtype_table[0] == TBERT_DT_COUNT, "dtype table matches the enum");

const char *tbert_dtype_name(tbert_dtype d) { return (unsigned)d < TBERT_DT_COUNT ? dtype_table[d].name : "?"; }
size_t tbert_dtype_size(tbert_dtype d) { return (unsigned)d < TBERT_DT_COUNT ? dtype_table[d].size : 0; }

bool tbert_dtype_from_name(const char *name, tbert_dtype *out) {
    for (int i = 0; i < TBERT_DT_COUNT; i++) {
        if (!strcmp(name, dtype_table[i].name)) {
            *out = (tbert_dtype)i;
            return true;
        }
    }
    return false;
}

/* ---- reader ---------------------------------------------------------------------------------- */

struct tbert_safetensors {
    char *label;             /* file path (or the caller's label) used in every message */
    const uint8_t *buf;      /* the whole file */
    size_t len;
    void *map;               /* non-NULL when we own an mmap of buf */
    const uint8_t *data;     /* data area: buf + 8 + header length */
    size_t data_len;
    tbert_st_tensor *t;      /* sorted by offset (file order) */
    int n;
    int *by_name;            /* indices into t sorted by name, for tbert_st_find */
    char **meta_key, **meta_val;
    int n_meta;
};

/* Largest integer a JSON number (a double in cJSON) holds exactly: larger values are refused rather than
 * silently rounded. */
#define JSON_MAX_EXACT_INT 9007199254740992.0

static bool json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return false;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > JSON_MAX_EXACT_INT || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

/* Strict UTF-8 (no overlongs, no surrogates, max U+10FFFF); returns the offset of the first bad byte or len. */
static size_t utf8_valid_prefix(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i <= n) return i;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += n + 1;
    }
    return len;
}

/* Names and strings quoted in messages come from the file: a "\n" or other control character in them
 * must not split the one-line error. */
static void make_printable(tbert_error *err) {
    if (!err) return;
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

void tbert_st_close(tbert_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) free(st->t[i].name);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_key[i]);
        free(st->meta_val[i]);
    }
    free(st->t);
    free(st->by_name);
    free(st->meta_key);
    free(st->meta_val);
    if (st->map) munmap(st->map, st->len);
    free(st->label);
    free(st);
}

static tbert_status parse_metadata(tbert_safetensors *st, const cJSON *meta, tbert_error *err) {
    if (cJSON_IsNull(meta)) return TBERT_OK;
    if (!cJSON_IsObject(meta)) return tbert_fail(err, TBERT_E_FORMAT, "%s: __metadata__ is not a JSON object", st->label);
    int n = cJSON_GetArraySize(meta);
    st->meta_key = tbert_calloc_array((size_t)n, sizeof *st->meta_key);
    st->meta_val = tbert_calloc_array((size_t)n, sizeof *st->meta_val);
    if (!st->meta_key || !st->meta_val) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for __metadata__", st->label);
    for (const cJSON *it = meta->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: __metadata__ value of '%s' is not a string", st->label, it->string);
        for (int k = 0; k < st->n_meta; k++)
            if (!strcmp(st->meta_key[k], it->string))
                return tbert_fail(err, TBERT_E_FORMAT, "%s: __metadata__ key '%s' appears twice", st->label, it->string);
        int k = st->n_meta;
        st->meta_key[k] = tbert_strdup(it->string);
        st->meta_val[k] = tbert_strdup(it->valuestring);
        if (!st->meta_key[k] || !st->meta_val[k]) {
            free(st->meta_key[k]);
            free(st->meta_val[k]);
            return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for __metadata__", st->label);
        }
        st->n_meta++;
    }
    return TBERT_OK;
}

/* Fills t (name already set) from its JSON entry; checks dtype, shape, byte size and the offset range. */
static tbert_status parse_tensor(const tbert_safetensors *st, const cJSON *e, tbert_st_tensor *t, tbert_error *err) {
    const char *lb = st->label, *nm = t->name;
    if (!cJSON_IsObject(e)) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': entry is not a JSON object", lb, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!dt) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': missing dtype", lb, nm);
    if (!cJSON_IsString(dt)) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': dtype is not a string", lb, nm);
    if (!tbert_dtype_from_name(dt->valuestring, &t->dtype))
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: tensor '%s': unknown dtype '%.40s'", lb, nm, dt->valuestring);
    if (!sh) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': missing shape", lb, nm);
    if (!cJSON_IsArray(sh)) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': shape is not an array", lb, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > TBERT_ST_MAX_DIMS)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': shape has %d dimensions (at most %d)", lb, nm, nd,
                          TBERT_ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int d = 0;
    for (const cJSON *it = sh->child; it; it = it->next, d++) {
        uint64_t v;
        if (!json_uint(it, &v))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", lb, nm, d);
        t->shape[d] = (int64_t)v;
        if (v > SIZE_MAX || !tbert_mul_size(numel, (size_t)v, &numel))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': element count overflows", lb, nm);
    }
    t->numel = numel;
    if (!tbert_mul_size(numel, tbert_dtype_size(t->dtype), &t->nbytes))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': byte size overflows", lb, nm);
    if (!off) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': missing data_offsets", lb, nm);
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) || !json_uint(off->child->next, &en))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': data_offsets is not a pair of non-negative integers", lb, nm);
    if (b > en)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                          lb, nm, b, en);
    if (en > st->data_len)
        return tbert_fail(err, TBERT_E_FORMAT,
                          "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are outside the data area (%zu bytes)", lb,
                          nm, b, en, st->data_len);
    if (en - b != t->nbytes)
        return tbert_fail(err, TBERT_E_FORMAT,
                          "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but dtype %s and shape need %zu", lb, nm,
                          en - b, tbert_dtype_name(t->dtype), t->nbytes);
    t->offset = (size_t)b;
    t->data = st->data + t->offset;
    return TBERT_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const tbert_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

/* qsort_r is a GNU extension; the name order is computed with a small context struct instead. */
typedef struct {
    int idx;
    const char *name;
} name_ref;

static int cmp_name_ref(const void *a, const void *b) { return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name); }

static tbert_status index_names(tbert_safetensors *st, tbert_error *err) {
    name_ref *refs = tbert_malloc_array((size_t)st->n, sizeof *refs);
    st->by_name = tbert_malloc_array((size_t)st->n, sizeof *st->by_name);
    if (!refs || !st->by_name) {
        free(refs);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory indexing %d tensors", st->label, st->n);
    }
    for (int i = 0; i < st->n; i++) refs[i] = (name_ref){i, st->t[i].name};
    qsort(refs, (size_t)st->n, sizeof *refs, cmp_name_ref);
    tbert_status s = TBERT_OK;
    for (int i = 0; i < st->n; i++) {
        st->by_name[i] = refs[i].idx;
        if (i > 0 && !strcmp(refs[i].name, refs[i - 1].name) && s == TBERT_OK)
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' appears twice in the header", st->label, refs[i].name);
    }
    free(refs);
    return s;
}

/* Tensors must tile the data area exactly: the reference implementation's rule. */
static tbert_status check_tiling(const tbert_safetensors *st, tbert_error *err) {
    size_t expect = 0;
    for (int i = 0; i < st->n; i++) {
        const tbert_st_tensor *t = &st->t[i];
        if (t->offset < expect)
            return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' (bytes %zu..%zu) overlaps tensor '%s'", st->label, t->name,
                              t->offset, t->offset + t->nbytes, st->t[i - 1].name);
        if (t->offset > expect)
            return tbert_fail(err, TBERT_E_FORMAT, "%s: hole of %zu bytes in the data area before tensor '%s'", st->label,
                              t->offset - expect, t->name);
        expect = t->offset + t->nbytes;
    }
    if (expect != st->data_len)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: data area is %zu bytes but the tensors cover %zu (%zu trailing bytes)",
                          st->label, st->data_len, expect, st->data_len - expect);
    return TBERT_OK;
}

/* cJSON spends ~64 bytes per JSON value, so 100 MB of "[0,0,0,..." would cost gigabytes before any field is
 * checked. The format nests three deep at most (header { tensor { shape [ ), and real headers hold a few
 * JSON values per tensor; a cheap scan enforces both before cJSON allocates anything. */
#define HEADER_MAX_DEPTH 3
#define HEADER_MAX_VALUES (1u << 21)

static tbert_status prescan_header(const char *hdr, size_t hlen, const char *lb, tbert_error *err) {
    int depth = 0;
    size_t values = 1;
    bool in_str = false;
    for (size_t i = 0; i < hlen; i++) {
        char c = hdr[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > HEADER_MAX_DEPTH)
                return tbert_fail(err, TBERT_E_FORMAT, "%s: header nests deeper than the format allows (byte %zu)", lb, 8 + i);
            values++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',') {
            values++;
        }
        if (values > HEADER_MAX_VALUES)
            return tbert_fail(err, TBERT_E_FORMAT, "%s: header holds more than %u JSON values", lb, HEADER_MAX_VALUES);
    }
    return TBERT_OK;
}

static tbert_status parse_header_json(tbert_safetensors *st, const char *hdr, size_t hlen, tbert_error *err) {
    const char *lb = st->label;
    if (hlen == 0 || hdr[0] != '{') return tbert_fail(err, TBERT_E_FORMAT, "%s: header does not start with '{'", lb);
    size_t bad = utf8_valid_prefix((const uint8_t *)hdr, hlen);
    if (bad != hlen) return tbert_fail(err, TBERT_E_FORMAT, "%s: header is not valid UTF-8 (byte %zu)", lb, 8 + bad);
    tbert_status pre = prescan_header(hdr, hlen, lb, err);
    if (pre) return pre;
    /* cJSON wants a NUL-terminated string; the copy is bounded by the file size and the header cap */
    char *copy = tbert_strndup(hdr, hlen);
    if (!copy) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for a %zu-byte header", lb, hlen);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(copy, &end, 0);
    if (!root) {
        size_t pos = end && end >= copy ? (size_t)(end - copy) : 0;
        free(copy);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: header is not valid JSON (near byte %zu)", lb, 8 + pos);
    }
    tbert_status s = TBERT_OK;
    for (const char *p = end; (size_t)(p - copy) < hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: header has extra bytes after the JSON object (byte %zu)", lb,
                           8 + (size_t)(p - copy));
            break;
        }
    }
    free(copy);
    if (s == TBERT_OK && !cJSON_IsObject(root)) s = tbert_fail(err, TBERT_E_FORMAT, "%s: header is not a JSON object", lb);
    int count = 0, n_meta_keys = 0;
    if (s == TBERT_OK) {
        for (const cJSON *it = root->child; it; it = it->next) {
            if (!strcmp(it->string, "__metadata__")) n_meta_keys++;
            else count++;
        }
        if (n_meta_keys > 1) s = tbert_fail(err, TBERT_E_FORMAT, "%s: __metadata__ appears twice in the header", lb);
    }
    if (s == TBERT_OK && !(st->t = tbert_calloc_array((size_t)count, sizeof *st->t)))
        s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for %d tensors", lb, count);
    for (const cJSON *it = s == TBERT_OK ? root->child : NULL; it && s == TBERT_OK; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            s = parse_metadata(st, it, err);
            continue;
        }
        tbert_st_tensor *t = &st->t[st->n];
        if (!(t->name = tbert_strdup(it->string))) {
            s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", lb);
            break;
        }
        st->n++;
        s = parse_tensor(st, it, t, err);
    }
    cJSON_Delete(root);
    return s;
}

tbert_status tbert_st_parse(const void *buf, size_t len, const char *label, tbert_safetensors **out, tbert_error *err) {
    *out = NULL;
    if (!label) label = "<buffer>";
    tbert_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->label = tbert_strdup(label))) {
        free(st);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", label);
    }
    st->buf = buf;
    st->len = len;
    tbert_status s = TBERT_OK;
    uint64_t hlen = 0;
    if (len < 8) {
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length (truncated?)", label,
                       len);
    } else {
        const uint8_t *p = buf;
        for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
        if (hlen > TBERT_ST_MAX_HEADER)
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: header length %" PRIu64 " is over the limit of %u bytes", label, hlen,
                           TBERT_ST_MAX_HEADER);
        else if (hlen > len - 8)
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes; truncated?)",
                           label, hlen, len);
    }
    if (s == TBERT_OK) {
        st->data = (const uint8_t *)buf + 8 + hlen;
        st->data_len = len - 8 - (size_t)hlen;
        s = parse_header_json(st, (const char *)buf + 8, (size_t)hlen, err);
    }
    if (s == TBERT_OK) {
        qsort(st->t, (size_t)st->n, sizeof *st->t, cmp_offset); /* the JSON order need not be the file order */
        s = index_names(st, err);
    }
    if (s == TBERT_OK) s = check_tiling(st, err);
    if (s != TBERT_OK) {
        tbert_st_close(st);
        make_printable(err);
        return s;
    }
    *out = st;
    return TBERT_OK;
}

tbert_status tbert_st_open(const char *path, tbert_safetensors **out, tbert_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return tbert_fail(err, TBERT_E_IO, "%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) {
        close(fd);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length (truncated?)", path,
                          len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return tbert_fail(err, TBERT_E_IO, "%s: mmap failed: %s", path, strerror(e));
    tbert_safetensors *st;
    tbert_status s = tbert_st_parse(map, len, path, &st, err);
    if (s != TBERT_OK) {
        munmap(map, len);
        return s;
    }
    st->map = map;
    *out = st;
    return TBERT_OK;
}

int tbert_st_count(const tbert_safetensors *st) { return st->n; }
const tbert_st_tensor *tbert_st_at(const tbert_safetensors *st, int i) { return i >= 0 && i < st->n ? &st->t[i] : NULL; }
const char *tbert_st_path(const tbert_safetensors *st) { return st->label; }
const void *tbert_st_bytes(const tbert_safetensors *st, size_t *len) {
    if (len) *len = st->len;
    return st->buf;
}

const tbert_st_tensor *tbert_st_find(const tbert_safetensors *st, const char *name) {
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->t[st->by_name[mid]].name);
        if (c == 0) return &st->t[st->by_name[mid]];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *tbert_st_meta(const tbert_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta_key[i], key)) return st->meta_val[i];
    return NULL;
}
int tbert_st_meta_count(const tbert_safetensors *st) { return st->n_meta; }
const char *tbert_st_meta_key(const tbert_safetensors *st, int i) { return i >= 0 && i < st->n_meta ? st->meta_key[i] : NULL; }

/* ---- conversion to float32 ------------------------------------------------------------------- */

float tbert_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
    if (exp == 0) {
        float f = (float)mant * 5.9604644775390625e-8f; /* subnormal: mant * 2^-24, exact in float */
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

float tbert_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

uint16_t tbert_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float f64_to_f32(double d) {
    /* out-of-range double -> float conversion is undefined behaviour in C: saturate to infinity */
    if (isnan(d)) return NAN;
    if (d > (double)FLT_MAX) return INFINITY;
    if (d < -(double)FLT_MAX) return -INFINITY;
    return (float)d;
}

tbert_status tbert_st_to_f32(const tbert_safetensors *st, const tbert_st_tensor *t, float *out, tbert_error *err) {
    const uint8_t *p = t->data;
    size_t n = t->numel;
    switch (t->dtype) {
    case TBERT_DT_F32:
        if (n) memcpy(out, p, n * 4);
        return TBERT_OK;
    case TBERT_DT_F16:
    case TBERT_DT_BF16: {
        float (*cv)(uint16_t) = t->dtype == TBERT_DT_F16 ? tbert_f16_to_f32 : tbert_bf16_to_f32;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2); /* the data may be unaligned; the file is little-endian like the host */
            out[i] = cv(h);
        }
        return TBERT_OK;
    }
    case TBERT_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = f64_to_f32(d);
        }
        return TBERT_OK;
    default:
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: tensor '%s': dtype %s is not a floating-point type", st ? st->label : "?",
                          t->name, tbert_dtype_name(t->dtype));
    }
}

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    tbert_dtype dtype;
    int ndim;
    int64_t shape[TBERT_ST_MAX_DIMS];
    void *data;
    size_t nbytes;
} writer_entry;

struct tbert_st_writer {
    writer_entry *e;
    int n, cap;
    char **mkey, **mval;
    int n_meta, meta_cap;
};

tbert_st_writer *tbert_st_writer_new(void) { return calloc(1, sizeof(tbert_st_writer)); }

void tbert_st_writer_free(tbert_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].data);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->e);
    free(w->mkey);
    free(w->mval);
    free(w);
}

tbert_status tbert_st_writer_add(tbert_st_writer *w, const char *name, tbert_dtype dtype, int ndim, const int64_t *shape,
                                 const void *data, tbert_error *err) {
    if (!name || !*name || !strcmp(name, "__metadata__"))
        return tbert_fail(err, TBERT_E_ARG, "safetensors writer: invalid tensor name '%s'", name ? name : "(null)");
    if ((unsigned)dtype >= TBERT_DT_COUNT) return tbert_fail(err, TBERT_E_ARG, "safetensors writer: tensor '%s': bad dtype", name);
    if (ndim < 0 || ndim > TBERT_ST_MAX_DIMS)
        return tbert_fail(err, TBERT_E_ARG, "safetensors writer: tensor '%s': %d dimensions (0..%d allowed)", name, ndim,
                          TBERT_ST_MAX_DIMS);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) return tbert_fail(err, TBERT_E_ARG, "safetensors writer: tensor '%s' added twice", name);
    size_t numel = 1, nbytes;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || !tbert_mul_size(numel, (size_t)shape[d], &numel))
            return tbert_fail(err, TBERT_E_ARG, "safetensors writer: tensor '%s': bad shape", name);
    }
    if (!tbert_mul_size(numel, tbert_dtype_size(dtype), &nbytes))
        return tbert_fail(err, TBERT_E_ARG, "safetensors writer: tensor '%s': size overflows", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        writer_entry *ne = tbert_realloc_array(w->e, (size_t)cap, sizeof *ne);
        if (!ne) return tbert_fail(err, TBERT_E_NOMEM, "safetensors writer: out of memory");
        w->e = ne;
        w->cap = cap;
    }
    writer_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = tbert_strdup(name);
    e->data = malloc(nbytes ? nbytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return tbert_fail(err, TBERT_E_NOMEM, "safetensors writer: tensor '%s': out of memory for %zu bytes", name, nbytes);
    }
    if (nbytes) memcpy(e->data, data, nbytes);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->nbytes = nbytes;
    w->n++;
    return TBERT_OK;
}

tbert_status tbert_st_writer_meta(tbert_st_writer *w, const char *key, const char *value, tbert_error *err) {
    if (!key || !value) return tbert_fail(err, TBERT_E_ARG, "safetensors writer: NULL metadata key or value");
    char *v = tbert_strdup(value);
    if (!v) return tbert_fail(err, TBERT_E_NOMEM, "safetensors writer: out of memory");
    for (int i = 0; i < w->n_meta; i++) {
        if (!strcmp(w->mkey[i], key)) { /* a key set twice keeps the last value */
            free(w->mval[i]);
            w->mval[i] = v;
            return TBERT_OK;
        }
    }
    if (w->n_meta == w->meta_cap) {
        int cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **nk = tbert_realloc_array(w->mkey, (size_t)cap, sizeof *nk);
        if (nk) w->mkey = nk;
        char **nv = nk ? tbert_realloc_array(w->mval, (size_t)cap, sizeof *nv) : NULL;
        if (nv) w->mval = nv;
        if (!nk || !nv) {
            free(v);
            return tbert_fail(err, TBERT_E_NOMEM, "safetensors writer: out of memory");
        }
        w->meta_cap = cap;
    }
    if (!(w->mkey[w->n_meta] = tbert_strdup(key))) {
        free(v);
        return tbert_fail(err, TBERT_E_NOMEM, "safetensors writer: out of memory");
    }
    w->mval[w->n_meta++] = v;
    return TBERT_OK;
}

/* Integers are emitted as raw JSON text so that no value passes through a double and an exponent. */
static bool add_raw_uint(cJSON *arr, uint64_t v) {
    char num[32];
    snprintf(num, sizeof num, "%" PRIu64, v);
    cJSON *item = cJSON_CreateRaw(num);
    return item && cJSON_AddItemToArray(arr, item);
}

static char *build_header(const tbert_st_writer *w) {
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && w->n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (int i = 0; ok && i < w->n_meta; i++) ok = cJSON_AddStringToObject(meta, w->mkey[i], w->mval[i]) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < w->n; i++) {
        const writer_entry *e = &w->e[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        ok = t && cJSON_AddStringToObject(t, "dtype", tbert_dtype_name(e->dtype));
        cJSON *shape = ok ? cJSON_AddArrayToObject(t, "shape") : NULL;
        ok = ok && shape;
        for (int d = 0; ok && d < e->ndim; d++) ok = add_raw_uint(shape, (uint64_t)e->shape[d]);
        cJSON *offs = ok ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = ok && offs && add_raw_uint(offs, off) && add_raw_uint(offs, off + e->nbytes);
        off += e->nbytes;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

tbert_status tbert_st_writer_save(tbert_st_writer *w, const char *path, tbert_error *err) {
    char *json = build_header(w);
    if (!json) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory building the safetensors header", path);
    size_t jlen = strlen(json), pad = (8 - jlen % 8) % 8, hlen = jlen + pad;
    /* the data area then starts at a multiple of 8, so F32/I64 tensors at aligned offsets stay aligned */
    uint8_t *head = malloc(8 + hlen);
    if (!head) {
        free(json);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < 8; i++) head[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(head + 8, json, jlen);
    memset(head + 8 + jlen, ' ', pad);
    free(json);
    tbert_atomic_file *f;
    tbert_status s = tbert_atomic_open(path, &f, err);
    if (s == TBERT_OK) {
        s = tbert_atomic_write(f, head, 8 + hlen, err);
        for (int i = 0; s == TBERT_OK && i < w->n; i++) s = tbert_atomic_write(f, w->e[i].data, w->e[i].nbytes, err);
        if (s == TBERT_OK) s = tbert_atomic_commit(f, err);
        else tbert_atomic_abort(f);
    }
    free(head);
    return s;
}
