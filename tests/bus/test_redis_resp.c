/* Tests of the Redis backend's in-place RESP reading (src/bus/redis_resp.c), without a server:
 * a reply is complete only once its last byte is in, however the bytes arrive; bulk strings are
 * taken by their length (their bytes may hold \r\n); nil, errors and integers; what is no RESP,
 * and arrays nested too deep, are refused. The consumer reads its XREADGROUP answers this way
 * (test_redis and the conformance suite run it against a server). */
#ifdef EW_HAVE_REDIS
#include <stdlib.h>
#include <string.h>
#include "bus/redis.h"
#include "support/ew_test.h"

/* An XREADGROUP answer: one stream, two entries, the second deleted while pending (nil fields),
 * the first's event holding \r\n in its bytes. */
static const char answer[] = "*1\r\n"
                             "*2\r\n$8\r\nstream:a\r\n"
                             "*2\r\n"
                             "*2\r\n$3\r\n1-0\r\n*4\r\n$5\r\nevent\r\n$8\r\n{\"a\":\r\n}\r\n"
                             "$4\r\nmore\r\n:42\r\n"
                             "*2\r\n$3\r\n2-0\r\n*-1\r\n";

static int scan_all(const char *buf, size_t len, size_t *end)
{
    ew__resp_scan s = {0};
    return ew__resp_complete(&s, buf, len, end);
}

static void test_complete_only_with_the_last_byte(void **state)
{
    size_t n = sizeof answer - 1, end = 0;
    for (size_t chunk = 1; chunk <= n; chunk = chunk * 2 + 1) {
        ew__resp_scan s = {0};
        size_t have = 0;
        int rc = 0;
        while (rc == 0) {
            assert_true(have < n); /* complete before every byte is in: wrong */
            have = have + chunk < n ? have + chunk : n;
            rc = ew__resp_complete(&s, answer, have, &end);
        }
        assert_int_equal(rc, 1);
        assert_int_equal(have, n);
        assert_int_equal(end, n);
    }
    /* what follows a reply is not part of it */
    char two[2 * sizeof answer];
    memcpy(two, answer, n);
    memcpy(two + n, "+OK\r\n", 5);
    assert_int_equal(scan_all(two, n + 5, &end), 1);
    assert_int_equal(end, n);
}

static void test_items_are_walked_in_place(void **state)
{
    size_t n = sizeof answer - 1, pos = 0;
    ew__resp_item it;
    const char want_types[] = "**$**$*$$$:*$*"; /* every item, in order */
    for (size_t k = 0; k < sizeof want_types - 1; k++) {
        assert_true(ew__resp_next(answer, n, &pos, &it));
        assert_int_equal(it.type, want_types[k]);
        if (k == 8) { /* the event: 8 bytes, \r\n among them */
            assert_int_equal(it.len, 8);
            assert_memory_equal(it.str, "{\"a\":\r\n}", 8);
            assert_ptr_equal(it.str, strstr(answer, "{\"a\""));
        }
        if (k == 10) assert_int_equal(it.n, 42);
        if (k == 13) assert_int_equal(it.n, -1); /* nil fields */
    }
    assert_int_equal(pos, n);
    assert_false(ew__resp_next(answer, n, &pos, &it)); /* nothing after the end */

    pos = 0; /* the whole reply passed over at once */
    assert_true(ew__resp_skip(answer, n, &pos));
    assert_int_equal(pos, n);
    pos = 4 + 4 + 14; /* the array of entries: passed over whole */
    assert_true(ew__resp_next(answer, n, &pos, &it));
    assert_int_equal(it.n, 2);
    pos = 4 + 4 + 14;
    assert_true(ew__resp_skip(answer, n, &pos));
    assert_int_equal(pos, n);
}

static void test_nil_errors_and_scalars(void **state)
{
    size_t end;
    const char *one[] = {"*-1\r\n",   "$-1\r\n",
                         "*0\r\n",    ":-7\r\n",
                         "+OK\r\n",   "-NOGROUP No such key 'k' or consumer group 'g'\r\n",
                         "$0\r\n\r\n"};
    for (size_t i = 0; i < sizeof one / sizeof *one; i++) {
        assert_int_equal(scan_all(one[i], strlen(one[i]), &end), 1);
        assert_int_equal(end, strlen(one[i]));
    }
    size_t pos = 0;
    ew__resp_item it;
    const char *e = one[5];
    assert_true(ew__resp_next(e, strlen(e), &pos, &it));
    assert_int_equal(it.type, '-');
    assert_int_equal(it.len, strlen(e) - 3);
    assert_memory_equal(it.str, "NOGROUP", 7);
}

static void test_what_is_no_resp_is_refused(void **state)
{
    size_t end;
    const char *bad[] = {
        "*x\r\n",                               /* no number */
        "*-2\r\n",                              /* no such length */
        "?3\r\n",                               /* no such type */
        "$3\r\nabcXY",                          /* a bulk string not ended by \r\n */
        "*1\r\n$2\r\nab\nX",                    /* \n alone */
        "*123456789012345678901\r\n",           /* a number too long */
        "$99999999999999999999999999999999999", /* a length that never ends */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(scan_all(bad[i], strlen(bad[i]), &end), -1);
    /* incomplete is not wrong: more bytes may come */
    const char *partial[] = {"", "*", "*2\r", "*2\r\n$3\r\nab", "+OK"};
    for (size_t i = 0; i < sizeof partial / sizeof *partial; i++)
        assert_int_equal(scan_all(partial[i], strlen(partial[i]), &end), 0);
}

static void test_nesting_deeper_than_the_limit_is_refused(void **state)
{
    char deep[64] = "";
    for (int i = 0; i < EW__RESP_DEPTH; i++)
        strcat(deep, "*1\r\n");
    strcat(deep, ":1\r\n");
    size_t end;
    assert_int_equal(scan_all(deep, strlen(deep), &end), 1); /* at the limit */
    char deeper[64] = "*1\r\n";
    strcat(deeper, deep);
    assert_int_equal(scan_all(deeper, strlen(deeper), &end), -1);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_complete_only_with_the_last_byte),
    cmocka_unit_test(test_items_are_walked_in_place),
    cmocka_unit_test(test_nil_errors_and_scalars),
    cmocka_unit_test(test_what_is_no_resp_is_refused),
    cmocka_unit_test(test_nesting_deeper_than_the_limit_is_refused),
};

EW_TEST_MAIN(tests)

#else /* a build without hiredis: nothing to test, and saying so */
#include "support/ew_test.h"

static void redis_not_built(void **state)
{
    skip();
}

static const struct CMUnitTest tests[] = {cmocka_unit_test(redis_not_built)};

EW_TEST_MAIN(tests)
#endif
