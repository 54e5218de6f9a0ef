/* PostgreSQL's TLS is libpq's, set by the URL (docs/store.md): src/store/postgres.c hands
 * EVENT_STORE_URL to libpq as it is, so sslmode and the sslrootcert, sslcert and sslkey
 * parameters take effect. The test server speaks no TLS: sslmode=require must then fail at open,
 * saying so, and sslmode=disable must work; the URL's password shows in neither.
 * ew-fixture: postgres */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "support/ew_test.h"
#include "support/pg.h"
#include "eventwire/store.h"

#define SECRET "Sup3rS3cretPw"

/* The test server's URL with a password and `query` added; skips without a server. */
static void url_with(char *buf, size_t n, const char *query)
{
    char msg[256];
    char *url = ew_test_pg_server_url(msg, sizeof msg);
    if (!url) skip();
    const char *rest = url + strlen("postgresql://");
    const char *at = strchr(rest, '@');
    assert_non_null(at);
    snprintf(buf, n, "postgresql://%.*s:%s%s%s%s", (int)(at - rest), rest, SECRET, at,
             strchr(at, '?') ? "&" : "?", query);
    free(url);
}

static void test_sslmode_require_refused_by_a_server_without_tls(void **state)
{
    char url[512];
    url_with(url, sizeof url, "sslmode=require");
    ew_store *s = NULL;
    ew_error err = {0};
    ew_store_options o = {.url = url};
    int rc = ew_store_open(&s, &o, &err);
    if (rc == 0) {
        ew_store_close(s);
        fail_msg("sslmode=require connected to a server without TLS");
    }
    assert_int_equal(rc, EW_ECONNECT);
    if (!strstr(err.msg, "SSL")) fail_msg("the error does not say TLS is missing: %s", err.msg);
    if (strstr(err.msg, SECRET)) fail_msg("the error shows the password: %s", err.msg);
}

static void test_sslmode_disable_connects(void **state)
{
    char url[512];
    url_with(url, sizeof url, "sslmode=disable");
    ew_store *s = NULL;
    ew_error err = {0};
    ew_store_options o = {.url = url};
    if (ew_store_open(&s, &o, &err)) fail_msg("%s", err.msg);
    assert_string_equal(ew_store_backend(s), "postgresql");
    ew_store_close(s);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_sslmode_require_refused_by_a_server_without_tls),
    cmocka_unit_test(test_sslmode_disable_connects),
};

EW_TEST_MAIN(tests)
