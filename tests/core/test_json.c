/* Tests of src/core/json.c: the strict parser (every refusal with its code and position), the
 * writer (escapes, compact and pretty forms, round trips) and the UTF-8 validator. */
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>
#include "support/ew_test.h"
#include "core/json.h"

/* ---- helpers -------------------------------------------------------------------------------- */

/* Parses s (up to its NUL) into a; fails the test with the parser's message when it refuses. */
static ew_json *parse_ok(ew_arena *a, const char *s)
{
    ew_json *v = NULL;
    ew_error err = {0};
    int rc = ew_json_parse(&v, s, strlen(s), NULL, a, &err);
    if (rc != 0) fail_msg("parse of <%s> failed: %s %s", s, ew_err_name(rc), err.msg);
    assert_non_null(v);
    return v;
}

/* Parses text[0..len) from an exact-size heap copy, so that ASan sees any read past the end, and
 * checks the code and that the message contains `want` (when not NULL). */
static void expect_error_n(const char *text, size_t len, const ew_json_limits *lim, int code,
                           const char *want)
{
    ew_arena a;
    ew_json *v = (ew_json *)1;
    ew_error err = {0};
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, text, len);
    ew_arena_init(&a, NULL, 0);
    int rc = ew_json_parse(&v, copy, len, lim, &a, &err);
    int shown = len > 100 ? 100 : (int)len;
    if (rc != code)
        fail_msg("<%.*s>: got %s (%s), want %s", shown, text, ew_err_name(rc), err.msg,
                 ew_err_name(code));
    assert_int_equal(err.code, code);
    assert_null(v);
    if (want && !strstr(err.msg, want))
        fail_msg("<%.*s>: message \"%s\" lacks \"%s\"", shown, text, err.msg, want);
    assert_true(strlen(err.msg) < 200);
    ew_arena_release(&a);
    free(copy);
}

static void expect_error(const char *text, int code, const char *want)
{
    expect_error_n(text, strlen(text), NULL, code, want);
}

/* Parses the exact-size heap copy of text[0..len) and checks that it is accepted. */
static void expect_ok_n(const char *text, size_t len)
{
    ew_arena a;
    ew_json *v = NULL;
    ew_error err = {0};
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, text, len);
    ew_arena_init(&a, NULL, 0);
    int rc = ew_json_parse(&v, copy, len, NULL, &a, &err);
    if (rc != 0) fail_msg("<%.*s>: %s %s", (int)len, text, ew_err_name(rc), err.msg);
    ew_arena_release(&a);
    free(copy);
}

static bool tree_equal(const ew_json *x, const ew_json *y)
{
    if (x->kind != y->kind || x->count != y->count) return false;
    if ((x->key == NULL) != (y->key == NULL)) return false;
    if (x->key && (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0))
        return false;
    switch (x->kind) {
    case EW_JSON_STRING:
        return x->len == y->len && memcmp(x->str, y->str, x->len) == 0;
    case EW_JSON_NUMBER:
        return x->len == y->len && strcmp(x->str, y->str) == 0 && x->is_int == y->is_int;
    case EW_JSON_ARRAY:
    case EW_JSON_OBJECT:
        for (x = x->child, y = y->child; x && y; x = x->next, y = y->next)
            if (!tree_equal(x, y)) return false;
        return x == NULL && y == NULL;
    default:
        return true;
    }
}

static char *repeat(const char *unit, size_t times, const char *tail)
{
    size_t u = strlen(unit), t = strlen(tail);
    char *s = malloc(u * times + t + 1);
    assert_non_null(s);
    for (size_t i = 0; i < times; i++)
        memcpy(s + i * u, unit, u);
    memcpy(s + u * times, tail, t + 1);
    return s;
}

/* `n` nested arrays: [[[...]]] */
static char *nested_arrays(size_t n)
{
    char *s = malloc(2 * n + 1);
    assert_non_null(s);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = '\0';
    return s;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* An object with n members "k0000000": i, and when dup_last the last name equal to the first. */
static char *big_object(size_t n, bool dup_last, size_t *len)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++) {
        size_t k = dup_last && i == n - 1 ? 0 : i;
        ew_buf_printf(&b, "%s\"k%07zu\":%zu", i ? "," : "", k, i);
    }
    ew_buf_putc(&b, '}');
    return ew_buf_steal(&b, len);
}

/* ---- valid documents ------------------------------------------------------------------------ */

static void test_parse_scalars_at_top_level(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(parse_ok(&a, "null")->kind, EW_JSON_NULL);
    assert_int_equal(parse_ok(&a, "true")->kind, EW_JSON_TRUE);
    assert_int_equal(parse_ok(&a, "false")->kind, EW_JSON_FALSE);
    ew_json *n = parse_ok(&a, " 42 ");
    assert_int_equal(n->kind, EW_JSON_NUMBER);
    assert_true(n->is_int);
    assert_int_equal(n->i64, 42);
    ew_json *s = parse_ok(&a, "\"hi\"");
    assert_int_equal(s->kind, EW_JSON_STRING);
    assert_string_equal(s->str, "hi");
    assert_int_equal(s->len, 2);
    assert_null(s->key);
    assert_null(s->next);
    ew_arena_release(&a);
}

static void test_parse_nested_document_builds_tree(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v = parse_ok(&a, "{\"id\":\"e1\",\"n\":[1,true,null,{\"x\":\"y\"}],\"o\":{}}");
    assert_int_equal(v->kind, EW_JSON_OBJECT);
    assert_int_equal(v->count, 3);
    const ew_json *id = v->child;
    assert_string_equal(id->key, "id");
    assert_int_equal(id->key_len, 2);
    assert_string_equal(id->str, "e1");
    const ew_json *n = id->next;
    assert_string_equal(n->key, "n");
    assert_int_equal(n->kind, EW_JSON_ARRAY);
    assert_int_equal(n->count, 4);
    assert_int_equal(n->child->i64, 1);
    assert_int_equal(n->child->next->kind, EW_JSON_TRUE);
    assert_int_equal(n->child->next->next->kind, EW_JSON_NULL);
    const ew_json *inner = n->child->next->next->next;
    assert_int_equal(inner->kind, EW_JSON_OBJECT);
    assert_null(inner->key); /* an array element has no name */
    assert_string_equal(ew_json_get(inner, "x")->str, "y");
    assert_null(inner->next);
    const ew_json *o = n->next;
    assert_int_equal(o->kind, EW_JSON_OBJECT);
    assert_int_equal(o->count, 0);
    assert_null(o->child);
    assert_null(o->next);
    ew_arena_release(&a);
}

static void test_parse_empty_containers_and_white_space(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(parse_ok(&a, "[]")->count, 0);
    assert_int_equal(parse_ok(&a, "{}")->count, 0);
    assert_int_equal(parse_ok(&a, " \t\r\n[ \t\r\n] \t\r\n")->kind, EW_JSON_ARRAY);
    ew_json *v = parse_ok(&a, "{ \"a\" \n:\r\n[ 1 ,\t2 ] , \"b\" : { } }");
    assert_int_equal(v->count, 2);
    assert_int_equal(ew_json_get(v, "a")->count, 2);
    ew_arena_release(&a);
}

static void test_parse_reads_only_len_bytes(void **state)
{
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    /* The bytes after len are not JSON; they must not be looked at. */
    assert_int_equal(ew_json_parse(&v, "[1,2]garbage", 5, NULL, &a, NULL), 0);
    assert_int_equal(v->count, 2);
    ew_arena_release(&a);
    /* Exact-size heap copies: ASan reports any read past the end (the 8-byte string scan). */
    const char *docs[] = {
        "\"abcdefghijklmnopqrstuvwxyz\"", "\"a\"",    "12345678901", "[\"\\u00e9\"]",
        "{\"k\":\"0123456789abcdef\"}",   "-1.5e+300"};
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++)
        expect_ok_n(docs[i], strlen(docs[i]));
    expect_error_n("\"abcdefghijklmnop", 17, NULL, EW_EJSON, "unterminated string");
}

static void test_json_get_finds_members_by_name(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v = parse_ok(&a, "{\"a\":1,\"b\":2,\"ab\":3}");
    assert_int_equal(ew_json_get(v, "b")->i64, 2);
    assert_int_equal(ew_json_get(v, "ab")->i64, 3);
    assert_null(ew_json_get(v, "c"));
    assert_null(ew_json_get(v, ""));
    assert_null(ew_json_get(NULL, "a"));
    assert_null(ew_json_get(v->child, "a")); /* not an object */
    assert_null(ew_json_get(parse_ok(&a, "[1]"), "a"));
    ew_arena_release(&a);
}

static void test_parse_rejects_invalid_arguments(void **state)
{
    ew_arena a;
    ew_json *v;
    ew_error err = {0};
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(NULL, "1", 1, NULL, &a, &err), EW_EINVAL);
    assert_int_equal(ew_json_parse(&v, "1", 1, NULL, NULL, &err), EW_EINVAL);
    assert_int_equal(ew_json_parse(&v, NULL, 1, NULL, &a, &err), EW_EINVAL);
    ew_json_limits neg = {.max_depth = -1};
    assert_int_equal(ew_json_parse(&v, "1", 1, &neg, &a, &err), EW_EINVAL);
    /* No text at all is the empty document. */
    assert_int_equal(ew_json_parse(&v, NULL, 0, NULL, &a, &err), EW_EJSON);
    assert_non_null(strstr(err.msg, "empty input"));
    ew_arena_release(&a);
}

static void test_parse_errors_without_error_object(void **state)
{
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, "[1,]", 4, NULL, &a, NULL), EW_EJSON);
    assert_int_equal(ew_json_parse(&v, "{\"a\":1,\"a\":2}", 13, NULL, &a, NULL), EW_EDUPKEY);
    assert_int_equal(ew_json_parse(&v, "\"\xC0\x80\"", 4, NULL, &a, NULL), EW_EUTF8);
    ew_arena_release(&a);
}

/* ---- numbers -------------------------------------------------------------------------------- */

static void test_numbers_follow_rfc8259_grammar(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    const char *ok[] = {"0",   "-0",   "7",    "-7",    "0.5", "-0.5",    "10.25",    "1e5",
                        "1E5", "1e+5", "1e-5", "1.5e3", "0e0", "-0.0e-0", "123456789"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ew_json *v = parse_ok(&a, ok[i]);
        assert_int_equal(v->kind, EW_JSON_NUMBER);
        assert_string_equal(v->str, ok[i]);
        assert_int_equal(v->len, strlen(ok[i]));
    }
    ew_arena_release(&a);
}

static void test_numbers_outside_the_grammar_are_refused(void **state)
{
    expect_error("01", EW_EJSON, "line 1, column 1: leading zeros are not allowed");
    expect_error("-01", EW_EJSON, "leading zeros");
    expect_error("[00]", EW_EJSON, "column 2: leading zeros");
    expect_error("+1", EW_EJSON, "line 1, column 1: a number must not start with '+'");
    expect_error(".5", EW_EJSON, "a number must not start with '.'");
    expect_error("1.", EW_EJSON, "column 3: expected a digit after '.'");
    expect_error("1.e5", EW_EJSON, "expected a digit after '.'");
    expect_error("1e", EW_EJSON, "column 3: expected a digit in the exponent");
    expect_error("1e+", EW_EJSON, "expected a digit in the exponent");
    expect_error("-", EW_EJSON, "expected a digit after '-'");
    expect_error("-a", EW_EJSON, "expected a digit after '-'");
    expect_error("NaN", EW_EJSON, "NaN is not allowed");
    expect_error("Infinity", EW_EJSON, "Infinity is not allowed");
    expect_error("-Infinity", EW_EJSON, "Infinity is not allowed");
    expect_error("0x1F", EW_EJSON, "column 2: invalid character 'x' in number");
    expect_error("1.2.3", EW_EJSON, "invalid character '.' in number");
    expect_error("[1-2]", EW_EJSON, "invalid character '-' in number");
}

static void test_number_int64_boundaries(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v = parse_ok(&a, "9223372036854775807");
    assert_true(v->is_int);
    assert_true(v->i64 == INT64_MAX);
    v = parse_ok(&a, "-9223372036854775808");
    assert_true(v->is_int);
    assert_true(v->i64 == INT64_MIN);
    assert_true(v->num == -9223372036854775808.0);
    v = parse_ok(&a, "9223372036854775808");
    assert_false(v->is_int);
    assert_true(v->num == 9223372036854775808.0);
    v = parse_ok(&a, "-9223372036854775809");
    assert_false(v->is_int);
    v = parse_ok(&a, "18446744073709551616");
    assert_false(v->is_int);
    assert_true(v->num == 18446744073709551616.0);
    v = parse_ok(&a, "123456789012345678901234567890");
    assert_false(v->is_int);
    assert_true(v->num == 123456789012345678901234567890.0);
    v = parse_ok(&a, "-0");
    assert_true(v->is_int);
    assert_int_equal(v->i64, 0);
    assert_true(signbit(v->num));
    /* A fraction or an exponent makes a number non-integral, whatever its value. */
    assert_false(parse_ok(&a, "1.0")->is_int);
    assert_false(parse_ok(&a, "1e2")->is_int);
    assert_true(parse_ok(&a, "1e2")->num == 100.0);
    ew_arena_release(&a);
}

static void test_number_values_equal_strtod(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    /* Fast path (few digits, small exponent) and slow path (strtod) must agree to the bit. */
    const char *nums[] = {"0.1",
                          "129.95",
                          "-3.14159265358979",
                          "2.718281828459045",
                          "1e22",
                          "1e23",
                          "1.7976931348623157e308",
                          "2.2250738585072014e-308",
                          "4.9e-324",
                          "0.000001",
                          "123456789012345678.5",
                          "9007199254740993",
                          "9007199254740993.0",
                          "0.30000000000000004",
                          "1e-22",
                          "5e-324",
                          "1e400",
                          "12345.6789e-3"};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        ew_json *v = parse_ok(&a, nums[i]);
        double want = strtod(nums[i], NULL);
        if (memcmp(&v->num, &want, sizeof want) != 0)
            fail_msg("%s: parsed %.17g, strtod %.17g", nums[i], v->num, want);
    }
    ew_arena_release(&a);
}

static void test_number_values_ignore_the_locale(void **state)
{
    const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8"};
    const char *set = NULL;
    for (size_t i = 0; i < 4 && !set; i++)
        set = setlocale(LC_NUMERIC, names[i]);
    if (!set) skip(); /* no locale with a decimal comma installed */
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    double slow = parse_ok(&a, "1.5e-300")->num;
    double fast = parse_ok(&a, "1.5")->num;
    setlocale(LC_NUMERIC, "C");
    assert_true(slow == 1.5e-300);
    assert_true(fast == 1.5);
    ew_arena_release(&a);
}

/* ---- strings -------------------------------------------------------------------------------- */

static void test_string_without_escapes_is_copied(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    const char *doc = "\"plain text, longer than eight bytes: caf\xC3\xA9 \xE2\x82\xAC "
                      "\xF0\x9F\x98\x80\"";
    ew_json *v = parse_ok(&a, doc);
    assert_int_equal(v->len, strlen(doc) - 2);
    assert_memory_equal(v->str, doc + 1, v->len);
    assert_int_equal(v->str[v->len], '\0');
    assert_true(v->str < doc || v->str > doc + strlen(doc)); /* a copy, not a view */
    assert_int_equal(parse_ok(&a, "\"\"")->len, 0);
    ew_arena_release(&a);
}

static void test_string_escapes_are_decoded(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v =
        parse_ok(&a, "\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u0041\\u00e9\\u20AC\\ud83d\\ude00 "
                     "\\u001f\"");
    const char want[] = "q\" b\\ s/ \b\f\n\r\t A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 \x1F";
    assert_int_equal(v->len, sizeof want - 1);
    assert_memory_equal(v->str, want, sizeof want);
    /* Escapes in member names too. */
    v = parse_ok(&a, "{\"a\\tb\\u00e9\":1}");
    assert_string_equal(v->child->key, "a\tb\xC3\xA9");
    assert_int_equal(v->child->key_len, 5);
    assert_int_equal(ew_json_get(v, "a\tb\xC3\xA9")->i64, 1);
    ew_arena_release(&a);
}

static void test_string_invalid_escapes_are_refused(void **state)
{
    expect_error("\"a\\x\"", EW_EJSON, "column 3: invalid escape: 'x' after '\\'");
    expect_error("\"\\'\"", EW_EJSON, "invalid escape");
    expect_error("\"\\u12G4\"", EW_EJSON, "column 2: invalid \\u escape, expected four hex digits");
    expect_error("\"\\u12\"", EW_EJSON, "invalid \\u escape");
    expect_error("\"\\", EW_EJSON, "unterminated string");
}

static void test_string_unpaired_surrogates_are_refused(void **state)
{
    expect_error("\"\\uD800\"", EW_EUTF8, "line 1, column 2: unpaired surrogate \\uD800");
    expect_error("\"ab\\ud800x\"", EW_EUTF8, "column 4: unpaired surrogate \\uD800");
    expect_error("\"\\udc00\"", EW_EUTF8, "unpaired surrogate \\uDC00");
    expect_error("\"\\ud800\\u0041\"", EW_EUTF8, "unpaired surrogate \\uD800");
    expect_error("\"\\ud800\\ud800\"", EW_EUTF8, "unpaired surrogate \\uD800");
    /* Low then high: the order is wrong. */
    expect_error("\"\\ude00\\ud83d\"", EW_EUTF8, "unpaired surrogate \\uDE00");
    expect_error("\"\\ud83d\"", EW_EUTF8, "unpaired surrogate \\uD83D");
}

static void test_string_u0000_is_refused(void **state)
{
    expect_error("\"a\\u0000b\"", EW_EJSON, "line 1, column 3: \\u0000 is not allowed in strings");
    expect_error("{\"\\u0000\":1}", EW_EJSON, "\\u0000 is not allowed");
}

static void test_string_raw_control_characters_are_refused(void **state)
{
    expect_error("\"a\tb\"", EW_EJSON, "line 1, column 3: control character 0x09 in string");
    expect_error("\"line\nbreak\"", EW_EJSON, "control character 0x0A");
    expect_error_n("\"nul\0\"", 6, NULL, EW_EJSON, "control character 0x00");
    expect_error("\"\x1f\"", EW_EJSON, "control character 0x1F");
}

static void test_string_invalid_utf8_is_refused(void **state)
{
    struct {
        const char *doc;
        const char *want;
    } cases[] = {
        {"\"\xC0\x80\"", "column 2: invalid UTF-8: overlong"},
        {"\"\xC1\xBF\"", "overlong"},
        {"\"ab\xE0\x80\x80\"", "column 4: invalid UTF-8: overlong"},
        {"\"\xF0\x80\x80\x80\"", "overlong"},
        {"\"\xED\xA0\x80\"", "encoded surrogate (0xED 0xA0)"},
        {"\"\xED\xBF\xBF\"", "encoded surrogate"},
        {"\"\xF4\x90\x80\x80\"", "above U+10FFFF"},
        {"\"\xF5\x80\x80\x80\"", "above U+10FFFF"},
        {"\"\xFF\"", "unexpected byte 0xFF"},
        {"\"\x80\"", "unexpected byte 0x80"},
        {"\"\xC3\x28\"", "bad continuation byte after 0xC3"},
        {"\"\xE2\x82\"", "bad continuation"},
        {"\"0123456789\xE2\x28\xA1\"", "column 12: invalid UTF-8: bad continuation"},
        {"[\"ok\",\n \"\xF0\x9F\x98\"]", "line 2, column 3: invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].doc, EW_EUTF8, cases[i].want);
    /* A sequence cut by the end of the input. */
    expect_error_n("\"\xE2\x82", 3, NULL, EW_EUTF8, "truncated");
}

static void test_non_ascii_outside_strings_is_refused(void **state)
{
    expect_error("[1,\xC3\xA9]", EW_EJSON, "column 4: unexpected byte 0xC3 outside a string");
    expect_error("\xE2\x80\x8B"
                 "1",
                 EW_EJSON, "unexpected byte 0xE2");
}

/* ---- syntax errors -------------------------------------------------------------------------- */

static void test_empty_input_is_refused(void **state)
{
    expect_error_n("", 0, NULL, EW_EJSON, "line 1, column 1: empty input");
    expect_error(" \t\r\n ", EW_EJSON, "empty input (only white space)");
}

static void test_trailing_data_is_refused(void **state)
{
    expect_error("{} x", EW_EJSON, "line 1, column 4: unexpected 'x' after the JSON value");
    expect_error("1 2", EW_EJSON, "after the JSON value");
    expect_error("[1]]", EW_EJSON, "column 4: unexpected ']' after the JSON value");
    expect_error("truex", EW_EJSON, "after the JSON value");
    expect_error_n("null\0", 5, NULL, EW_EJSON, "unexpected byte 0x00 after the JSON value");
}

static void test_trailing_commas_are_refused(void **state)
{
    expect_error("[1,2,]", EW_EJSON, "line 1, column 6: trailing comma before ']'");
    expect_error("{\"a\":1,}", EW_EJSON, "column 8: trailing comma before '}'");
    expect_error("[1,\n ]", EW_EJSON, "line 2, column 2: trailing comma");
    expect_error("[,1]", EW_EJSON, "unexpected ',', expected a value");
}

static void test_comments_are_refused(void **state)
{
    expect_error("// note\n1", EW_EJSON, "line 1, column 1: comments are not allowed");
    expect_error("[1 /* x */]", EW_EJSON, "column 4: comments are not allowed");
    expect_error("{/* x */}", EW_EJSON, "comments are not allowed");
    expect_error("[/* x */1]", EW_EJSON, "comments are not allowed");
}

static void test_single_quotes_are_refused(void **state)
{
    expect_error("'a'", EW_EJSON, "single-quoted strings are not allowed");
    expect_error("{'a':1}", EW_EJSON, "column 2: single-quoted strings are not allowed");
}

static void test_byte_order_mark_is_refused(void **state)
{
    expect_error("\xEF\xBB\xBF{}", EW_EJSON, "line 1, column 1: a byte order mark");
}

static void test_invalid_literals_are_refused(void **state)
{
    expect_error("tru", EW_EJSON, "invalid literal, expected 'true'");
    expect_error("[fals]", EW_EJSON, "column 2: invalid literal, expected 'false'");
    expect_error("nul", EW_EJSON, "expected 'null'");
    expect_error("True", EW_EJSON, "unexpected character 'T'");
    expect_error("undefined", EW_EJSON, "unexpected character 'u'");
}

static void test_unterminated_documents_are_refused(void **state)
{
    expect_error("[1", EW_EJSON, "column 3: unexpected end of input, expected ',' or ']'");
    expect_error("[", EW_EJSON, "unexpected end of input, expected a value");
    expect_error("{\"a\":1", EW_EJSON, "unexpected end of input, expected ',' or '}'");
    expect_error("{\"a\"", EW_EJSON, "expected ':' after member name");
    expect_error("{\"a\":", EW_EJSON, "unexpected end of input, expected a value");
    expect_error("{", EW_EJSON, "expected a member name");
    expect_error("  \"abc", EW_EJSON, "line 1, column 3: unterminated string");
}

static void test_errors_name_line_and_column(void **state)
{
    expect_error("{\"a\":1,\"member\" 2}", EW_EJSON,
                 "line 1, column 17: expected ':' after member name");
    expect_error("[\n1,\n    x]", EW_EJSON, "line 3, column 5: unexpected character 'x'");
    expect_error("{\"a\":1 \"b\":2}", EW_EJSON,
                 "line 1, column 8: expected ',' or '}' after member value, found '\"'");
    expect_error("[1 2]", EW_EJSON, "line 1, column 4: expected ',' or ']' after element");
    expect_error("{1:2}", EW_EJSON, "column 2: expected '\"' to start a member name, found '1'");
    expect_error("[\r\n\r\n\t\x01]", EW_EJSON, "line 3, column 2: unexpected byte 0x01");
}

/* ---- limits --------------------------------------------------------------------------------- */

static void test_input_over_max_bytes_is_refused_first(void **state)
{
    ew_json_limits lim = {.max_bytes = 10};
    /* Checked before reading: the size is reported even for text that is not JSON. */
    expect_error_n("[1,2,3,4,5]", 11, &lim, EW_ETOOBIG, "11 bytes");
    expect_error_n("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF", 11, &lim, EW_ETOOBIG,
                   "limit of 10 bytes");
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, "[1,2,3,45]", 10, &lim, &a, NULL), 0);
    ew_arena_release(&a);
}

static void test_nesting_at_the_default_limit_is_accepted(void **state)
{
    char *doc = nested_arrays(64);
    expect_ok_n(doc, strlen(doc));
    free(doc);
    doc = repeat("{\"a\":", 63, "[]");
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, doc);
    for (int i = 0; i < 63; i++)
        ew_buf_putc(&b, '}');
    expect_ok_n(b.data, b.len);
    ew_buf_release(&b);
    free(doc);
}

static void test_nesting_over_the_default_limit_is_refused(void **state)
{
    char *doc = nested_arrays(65);
    expect_error(doc, EW_EDEPTH, "line 1, column 65: nesting deeper than 64 levels");
    free(doc);
}

static void test_nesting_limit_counts_containers_only(void **state)
{
    ew_json_limits lim = {.max_depth = 2};
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, "[[1]]", 5, &lim, &a, NULL), 0);
    assert_int_equal(ew_json_parse(&v, "{\"a\":{\"b\":1}}", 13, &lim, &a, NULL), 0);
    assert_int_equal(ew_json_parse(&v, "\"scalar\"", 8, &lim, &a, NULL), 0);
    ew_arena_release(&a);
    expect_error_n("[[[1]]]", 7, &lim, EW_EDEPTH, "column 3: nesting deeper than 2 levels");
    expect_error_n("{\"a\":{\"b\":{}}}", 14, &lim, EW_EDEPTH, "column 11: nesting deeper");
    lim.max_depth = 1;
    expect_error_n("[[]]", 4, &lim, EW_EDEPTH, "nesting deeper than 1 levels");
}

static void test_2000_nested_arrays_fail_cleanly(void **state)
{
    char *doc = nested_arrays(2000);
    expect_error(doc, EW_EDEPTH, "nesting deeper than 64");
    free(doc);
}

static void test_megabyte_of_brackets_is_capped_even_with_a_huge_limit(void **state)
{
    size_t n = 1 << 20;
    char *doc = malloc(n);
    assert_non_null(doc);
    memset(doc, '[', n);
    ew_json_limits lim = {.max_depth = INT_MAX};
    char want[64];
    snprintf(want, sizeof want, "column %d: nesting deeper than %d", EW_JSON_DEPTH_CAP + 1,
             EW_JSON_DEPTH_CAP);
    expect_error_n(doc, n, &lim, EW_EDEPTH, want);
    free(doc);
    /* Up to the cap, a caller's large limit holds. */
    doc = nested_arrays(EW_JSON_DEPTH_CAP);
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, doc, strlen(doc), &lim, &a, NULL), 0);
    ew_arena_release(&a);
    free(doc);
}

/* "[0,0,...,0]" of n bytes (n odd, >= 3), malloc'ed: the densest tree JSON can ask for. */
static char *zeros_array(size_t n)
{
    char *doc = malloc(n);
    assert_non_null(doc);
    for (size_t i = 0; i < n; i++)
        doc[i] = i % 2 ? '0' : ',';
    doc[0] = '[';
    doc[n - 1] = ']';
    return doc;
}

static void test_memory_is_capped_in_proportion_to_the_input(void **state)
{
    /* 64 KiB of "[0,0,...]" is 32 Ki nodes of 96 bytes: about 3.6 MB uncapped. */
    size_t n = 64 * 1024 + 1;
    size_t cap = n * EW_JSON_MEM_FACTOR + EW_JSON_MEM_BASE;
    char *doc = zeros_array(n);
    char want[96];
    snprintf(want, sizeof want, "needs more than %zu bytes of memory", cap);
    struct mallinfo2 before = mallinfo2();
    expect_error_n(doc, n, NULL, EW_ETOOBIG, want);
    expect_error_n(doc, n, NULL, EW_ETOOBIG, "16 bytes per input byte and 64 KiB");
    /* The refusal came at the cap, not after the whole tree was built: the heap never held more
     * than the cap and the arena's last chunk (mallinfo2 counts nothing under ASan: skipped). */
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, doc, n, NULL, &a, NULL), EW_ETOOBIG);
    struct mallinfo2 after = mallinfo2();
    if (after.uordblks > before.uordblks)
        assert_true(after.uordblks - before.uordblks <= cap + 64 * 1024);
    ew_arena_release(&a);
    /* The same text under a caller's larger limit parses: the cap is what refused it. */
    ew_json_limits lim = {.max_mem = 8u << 20};
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, doc, n, &lim, &a, NULL), 0);
    assert_int_equal(v->count, n / 2);
    ew_arena_release(&a);
    /* And a smaller limit is obeyed exactly. */
    /* The root takes 96 bytes, each element 112 (its node and its text, rounded to 16): seven
     * elements fit in 900, the eighth does not. */
    lim.max_mem = 900;
    expect_error_n("[0,0,0,0,0,0,0,0]", 17, &lim, EW_ETOOBIG, "more than 900 bytes");
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, "[0,0,0,0,0,0,0]", 15, &lim, &a, NULL), 0);
    ew_arena_release(&a);
    free(doc);
}

static void test_memory_cap_lets_ordinary_documents_through(void **state)
{
    /* One big string costs about its size. */
    size_t n = 1 << 20;
    char *doc = malloc(n);
    assert_non_null(doc);
    memset(doc, 'x', n);
    doc[0] = '"';
    doc[n - 1] = '"';
    expect_ok_n(doc, n);
    free(doc);
    /* A small document of the densest kind passes on the base allowance. */
    doc = zeros_array(1001);
    expect_ok_n(doc, 1001);
    free(doc);
}

static void test_memory_cap_counts_the_member_name_set(void **state)
{
    /* 4096 members: nodes, names and numbers take 128 bytes each, the name set 32 more. */
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '{');
    for (int i = 0; i < 4096; i++)
        ew_buf_printf(&b, "%s\"k%d\":0", i ? "," : "", i);
    ew_buf_putc(&b, '}');
    ew_json_limits lim = {.max_mem = 4096 * 128 + 64 * 1024};
    expect_error_n(b.data, b.len, &lim, EW_ETOOBIG, "needs more than");
    lim.max_mem = 4096 * 128 + 256 * 1024;
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, b.data, b.len, &lim, &a, NULL), 0);
    ew_arena_release(&a);
    ew_buf_release(&b);
}

static void test_write_string_lossy_makes_json_of_any_bytes(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    /* Valid text is written as ew_json_write_string writes it. */
    ew_json_write_string_lossy(&b, "a\"\xc3\xa9\n", 5);
    assert_string_equal(b.data, "\"a\\\"\xc3\xa9\\n\"");
    /* Each stray byte, overlong, surrogate or cut sequence becomes U+FFFD; the rest is kept. */
    ew_buf_reset(&b);
    ew_json_write_string_lossy(&b, "\xe9t\xe9|\xc0\xaf|\xed\xa0\x80|\xe2\x82", 13);
    assert_string_equal(b.data, "\"\xef\xbf\xbdt\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
                                "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd\"");
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, b.data, b.len, NULL, &a, NULL), 0);
    ew_arena_release(&a);
    ew_buf_release(&b);
}

/* ---- duplicate names ------------------------------------------------------------------------ */

static void test_duplicate_names_are_refused(void **state)
{
    expect_error("{\"a\":1,\"b\":2,\"a\":3}", EW_EDUPKEY,
                 "line 1, column 14: duplicate member name \"a\"");
    expect_error("{\"\":1,\"\":2}", EW_EDUPKEY, "duplicate member name \"\"");
    /* Equal after unescaping. */
    expect_error("{\"a\":1,\"\\u0061\":2}", EW_EDUPKEY, "duplicate member name \"a\"");
}

static void test_same_names_in_different_objects_are_fine(void **state)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v = parse_ok(&a, "{\"a\":{\"a\":1},\"b\":[{\"a\":2},{\"a\":3}],\"ab\":0,\"ba\":0}");
    assert_int_equal(v->count, 4);
    ew_arena_release(&a);
}

static void test_duplicate_names_beyond_16_members_use_the_hash_set(void **state)
{
    for (size_t n = 15; n <= 40; n++) {
        size_t len;
        char *doc = big_object(n, false, &len);
        expect_ok_n(doc, len);
        free(doc);
        doc = big_object(n, true, &len);
        expect_error_n(doc, len, NULL, EW_EDUPKEY, "duplicate member name \"k0000000\"");
        free(doc);
    }
}

static void test_duplicate_name_message_is_escaped_and_truncated(void **state)
{
    char *name = repeat("\\\"x", 60, ""); /* 60 times \"x : 120 bytes once unescaped */
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"%s\":1,\"%s\":2}", name, name);
    ew_error err = {0};
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    assert_int_equal(ew_json_parse(&v, b.data, b.len, NULL, &a, &err), EW_EDUPKEY);
    assert_non_null(strstr(err.msg, "duplicate member name \"\\\"x\\\"x"));
    assert_non_null(strstr(err.msg, "...\""));
    assert_true(strlen(err.msg) < 200);
    /* Control characters are escaped, and UTF-8 is never cut in the middle. */
    assert_int_equal(ew_json_parse(&v, "{\"\\n\":1,\"\\n\":2}", 16, NULL, &a, &err), EW_EDUPKEY);
    assert_non_null(strstr(err.msg, "\"\\u000a\""));
    char *euros = repeat("\xE2\x82\xAC", 40, "");
    ew_buf_reset(&b);
    ew_buf_printf(&b, "{\"%s\":1,\"%s\":2}", euros, euros);
    assert_int_equal(ew_json_parse(&v, b.data, b.len, NULL, &a, &err), EW_EDUPKEY);
    assert_true(ew_utf8_valid(err.msg, strlen(err.msg)));
    assert_non_null(strstr(err.msg, "\xE2\x82\xAC...\""));
    ew_arena_release(&a);
    ew_buf_release(&b);
    free(name);
    free(euros);
}

static void test_100k_member_object_with_duplicate_at_end_is_fast(void **state)
{
    size_t len;
    char *doc = big_object(100000, true, &len);
    assert_true(len > 1000000);
    double t0 = now_s();
    expect_error_n(doc, len, NULL, EW_EDUPKEY, "duplicate member name \"k0000000\"");
    double dup_time = now_s() - t0;
    free(doc);

    doc = big_object(100000, false, &len);
    ew_arena a;
    ew_json *v;
    ew_arena_init(&a, NULL, 0);
    t0 = now_s();
    assert_int_equal(ew_json_parse(&v, doc, len, NULL, &a, NULL), 0);
    double ok_time = now_s() - t0;
    assert_int_equal(v->count, 100000);
    assert_int_equal(ew_json_get(v, "k0099999")->i64, 99999);
    ew_arena_release(&a);
    free(doc);
    /* Quadratic comparison (5e9 of them) would take many minutes; a sanitized build on a loaded
     * machine takes a second or two. The bound only tells those apart: speed itself is measured
     * by the benchmarks (bench/bench_codec.c). */
    if (dup_time > 30.0 || ok_time > 30.0) fail_msg("quadratic? %.3f s, %.3f s", dup_time, ok_time);
}

/* ---- UTF-8 validation ----------------------------------------------------------------------- */

static void test_utf8_valid_accepts_well_formed_sequences(void **state)
{
    const char *ok[] = {"",
                        "plain ASCII text that is longer than eight bytes",
                        "\xC2\x80",
                        "\xDF\xBF",
                        "\xE0\xA0\x80",
                        "\xED\x9F\xBF",
                        "\xEE\x80\x80",
                        "\xEF\xBF\xBF",
                        "\xF0\x90\x80\x80",
                        "\xF4\x8F\xBF\xBF",
                        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
                        "0123456789abcdef\xC3\xA9"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!ew_utf8_valid(ok[i], strlen(ok[i]))) fail_msg("case %zu refused", i);
    assert_true(ew_utf8_valid(NULL, 0));
    assert_true(ew_utf8_valid("a\0b", 3)); /* U+0000 is valid UTF-8 */
}

static void test_utf8_valid_refuses_ill_formed_sequences(void **state)
{
    const char *bad[] = {"\xC0\x80",         /* overlong NUL */
                         "\xC1\xBF",         /* overlong */
                         "\xE0\x80\x80",     /* overlong */
                         "\xE0\x9F\xBF",     /* overlong */
                         "\xF0\x80\x80\x80", /* overlong */
                         "\xF0\x8F\xBF\xBF", /* overlong */
                         "\xED\xA0\x80",     /* surrogate D800 */
                         "\xED\xBF\xBF",     /* surrogate DFFF */
                         "\xF4\x90\x80\x80", /* U+110000 */
                         "\xF5\x80\x80\x80",
                         "\xF8\x88\x80\x80\x80",
                         "\xFF",
                         "\xFE",
                         "\x80",         /* lone continuation */
                         "\xC3",         /* truncated */
                         "\xE2\x82",     /* truncated */
                         "\xF0\x9F\x98", /* truncated */
                         "\xC3\x28",     /* bad continuation */
                         "\xE2\x28\xA1",
                         "\xE2\x82\x28",
                         "\xF0\x9F\x28\x80",
                         "0123456789abcdef\xED\xA0\x80 after the ASCII fast path"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ew_utf8_valid(bad[i], strlen(bad[i]))) fail_msg("case %zu accepted", i);
    /* Only n bytes count: a sequence cut by n is truncated. */
    assert_false(ew_utf8_valid("\xC3\xA9", 1));
}

/* ---- writer --------------------------------------------------------------------------------- */

static void test_write_string_escapes_exactly(void **state)
{
    ew_buf b;
    ew_buf_init(&b);
    const char in[] = "a\"b\\c/\b\f\n\r\t\x01\x1f\x7f caf\xC3\xA9";
    ew_json_write_string(&b, in, sizeof in - 1);
    assert_string_equal(b.data, "\"a\\\"b\\\\c/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f caf\xC3\xA9\"");
    ew_buf_reset(&b);
    ew_json_write_string(&b, "", 0);
    assert_string_equal(b.data, "\"\"");
    ew_buf_reset(&b);
    ew_json_write_string(&b, "nul\0byte", 8);
    assert_string_equal(b.data, "\"nul\\u0000byte\"");
    ew_buf_release(&b);
}

static void test_write_string_long_runs(void **state)
{
    /* Escapes at every offset of the 8-byte scan, runs of plain text between them. */
    for (size_t at = 0; at < 40; at++) {
        char in[40];
        memset(in, 'x', sizeof in);
        in[at] = '\n';
        ew_buf b;
        ew_buf_init(&b);
        ew_json_write_string(&b, in, sizeof in);
        assert_int_equal(b.len, sizeof in + 3);
        assert_memory_equal(b.data + 1 + at, "\\n", 2);
        assert_int_equal(b.data[b.len - 1], '"');
        ew_buf_release(&b);
    }
}

/* The escapes of a string, byte by byte: what ew_json_write_string() must write. */
static void reference_escape(ew_buf *b, const unsigned char *s, size_t n)
{
    ew_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        const char *e = c == '"'    ? "\\\""
                        : c == '\\' ? "\\\\"
                        : c == '\b' ? "\\b"
                        : c == '\f' ? "\\f"
                        : c == '\n' ? "\\n"
                        : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t"
                                    : NULL;
        if (e)
            ew_buf_puts(b, e);
        else if (c < 0x20)
            ew_buf_printf(b, "\\u%04x", c);
        else
            ew_buf_putc(b, (char)c);
    }
    ew_buf_putc(b, '"');
}

/* Strings of every length up to 50 with one byte of each kind at every offset: those the writer
 * escapes ('"', '\\', controls) and those it must not (0x20, 0x7F, 0xFF), through the 16-byte,
 * 8-byte and byte-by-byte scans and the overlapping last load. The writer matches the
 * byte-by-byte reference, and the parser, reading the written string as the whole document from
 * an exact-size copy (its scan meets the end of input), gives the bytes back. */
static void test_every_special_byte_at_every_offset(void **state)
{
    static const unsigned char kinds[] = {'"', '\\', '\n', 0x01, 0x1F, 0x20, 0x7F, 0xFF};
    for (size_t n = 1; n <= 50; n++)
        for (size_t at = 0; at < n; at++)
            for (size_t k = 0; k < sizeof kinds; k++) {
                unsigned char in[50];
                memset(in, 'x', n);
                in[at] = kinds[k];
                ew_buf got, want;
                ew_buf_init(&got);
                ew_buf_init(&want);
                ew_json_write_string(&got, (const char *)in, n);
                reference_escape(&want, in, n);
                assert_int_equal(got.len, want.len);
                assert_memory_equal(got.data, want.data, want.len);
                if (kinds[k] != 0xFF) { /* a lone 0xFF is not UTF-8: the parser refuses it */
                    char *doc = malloc(got.len);
                    assert_non_null(doc);
                    memcpy(doc, got.data, got.len);
                    ew_arena a;
                    ew_arena_init(&a, NULL, 0);
                    ew_json *v = NULL;
                    assert_int_equal(ew_json_parse(&v, doc, got.len, NULL, &a, NULL), 0);
                    assert_int_equal(v->len, n);
                    assert_memory_equal(v->str, in, n);
                    ew_arena_release(&a);
                    free(doc);
                }
                ew_buf_release(&got);
                ew_buf_release(&want);
            }
}

static void test_write_compact_form(void **state)
{
    ew_arena a;
    ew_buf b;
    ew_arena_init(&a, NULL, 0);
    ew_buf_init(&b);
    ew_json *v = parse_ok(&a, " { \"a\" : [ 1 , -2.50e+3 , true , false , null ] ,\n"
                              "   \"b\" : { } , \"c\" : [ ] , \"d\" : \"x\\ty\" } ");
    ew_json_write(&b, v);
    assert_string_equal(b.data,
                        "{\"a\":[1,-2.50e+3,true,false,null],\"b\":{},\"c\":[],\"d\":\"x\\ty\"}");
    ew_arena_release(&a);
    ew_buf_release(&b);
}

static void test_write_pretty_form(void **state)
{
    ew_arena a;
    ew_buf b;
    ew_arena_init(&a, NULL, 0);
    ew_buf_init(&b);
    ew_json *v = parse_ok(&a, "{\"name\":\"order\",\"items\":[1,{\"sku\":\"A\",\"tags\":[]}],"
                              "\"meta\":{},\"ok\":true}");
    ew_json_write_pretty(&b, v, 2);
    assert_string_equal(b.data, "{\n"
                                "  \"name\": \"order\",\n"
                                "  \"items\": [\n"
                                "    1,\n"
                                "    {\n"
                                "      \"sku\": \"A\",\n"
                                "      \"tags\": []\n"
                                "    }\n"
                                "  ],\n"
                                "  \"meta\": {},\n"
                                "  \"ok\": true\n"
                                "}");
    ew_buf_reset(&b);
    ew_json_write_pretty(&b, parse_ok(&a, "[[]]"), 4);
    assert_string_equal(b.data, "[\n    []\n]");
    ew_buf_reset(&b);
    ew_json_write_pretty(&b, parse_ok(&a, "7"), 2);
    assert_string_equal(b.data, "7");
    ew_arena_release(&a);
    ew_buf_release(&b);
}

static void test_write_keeps_number_text(void **state)
{
    ew_arena a;
    ew_buf b;
    ew_arena_init(&a, NULL, 0);
    ew_buf_init(&b);
    ew_json_write(&b, parse_ok(&a, "[1.50E+3,-0,123456789012345678901234567890]"));
    assert_string_equal(b.data, "[1.50E+3,-0,123456789012345678901234567890]");
    /* A number node built by hand has no text: its value is written. */
    ew_json n = {.kind = EW_JSON_NUMBER, .is_int = true, .i64 = -42};
    ew_buf_reset(&b);
    ew_json_write(&b, &n);
    assert_string_equal(b.data, "-42");
    ew_arena_release(&a);
    ew_buf_release(&b);
}

static void test_escapes_round_trip(void **state)
{
    const char *docs[] = {
        "\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u0001\\u001F\\u007f \\u00e9\\u20ac\\ud83d\\ude00\"",
        "{\"\\n\\\"\":[\"\xC3\xA9\xE2\x82\xAC\",{\"\\t\":\"\\u0019\"}],\"z\":-2e-7}",
        "[\"\xF0\x9F\x98\x80\"]", "[\"0123456789abcdef\\\\0123456789abcdef\\\"\"]"};
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        ew_arena a;
        ew_buf b1, b2;
        ew_arena_init(&a, NULL, 0);
        ew_buf_init(&b1);
        ew_buf_init(&b2);
        ew_json *v1 = parse_ok(&a, docs[i]);
        ew_json_write(&b1, v1);
        ew_json *v2 = parse_ok(&a, b1.data);
        if (!tree_equal(v1, v2)) fail_msg("%s -> %s: trees differ", docs[i], b1.data);
        ew_json_write(&b2, v2);
        assert_string_equal(b1.data, b2.data); /* the written form is a fixed point */
        ew_buf_reset(&b2);
        ew_json_write_pretty(&b2, v1, 3);
        if (!tree_equal(v1, parse_ok(&a, b2.data))) fail_msg("pretty form of %s differs", docs[i]);
        ew_buf_release(&b1);
        ew_buf_release(&b2);
        ew_arena_release(&a);
    }
}

static void test_parse_a_cloudevent(void **state)
{
    const char *doc =
        "{\"specversion\":\"1.0\",\"id\":\"0190b6b2-7c1e-7a3c-9f00-1b2c3d4e5f60\","
        "\"source\":\"/orders\",\"type\":\"order.created\",\"time\":\"2024-05-01T12:34:56.789Z\","
        "\"datacontenttype\":\"application/json\",\"data\":{\"order_id\":\"ORD-1\","
        "\"amount\":129.95,\"items\":[{\"sku\":\"A\",\"qty\":2}]}}";
    ew_arena a;
    char inline_buf[2048];
    ew_arena_init(&a, inline_buf, sizeof inline_buf);
    ew_json *v = parse_ok(&a, doc);
    assert_string_equal(ew_json_get(v, "specversion")->str, "1.0");
    const ew_json *data = ew_json_get(v, "data");
    assert_true(ew_json_get(data, "amount")->num == 129.95);
    assert_int_equal(ew_json_get(data, "items")->child->child->next->i64, 2);
    ew_buf b;
    ew_buf_init(&b);
    ew_json_write(&b, v);
    assert_string_equal(b.data, doc);
    ew_buf_release(&b);
    ew_arena_release(&a);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_parse_scalars_at_top_level),
    cmocka_unit_test(test_parse_nested_document_builds_tree),
    cmocka_unit_test(test_parse_empty_containers_and_white_space),
    cmocka_unit_test(test_parse_reads_only_len_bytes),
    cmocka_unit_test(test_json_get_finds_members_by_name),
    cmocka_unit_test(test_parse_rejects_invalid_arguments),
    cmocka_unit_test(test_parse_errors_without_error_object),
    cmocka_unit_test(test_numbers_follow_rfc8259_grammar),
    cmocka_unit_test(test_numbers_outside_the_grammar_are_refused),
    cmocka_unit_test(test_number_int64_boundaries),
    cmocka_unit_test(test_number_values_equal_strtod),
    cmocka_unit_test(test_number_values_ignore_the_locale),
    cmocka_unit_test(test_string_without_escapes_is_copied),
    cmocka_unit_test(test_string_escapes_are_decoded),
    cmocka_unit_test(test_string_invalid_escapes_are_refused),
    cmocka_unit_test(test_string_unpaired_surrogates_are_refused),
    cmocka_unit_test(test_string_u0000_is_refused),
    cmocka_unit_test(test_string_raw_control_characters_are_refused),
    cmocka_unit_test(test_string_invalid_utf8_is_refused),
    cmocka_unit_test(test_non_ascii_outside_strings_is_refused),
    cmocka_unit_test(test_empty_input_is_refused),
    cmocka_unit_test(test_trailing_data_is_refused),
    cmocka_unit_test(test_trailing_commas_are_refused),
    cmocka_unit_test(test_comments_are_refused),
    cmocka_unit_test(test_single_quotes_are_refused),
    cmocka_unit_test(test_byte_order_mark_is_refused),
    cmocka_unit_test(test_invalid_literals_are_refused),
    cmocka_unit_test(test_unterminated_documents_are_refused),
    cmocka_unit_test(test_errors_name_line_and_column),
    cmocka_unit_test(test_input_over_max_bytes_is_refused_first),
    cmocka_unit_test(test_nesting_at_the_default_limit_is_accepted),
    cmocka_unit_test(test_nesting_over_the_default_limit_is_refused),
    cmocka_unit_test(test_nesting_limit_counts_containers_only),
    cmocka_unit_test(test_2000_nested_arrays_fail_cleanly),
    cmocka_unit_test(test_megabyte_of_brackets_is_capped_even_with_a_huge_limit),
    cmocka_unit_test(test_memory_is_capped_in_proportion_to_the_input),
    cmocka_unit_test(test_memory_cap_lets_ordinary_documents_through),
    cmocka_unit_test(test_memory_cap_counts_the_member_name_set),
    cmocka_unit_test(test_write_string_lossy_makes_json_of_any_bytes),
    cmocka_unit_test(test_duplicate_names_are_refused),
    cmocka_unit_test(test_same_names_in_different_objects_are_fine),
    cmocka_unit_test(test_duplicate_names_beyond_16_members_use_the_hash_set),
    cmocka_unit_test(test_duplicate_name_message_is_escaped_and_truncated),
    cmocka_unit_test(test_100k_member_object_with_duplicate_at_end_is_fast),
    cmocka_unit_test(test_utf8_valid_accepts_well_formed_sequences),
    cmocka_unit_test(test_utf8_valid_refuses_ill_formed_sequences),
    cmocka_unit_test(test_write_string_escapes_exactly),
    cmocka_unit_test(test_write_string_long_runs),
    cmocka_unit_test(test_write_compact_form),
    cmocka_unit_test(test_write_pretty_form),
    cmocka_unit_test(test_write_keeps_number_text),
    cmocka_unit_test(test_escapes_round_trip),
    cmocka_unit_test(test_parse_a_cloudevent),
    cmocka_unit_test(test_every_special_byte_at_every_offset),
};

EW_TEST_MAIN(tests)
