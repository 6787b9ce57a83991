/* safetensors reader: a table of hand-built corrupt files, each expecting one specific error (the way the
 * reference implementation's and gguf's tests do), valid edge cases, exact half/bfloat16 conversion, and the
 * writer: byte-exact header against a hand-written expectation, round trip, atomic replacement, and a
 * 12-byte file claiming a huge header (no huge allocation). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/safetensors.h"

/* 8-byte little-endian length + header + data_len bytes of data (value i & 0xFF). */
static uint8_t *make_buf(const char *header, size_t data_len, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (uint8_t)i;
    return b;
}

typedef struct {
    const char *what;
    const char *header;
    size_t data_len;
    tbert_status code;
    const char *needle; /* must occur in the message */
} corrupt_case;

static const corrupt_case cases[] = {
    {"not JSON", "{\"a\": ", 0, TBERT_E_FORMAT, "not valid JSON"},
    {"array header", "[1, 2]", 0, TBERT_E_FORMAT, "does not start with '{'"},
    {"leading space", " {}", 0, TBERT_E_FORMAT, "does not start with '{'"},
    {"empty header", "", 0, TBERT_E_FORMAT, "does not start with '{'"},
    {"text after JSON", "{} x", 0, TBERT_E_FORMAT, "extra bytes after the JSON object"},
    {"invalid UTF-8", "{\"a\xff\": 1}", 0, TBERT_E_FORMAT, "not valid UTF-8"},
    {"overlong UTF-8", "{\"a\xc0\xaf\": 1}", 0, TBERT_E_FORMAT, "not valid UTF-8"},
    {"entry not object", "{\"a\": 5}", 0, TBERT_E_FORMAT, "tensor 'a': entry is not a JSON object"},
    {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT, "tensor 'a': missing dtype"},
    {"dtype not string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "dtype is not a string"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, TBERT_E_UNSUPPORTED,
     "unknown dtype 'Q4'"},
    {"lowercase dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, TBERT_E_UNSUPPORTED,
     "unknown dtype 'f32'"},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT, "missing shape"},
    {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "shape is not an array"},
    {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "shape[0] is not a non-negative integer"},
    {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "shape[1] is not a non-negative integer"},
    {"string dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "shape[0] is not a non-negative integer"},
    {"dim beyond 2^53", "{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4,
     TBERT_E_FORMAT, "shape[0] is not a non-negative integer"},
    {"nine dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, TBERT_E_FORMAT,
     "9 dimensions"},
    {"element count overflow",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "element count overflows"},
    {"byte size overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,536870912],\"data_offsets\":[0,4]}}", 4,
     TBERT_E_FORMAT, "byte size overflows"},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, TBERT_E_FORMAT, "missing data_offsets"},
    {"one offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, TBERT_E_FORMAT,
     "not a pair of non-negative integers"},
    {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, TBERT_E_FORMAT,
     "not a pair of non-negative integers"},
    {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, TBERT_E_FORMAT,
     "not a pair of non-negative integers"},
    {"offsets reversed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, TBERT_E_FORMAT,
     "end before they begin"},
    {"offset past data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, TBERT_E_FORMAT,
     "outside the data area (4 bytes)"},
    {"huge offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9007199254740988,9007199254740992]}}", 4,
     TBERT_E_FORMAT, "outside the data area"},
    {"nbytes mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "span 4 bytes but dtype F32 and shape need 8"},
    {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[4,12]}}",
     12, TBERT_E_FORMAT, "tensor 'b' (bytes 4..12) overlaps tensor 'a'"},
    {"same range twice", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"I32\",\"shape\":[1],"
                         "\"data_offsets\":[0,4]}}",
     4, TBERT_E_FORMAT, "overlaps"},
    {"hole", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[8,12]}}",
     12, TBERT_E_FORMAT, "hole of 4 bytes in the data area before tensor 'b'"},
    {"hole at start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, TBERT_E_FORMAT,
     "hole of 4 bytes in the data area before tensor 'a'"},
    {"trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, TBERT_E_FORMAT,
     "4 trailing bytes"},
    {"data without tensors", "{}", 3, TBERT_E_FORMAT, "3 trailing bytes"},
    {"duplicate name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                       "\"data_offsets\":[4,8]}}",
     8, TBERT_E_FORMAT, "tensor 'a' appears twice"},
    {"newline in a name", "{\"a\\nb\\u0001\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, TBERT_E_FORMAT,
     "tensor 'a?b?': data_offsets span 8 bytes"},
    {"nested too deep", "{\"a\":{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}}", 4, TBERT_E_FORMAT,
     "header nests deeper than the format allows (byte 37)"},
    {"brackets inside strings do not count", "{\"[[[{{\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"\\\"[[\":5}", 4,
     TBERT_E_FORMAT, "tensor '\"[[': entry is not a JSON object"},
    {"metadata value not string", "{\"__metadata__\":{\"k\":5}}", 0, TBERT_E_FORMAT, "__metadata__ value of 'k' is not a string"},
    {"metadata not object", "{\"__metadata__\":[\"k\"]}", 0, TBERT_E_FORMAT, "__metadata__ is not a JSON object"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, TBERT_E_FORMAT, "__metadata__ appears twice"},
    {"metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, TBERT_E_FORMAT, "key 'k' appears twice"},
};

static void test_corrupt_table(void **state) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const corrupt_case *c = &cases[i];
        size_t len;
        uint8_t *b = make_buf(c->header, c->data_len, &len);
        tbert_safetensors *st = (tbert_safetensors *)1;
        tbert_error err = {0};
        tbert_status s = tbert_st_parse(b, len, "case.safetensors", &st, &err);
        if (s != c->code || !strstr(err.msg, c->needle) || strncmp(err.msg, "case.safetensors: ", 18) != 0 ||
            strchr(err.msg, '\n')) {
            fprintf(stderr, "case '%s': got %s '%s', want %s containing '%s'\n", c->what, tbert_status_name(s), err.msg,
                    tbert_status_name(c->code), c->needle);
            fail();
        }
        assert_null(st);
        free(b);
    }
}

/* A header of millions of tiny JSON values is refused before cJSON builds a tree of them (about 64 bytes
 * each): memory use stays proportional to what a real header needs. */
static void test_value_count_cap(void **state) {
    size_t n = (1u << 21) + 10, cap = 2 * n + 128;
    char *h = malloc(cap);
    assert_non_null(h);
    size_t pos = (size_t)snprintf(h, cap, "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,0],\"shape\":[0");
    for (size_t i = 1; i < n; i++) {
        h[pos++] = ',';
        h[pos++] = '0';
    }
    memcpy(h + pos, "]}}", 4);
    size_t len;
    uint8_t *b = make_buf(h, 0, &len);
    tbert_safetensors *st;
    tbert_error err;
    assert_int_equal(tbert_st_parse(b, len, "wide.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "wide.st: header holds more than 2097152 JSON values"));
    free(b);
    free(h);
}

/* Length-field cases need bytes make_buf cannot express. */
static void test_length_field(void **state) {
    tbert_safetensors *st;
    tbert_error err;
    /* truncated: fewer than 8 bytes */
    uint8_t five[5] = {2, 0, 0, 0, 0};
    assert_int_equal(tbert_st_parse(five, sizeof five, "t.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "t.st: file is 5 bytes, too short"));
    assert_int_equal(tbert_st_parse(five, 0, "t.st", &st, &err), TBERT_E_FORMAT);
    /* a 12-byte file claiming a 2^60-byte header: refused by the cap, no allocation of that size */
    uint8_t twelve[12] = {0, 0, 0, 0, 0, 0, 0, 0x10, '{', '}', ' ', ' '};
    assert_int_equal(tbert_st_parse(twelve, sizeof twelve, "t.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "header length 1152921504606846976 is over the limit of 100000000 bytes"));
    /* all-ones length */
    memset(twelve, 0xFF, 8);
    assert_int_equal(tbert_st_parse(twelve, sizeof twelve, "t.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "over the limit"));
    /* just under the cap but beyond the file */
    uint64_t h = 100000000;
    for (int i = 0; i < 8; i++) twelve[i] = (uint8_t)(h >> (8 * i));
    assert_int_equal(tbert_st_parse(twelve, sizeof twelve, "t.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "header length 100000000 runs past the end of the file (12 bytes"));
    /* one byte too long */
    uint8_t b[12] = {5, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    assert_int_equal(tbert_st_parse(b, sizeof b, "t.st", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "runs past the end"));
    /* exact: 4-byte header "{}  " is a valid empty file */
    b[0] = 4;
    assert_int_equal(tbert_st_parse(b, sizeof b, "t.st", &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_count(st), 0);
    tbert_st_close(st);
}

/* A 12-byte file on disk claiming a huge header. Under ASan (CI) an allocation of the claimed size would
 * abort the test ("requested allocation size exceeds maximum"), so passing there proves none is tried. */
static void test_huge_header_file(void **state) {
    char dir[] = "/tmp/tbert_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/huge.safetensors", dir);
    uint8_t twelve[12] = {0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, '{', '}', ' ', ' '};
    tbert_error err;
    assert_int_equal(tbert_write_file_atomic(path, twelve, sizeof twelve, &err), TBERT_OK);
    tbert_safetensors *st;
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "over the limit"));
    /* a header just under the cap in a 12-byte file: no allocation sized by the claim either */
    uint64_t h = 99999999;
    for (int i = 0; i < 8; i++) twelve[i] = (uint8_t)(h >> (8 * i));
    assert_int_equal(tbert_write_file_atomic(path, twelve, sizeof twelve, &err), TBERT_OK);
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "runs past the end"));
    /* missing file and a folder: I/O errors naming the path */
    assert_int_equal(tbert_st_open(dir, &st, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "not a regular file"));
    unlink(path);
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "cannot open"));
    rmdir(dir);
}

static void test_valid_edge_cases(void **state) {
    tbert_safetensors *st;
    tbert_error err;
    size_t len;
    /* JSON order differs from file order; scalar; zero-size tensor; padding; metadata; unknown field */
    const char *h = "{\"b\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[4,8],\"extra\":1},"
                    "\"z\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[8,8]},"
                    "\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9\"},"
                    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}   \n";
    uint8_t *b = make_buf(h, 8, &len);
    assert_int_equal(tbert_st_parse(b, len, "ok.st", &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_count(st), 3);
    assert_string_equal(tbert_st_at(st, 0)->name, "a"); /* file order */
    assert_string_equal(tbert_st_at(st, 1)->name, "b");
    assert_string_equal(tbert_st_at(st, 2)->name, "z");
    const tbert_st_tensor *t = tbert_st_find(st, "b");
    assert_non_null(t);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(t->dtype, TBERT_DT_I32);
    assert_ptr_equal(t->data, b + len - 4);
    t = tbert_st_find(st, "z");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->shape[1], 3);
    assert_null(tbert_st_find(st, "c"));
    assert_null(tbert_st_find(st, "__metadata__"));
    assert_int_equal(tbert_st_meta_count(st), 2);
    assert_string_equal(tbert_st_meta(st, "format"), "pt");
    assert_string_equal(tbert_st_meta(st, "note"), "caf\xc3\xa9");
    assert_null(tbert_st_meta(st, "nope"));
    /* I32 is not convertible */
    float f[2];
    assert_int_equal(tbert_st_to_f32(st, tbert_st_find(st, "b"), f, &err), TBERT_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "tensor 'b': dtype I32 is not a floating-point type"));
    tbert_st_close(st);
    free(b);
    /* an empty file "{}" and null metadata */
    b = make_buf("{\"__metadata__\":null}", 0, &len);
    assert_int_equal(tbert_st_parse(b, len, "ok.st", &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_count(st), 0);
    assert_int_equal(tbert_st_meta_count(st), 0);
    tbert_st_close(st);
    free(b);
}

static void test_half_conversion_exact(void **state) {
    /* bit patterns and their values from the IEEE 754 binary16 / bfloat16 definitions */
    static const struct {
        uint16_t bits;
        float value;
    } f16[] = {
        {0x0000, 0.0f},         {0x3C00, 1.0f},         {0xC000, -2.0f},          {0x3555, 0.333251953125f},
        {0x7BFF, 65504.0f},     {0x0400, 6.103515625e-05f}, {0x0001, 5.9604644775390625e-08f},
        {0x03FF, 6.0975551605224609375e-05f}, {0x8001, -5.9604644775390625e-08f},
    };
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) assert_true(tbert_f16_to_f32(f16[i].bits) == f16[i].value);
    assert_true(signbit(tbert_f16_to_f32(0x8000)) && tbert_f16_to_f32(0x8000) == 0.0f);
    assert_true(isinf(tbert_f16_to_f32(0x7C00)) && tbert_f16_to_f32(0x7C00) > 0);
    assert_true(isinf(tbert_f16_to_f32(0xFC00)) && tbert_f16_to_f32(0xFC00) < 0);
    assert_true(isnan(tbert_f16_to_f32(0x7E00)));
    assert_true(tbert_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(tbert_bf16_to_f32(0xC049) == -3.140625f);
    assert_true(tbert_bf16_to_f32(0x0001) == 9.18354961579912e-41f); /* float subnormal 2^-133 */
    assert_true(isnan(tbert_bf16_to_f32(0x7FC0)));

    /* through a file, at an odd (unaligned) address, plus F64 */
    const char *h = "{\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                    "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[6,22]}}";
    size_t hl = strlen(h), len = 1 + 8 + hl + 22;
    uint8_t *raw = malloc(len);
    assert_non_null(raw);
    uint8_t *b = raw + 1;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, h, hl);
    uint16_t hv[3] = {0x3C00, 0xC000, 0x0001};
    double dv[2] = {0.1, -1e300};
    memcpy(b + 8 + hl, hv, 6);
    memcpy(b + 8 + hl + 6, dv, 16);
    tbert_safetensors *st;
    tbert_error err;
    assert_int_equal(tbert_st_parse(b, len - 1, "half.st", &st, &err), TBERT_OK);
    float out[3];
    assert_int_equal(tbert_st_to_f32(st, tbert_st_find(st, "h"), out, &err), TBERT_OK);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 5.9604644775390625e-08f);
    assert_int_equal(tbert_st_to_f32(st, tbert_st_find(st, "d"), out, &err), TBERT_OK);
    assert_true(out[0] == 0.1f);
    assert_true(isinf(out[1]) && out[1] < 0); /* saturates, no undefined conversion */
    tbert_st_close(st);
    free(raw);
}

/* The writer's exact bytes for a small file, written out by hand from the format description: JSON header
 * (metadata first, tensors in insertion order, integers without exponents) padded with spaces to 8 bytes. */
static void test_writer_exact_bytes(void **state) {
    char dir[] = "/tmp/tbert_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    tbert_error err;
    tbert_st_writer *w = tbert_st_writer_new();
    assert_non_null(w);
    float x[2] = {1.0f, -2.0f};
    int64_t shape1[1] = {2};
    assert_int_equal(tbert_st_writer_add(w, "x", TBERT_DT_F32, 1, shape1, x, &err), TBERT_OK);
    uint8_t u = 7;
    assert_int_equal(tbert_st_writer_add(w, "s", TBERT_DT_U8, 0, NULL, &u, &err), TBERT_OK);
    assert_int_equal(tbert_st_writer_meta(w, "k", "v\"q", &err), TBERT_OK);
    assert_int_equal(tbert_st_writer_save(w, path, &err), TBERT_OK);
    tbert_st_writer_free(w);
    const char *json = "{\"__metadata__\":{\"k\":\"v\\\"q\"},\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[8,9]}}";
    size_t jl = strlen(json), hl = (jl + 7) / 8 * 8;
    char *got;
    size_t got_len;
    assert_int_equal(tbert_read_file(path, 0, &got, &got_len, &err), TBERT_OK);
    assert_int_equal(got_len, 8 + hl + 9);
    uint64_t stored = 0;
    for (int i = 7; i >= 0; i--) stored = (stored << 8) | (uint8_t)got[i];
    assert_int_equal(stored, hl);
    assert_memory_equal(got + 8, json, jl);
    for (size_t i = jl; i < hl; i++) assert_int_equal(got[8 + i], ' ');
    assert_memory_equal(got + 8 + hl, x, 8);
    assert_int_equal((uint8_t)got[8 + hl + 8], 7);
    free(got);
    unlink(path);
    rmdir(dir);
}

static void test_writer_round_trip_and_atomic(void **state) {
    tu_rng rng = {tu_seed_from_env("test_safetensors")};
    char dir[] = "/tmp/tbert_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    tbert_error err;
    enum { N = 5 };
    const char *names[N] = {"w.weight", "bias", "steps", "empty", "h"};
    tbert_dtype dts[N] = {TBERT_DT_F32, TBERT_DT_F32, TBERT_DT_I64, TBERT_DT_F32, TBERT_DT_F16};
    int nds[N] = {2, 1, 0, 2, 3};
    int64_t shapes[N][3] = {{3, 5}, {5}, {0}, {0, 4}, {2, 1, 3}};
    size_t sizes[N] = {60, 20, 8, 0, 12};
    uint8_t *data[N];
    for (int i = 0; i < N; i++) {
        data[i] = malloc(sizes[i] + 1);
        assert_non_null(data[i]);
        for (size_t k = 0; k < sizes[i]; k++) data[i][k] = (uint8_t)tu_next(&rng);
    }
    tbert_st_writer *w = tbert_st_writer_new();
    for (int i = 0; i < N; i++) assert_int_equal(tbert_st_writer_add(w, names[i], dts[i], nds[i], shapes[i], data[i], &err), TBERT_OK);
    /* bad additions are refused without changing the writer */
    assert_int_equal(tbert_st_writer_add(w, "bias", TBERT_DT_F32, 1, shapes[1], data[1], &err), TBERT_E_ARG);
    assert_int_equal(tbert_st_writer_add(w, "__metadata__", TBERT_DT_F32, 1, shapes[1], data[1], &err), TBERT_E_ARG);
    int64_t neg[1] = {-1};
    assert_int_equal(tbert_st_writer_add(w, "neg", TBERT_DT_F32, 1, neg, data[1], &err), TBERT_E_ARG);
    assert_int_equal(tbert_st_writer_meta(w, "recipe", "{\"a\": 1}", &err), TBERT_OK);
    assert_int_equal(tbert_st_writer_meta(w, "version", "0", &err), TBERT_OK);
    assert_int_equal(tbert_st_writer_meta(w, "version", "1", &err), TBERT_OK); /* last value wins */
    assert_int_equal(tbert_st_writer_save(w, path, &err), TBERT_OK);

    tbert_safetensors *st;
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_count(st), N);
    for (int i = 0; i < N; i++) {
        const tbert_st_tensor *t = tbert_st_find(st, names[i]);
        assert_non_null(t);
        assert_int_equal(t->dtype, dts[i]);
        assert_int_equal(t->ndim, nds[i]);
        for (int d = 0; d < nds[i]; d++) assert_int_equal(t->shape[d], shapes[i][d]);
        assert_int_equal(t->nbytes, sizes[i]);
        if (sizes[i]) assert_memory_equal(t->data, data[i], sizes[i]);
    }
    for (int i = 0; i < N; i++) assert_string_equal(tbert_st_at(st, i)->name, names[i]); /* insertion order */
    assert_int_equal(tbert_st_meta_count(st), 2);
    assert_string_equal(tbert_st_meta(st, "recipe"), "{\"a\": 1}");
    assert_string_equal(tbert_st_meta(st, "version"), "1");
    size_t flen;
    const uint8_t *bytes = tbert_st_bytes(st, &flen);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | bytes[i];
    assert_int_equal(hl % 8, 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal((size_t)sb.st_size, flen);
    tbert_st_close(st);

    /* atomic: a save that fails half-way (file size limit) leaves the old file and no temp file behind */
    char *before;
    size_t before_len;
    assert_int_equal(tbert_read_file(path, 0, &before, &before_len, &err), TBERT_OK);
    tbert_st_writer *big = tbert_st_writer_new();
    size_t nbig = 1 << 16;
    float *zeros = calloc(nbig, sizeof *zeros);
    assert_non_null(zeros);
    int64_t bshape[1] = {(int64_t)nbig};
    assert_int_equal(tbert_st_writer_add(big, "big", TBERT_DT_F32, 1, bshape, zeros, &err), TBERT_OK);
    struct rlimit old_lim, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_lim), 0);
    lim = old_lim;
    lim.rlim_cur = 4096;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    tbert_status s = tbert_st_writer_save(big, path, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_lim), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(s, TBERT_E_IO);
    assert_non_null(strstr(err.msg, "write failed"));
    char *after;
    size_t after_len;
    assert_int_equal(tbert_read_file(path, 0, &after, &after_len, &err), TBERT_OK);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_false(tbert_is_regular_file(tmp));
    /* and the same writer then succeeds without the limit */
    assert_int_equal(tbert_st_writer_save(big, path, &err), TBERT_OK);
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_find(st, "big")->numel, nbig);
    tbert_st_close(st);

    free(before);
    free(after);
    free(zeros);
    tbert_st_writer_free(big);
    tbert_st_writer_free(w);
    for (int i = 0; i < N; i++) free(data[i]);
    unlink(path);
    rmdir(dir);
}

/* The default model as published (written by Python's safetensors): parses, and its I64 position_ids is there. */
static void test_reads_minilm_when_cached(void **state) {
    char cache[1024], path[1100];
    tbert_cache_dir(cache, sizeof cache);
    snprintf(path, sizeof path, "%s/models/minilm/model.safetensors", cache);
    if (!tbert_is_regular_file(path)) TU_SKIP_PART("the MiniLM model is not in the cache (models/fetch.sh minilm)");
    tbert_safetensors *st;
    tbert_error err;
    assert_int_equal(tbert_st_open(path, &st, &err), TBERT_OK);
    assert_int_equal(tbert_st_count(st), 104); /* len(safetensors.numpy.load_file(...)) */
    const tbert_st_tensor *p = tbert_st_find(st, "embeddings.position_ids");
    assert_non_null(p);
    assert_int_equal(p->dtype, TBERT_DT_I64);
    assert_int_equal(p->shape[0], 1);
    assert_int_equal(p->shape[1], 512);
    int64_t v;
    memcpy(&v, (const uint8_t *)p->data + 8 * 511, 8);
    assert_int_equal(v, 511);
    tbert_st_close(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corrupt_table),
        cmocka_unit_test(test_length_field),
        cmocka_unit_test(test_value_count_cap),
        cmocka_unit_test(test_huge_header_file),
        cmocka_unit_test(test_valid_edge_cases),
        cmocka_unit_test(test_half_conversion_exact),
        cmocka_unit_test(test_writer_exact_bytes),
        cmocka_unit_test(test_writer_round_trip_and_atomic),
        cmocka_unit_test(test_reads_minilm_when_cached),
    };
    char minilm[1024];
    return tu_exit_status(cmocka_run_group_tests(tests, NULL, NULL), !tu_minilm_path("model.safetensors", minilm, sizeof minilm));
}
