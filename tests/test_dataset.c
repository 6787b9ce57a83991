/* Tables: TSV/CSV/JSONL parsing, format and header detection, column choice, errors naming file and line,
 * and the real SMS and seed files from ../shared/data (skipped when absent). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/dataset.h"

static tbert_status parse(const char *s, tbert_table_format fmt, const tbert_table_opts *o, tbert_table *t,
                          tbert_error *err) {
    return tbert_table_parse(s, strlen(s), "t.txt", fmt, o, t, err);
}

static void test_tsv_no_quoting(void **state) {
    tbert_table t;
    tbert_error err;
    const char *s = "ham\t\"quoted, not special\"\nspam\tfree \"x\r\n\nham\ta,b,c\n";
    assert_int_equal(parse(s, TBERT_TABLE_TSV, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 3);
    assert_string_equal(t.label[0], "ham");
    assert_string_equal(t.text[0], "\"quoted, not special\"");
    assert_int_equal(t.text_len[0], 21);
    assert_string_equal(t.text[1], "free \"x"); /* CR of a CRLF line end dropped */
    assert_string_equal(t.text[2], "a,b,c");
    assert_int_equal(t.line[2], 4); /* the empty line 3 is skipped but counted */
    assert_int_equal(t.offset[0], 0);
    assert_int_equal(t.offset[1], 26);
    assert_int_equal(t.offset[2], 41);
    tbert_table_free(&t);
}

static void test_csv_rfc4180(void **state) {
    tbert_table t;
    tbert_error err;
    const char *s = "label,text\r\nspam,\"Win, now\"\r\nham,\"line one\r\nline \"\"two\"\"\"\r\nham,plain\r\n";
    assert_int_equal(parse(s, TBERT_TABLE_CSV, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 3); /* "label" occurs nowhere else in column 1: header */
    assert_string_equal(t.text[0], "Win, now");
    assert_string_equal(t.text[1], "line one\r\nline \"two\"");
    assert_string_equal(t.text[2], "plain");
    assert_int_equal(t.line[0], 2);
    assert_int_equal(t.line[1], 3);
    assert_int_equal(t.line[2], 5); /* the quoted line break moved it on */
    assert_int_equal(t.offset[0], 12);
    assert_int_equal(t.offset[2], 59);
    tbert_table_free(&t);
    /* empty fields and a last line without a line break */
    assert_int_equal(parse("ham,\nspam,\"\"\nham,x", TBERT_TABLE_CSV, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 3);
    assert_string_equal(t.text[0], "");
    assert_string_equal(t.text[1], "");
    assert_string_equal(t.text[2], "x");
    tbert_table_free(&t);
}

static void test_csv_errors(void **state) {
    tbert_table t;
    tbert_error err;
    assert_int_equal(parse("ham,ok\nspam,\"never closed\n", TBERT_TABLE_CSV, NULL, &t, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "t.txt:2"));
    assert_non_null(strstr(err.msg, "never closed"));
    assert_int_equal(parse("ham,ok\nspam,\"x\"y\n", TBERT_TABLE_CSV, NULL, &t, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "t.txt:2"));
    /* too few fields */
    assert_int_equal(parse("ham\tok\nham\tfine\nspam\n", TBERT_TABLE_TSV, NULL, &t, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "t.txt:3"));
    assert_non_null(strstr(err.msg, "1 field"));
}

static void test_header_auto(void **state) {
    tbert_table t;
    tbert_error err;
    /* "ham" appears again in the label column: not a header */
    assert_int_equal(parse("ham\ta\nspam\tb\nham\tc\n", TBERT_TABLE_TSV, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 3);
    tbert_table_free(&t);
    /* forced */
    tbert_table_opts o = {.header = TBERT_HEADER_YES};
    assert_int_equal(parse("ham\ta\nspam\tb\nham\tc\n", TBERT_TABLE_TSV, &o, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.text[0], "b");
    tbert_table_free(&t);
    o.header = TBERT_HEADER_NO;
    assert_int_equal(parse("Type\tMessage\nham\ta\n", TBERT_TABLE_TSV, &o, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.label[0], "Type");
    tbert_table_free(&t);
}

static void test_columns(void **state) {
    tbert_table t;
    tbert_error err;
    const char *s = "id,body,class\n1,hello,ham\n2,buy,spam\n";
    tbert_table_opts o = {.text_col = "body", .label_col = "class"};
    assert_int_equal(parse(s, TBERT_TABLE_CSV, &o, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.text[1], "buy");
    assert_string_equal(t.label[1], "spam");
    tbert_table_free(&t);
    tbert_table_opts o2 = {.text_col = "2", .label_col = "3"};
    assert_int_equal(parse(s, TBERT_TABLE_CSV, &o2, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2); /* "class" occurs nowhere else in column 3 */
    assert_string_equal(t.text[0], "hello");
    assert_string_equal(t.label[0], "ham");
    tbert_table_free(&t);
    tbert_table_opts o3 = {.text_col = "nosuch", .label_col = "class"};
    assert_int_equal(parse(s, TBERT_TABLE_CSV, &o3, &t, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "nosuch"));
    assert_non_null(strstr(err.msg, "t.txt"));
    /* unlabelled: one column, text is column 1 */
    tbert_table_opts o4 = {.label_col = "none"};
    assert_int_equal(parse("just text\nmore text\n", TBERT_TABLE_TSV, &o4, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_null(t.label);
    assert_string_equal(t.text[1], "more text");
    tbert_table_free(&t);
    /* label_optional (score): a one-column file is text only; with labels present they are read */
    tbert_table_opts o5 = {.label_optional = true};
    assert_int_equal(parse("just text\nmore, text\n", TBERT_TABLE_TSV, &o5, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_null(t.label);
    assert_string_equal(t.text[1], "more, text");
    tbert_table_free(&t);
    assert_int_equal(parse("ham\ta\nspam\tb\nham\tc\n", TBERT_TABLE_TSV, &o5, &t, &err), TBERT_OK);
    assert_string_equal(t.label[1], "spam");
    assert_string_equal(t.text[1], "b");
    tbert_table_free(&t);
    assert_int_equal(parse("{\"text\":\"a\"}\n{\"text\":\"b\",\"label\":\"spam\"}\n", TBERT_TABLE_JSONL, &o5, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_null(t.label[0]);
    assert_string_equal(t.label[1], "spam");
    tbert_table_free(&t);
}

static void test_jsonl(void **state) {
    tbert_table t;
    tbert_error err;
    const char *s = "{\"text\": \"caf\\u00e9 \\\"x\\\"\", \"label\": \"ham\"}\n\n{\"label\": 1, \"text\": \"b\"}\r\n";
    assert_int_equal(parse(s, TBERT_TABLE_AUTO, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.text[0], "caf\xc3\xa9 \"x\"");
    assert_string_equal(t.label[1], "1");
    assert_int_equal(t.line[1], 3);
    assert_int_equal(t.offset[1], (uint64_t)(strchr(s, '\n') - s) + 2);
    tbert_table_free(&t);
    assert_int_equal(parse("{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"a\"\n", TBERT_TABLE_JSONL, NULL, &t, &err),
                     TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "t.txt:2"));
    assert_int_equal(parse("{\"body\":\"a\",\"label\":\"x\"}\n", TBERT_TABLE_JSONL, NULL, &t, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "\"text\""));
    tbert_table_opts o = {.text_col = "body", .label_col = "y"};
    assert_int_equal(parse("{\"body\":\"a\",\"y\":true}\n", TBERT_TABLE_JSONL, &o, &t, &err), TBERT_OK);
    assert_string_equal(t.label[0], "true");
    tbert_table_free(&t);
}

static void test_detect(void **state) {
    assert_int_equal(tbert_table_detect("a.tsv", "x,y", 3), TBERT_TABLE_TSV);
    assert_int_equal(tbert_table_detect("a.JSONL", "x", 1), TBERT_TABLE_JSONL);
    assert_int_equal(tbert_table_detect("a.csv", "x,y\tz", 5), TBERT_TABLE_CSV);
    assert_int_equal(tbert_table_detect("a.csv", "Type\tMessage", 12), TBERT_TABLE_TSV);
    assert_int_equal(tbert_table_detect("data", "  {\"a\":1}", 9), TBERT_TABLE_JSONL);
    assert_int_equal(tbert_table_detect("data", "ham\tx", 5), TBERT_TABLE_TSV);
    assert_int_equal(tbert_table_detect("data", "ham,x\n\t", 7), TBERT_TABLE_CSV);
    tbert_table_format f;
    tbert_error err;
    assert_int_equal(tbert_table_format_parse("CSV", &f, &err), TBERT_OK);
    assert_int_equal(f, TBERT_TABLE_CSV);
    assert_int_equal(tbert_table_format_parse("xml", &f, &err), TBERT_E_ARG);
    tbert_header_mode h;
    assert_int_equal(tbert_header_mode_parse("no", &h, &err), TBERT_OK);
    assert_int_equal(h, TBERT_HEADER_NO);
    assert_int_equal(tbert_header_mode_parse("maybe", &h, &err), TBERT_E_ARG);
}

static void test_missing_file(void **state) {
    tbert_table t;
    tbert_error err;
    assert_int_equal(tbert_table_read("/nonexistent/x.tsv", NULL, &t, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.tsv"));
}

static void test_hash(void **state) {
    tbert_table a, b;
    tbert_error err;
    char ha[65], hb[65];
    assert_int_equal(parse("ham\tab\nspam\tc\n", TBERT_TABLE_TSV, NULL, &a, &err), TBERT_OK);
    assert_int_equal(parse("ham\ta\nspam\tbc\n", TBERT_TABLE_TSV, NULL, &b, &err), TBERT_OK);
    tbert_table_hash(&a, ha);
    tbert_table_hash(&b, hb);
    assert_int_equal(strlen(ha), 64);
    assert_string_not_equal(ha, hb);
    tbert_table_free(&b);
    assert_int_equal(parse("ham,ab\r\nspam,c\r\n", TBERT_TABLE_CSV, NULL, &b, &err), TBERT_OK);
    tbert_table_hash(&b, hb);
    assert_string_equal(ha, hb); /* same content, other format: same hash */
    tbert_table_free(&a);
    tbert_table_free(&b);
}

static int count_label(const tbert_table *t, const char *l) {
    int c = 0;
    for (int i = 0; i < t->n; i++) c += !strcmp(t->label[i], l);
    return c;
}

static void test_real_sms(void **state) {
    char p[1024];
    if (!tu_shared_path("sms/SMSSpamCollection", p, sizeof p)) TU_SKIP_PART("shared corpus sms/SMSSpamCollection");
    tbert_table t;
    tbert_error err;
    assert_int_equal(tbert_table_read(p, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 5574);
    assert_int_equal(count_label(&t, "ham"), 4827);
    assert_int_equal(count_label(&t, "spam"), 747);
    int quoted = 0;
    for (int i = 0; i < t.n; i++) quoted += t.text[i][0] == '"';
    assert_int_equal(quoted, 54);
    assert_int_equal(t.line[0], 1);
    assert_string_equal(t.label[0], "ham");
    assert_true(!strncmp(t.text[0], "Go until jurong point", 21));
    tbert_table_free(&t);
}

static void test_real_seed(void **state) {
    char p[1024];
    if (!tu_shared_path("seed/spam.csv", p, sizeof p)) TU_SKIP_PART("shared corpus seed/spam.csv");
    tbert_table t;
    tbert_error err;
    assert_int_equal(tbert_table_read(p, NULL, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 656);
    assert_int_equal(count_label(&t, "ham") + count_label(&t, "spam"), 656);
    assert_int_equal(t.line[0], 2);
    assert_true(!strncmp(t.text[0], "Go until jurong point", 21));
    tbert_table_free(&t);
    tbert_table_opts o = {.text_col = "Message", .label_col = "Type"};
    assert_int_equal(tbert_table_read(p, &o, &t, &err), TBERT_OK);
    assert_int_equal(t.n, 656);
    tbert_table_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tsv_no_quoting), cmocka_unit_test(test_csv_rfc4180), cmocka_unit_test(test_csv_errors),
        cmocka_unit_test(test_header_auto),    cmocka_unit_test(test_columns),     cmocka_unit_test(test_jsonl),
        cmocka_unit_test(test_detect),         cmocka_unit_test(test_missing_file), cmocka_unit_test(test_hash),
        cmocka_unit_test(test_real_sms),       cmocka_unit_test(test_real_seed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char p[1024], q[1024];
    return tu_exit_status(rc, !tu_shared_path("sms/SMSSpamCollection", p, sizeof p) || !tu_shared_path("seed/spam.csv", q, sizeof q));
}
