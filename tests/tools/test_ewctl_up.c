/* ewctl up / down: the services as background processes, state under the current folder. */
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "support/ew_test.h"

/* A fresh folder to run in; the test process moves into it (each case is its own process). */
static void enter_temp_dir(char *dir)
{
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chdir(dir), 0);
    setenv("HTTP_PORT", "0", 1);
    setenv("AUTH_PASSWORD_HASH", "min", 1);
    unsetenv("EVENT_BUS_TYPE");
    unsetenv("EVENT_STORE_URL");
}

static void leave_temp_dir(const char *dir)
{
    char cmd[300];
    assert_int_equal(chdir("/"), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    return size * n;
}

static long http_get_status(const char *url)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    long code = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    return code;
}

static long pid_in(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1) pid = 0;
    fclose(f);
    return pid;
}

static void test_up_prints_addresses_and_down_stops(void **state)
{
    char dir[] = "/tmp/ewctl-up-XXXXXX";
    enter_temp_dir(dir);
    char *out, *err;
    assert_int_equal(ew_test_ewctl("up auth-service", NULL, &out, &err), 0);
    char url[256];
    assert_int_equal(sscanf(out, "auth-service %255s", url), 1);
    assert_memory_equal(url, "http://127.0.0.1:", 17);
    free(out);
    free(err);
    char health[300];
    snprintf(health, sizeof health, "%s/healthz", url);
    assert_int_equal(http_get_status(health), 200);
    /* its state is under ./var */
    struct stat st;
    assert_int_equal(stat("var/auth-service.db", &st), 0);
    assert_int_equal(stat("var/log/auth-service.log", &st), 0);
    long pid = pid_in("var/run/auth-service.pid");
    assert_true(pid > 0);
    assert_int_equal(kill((pid_t)pid, 0), 0);
    /* started once only */
    assert_int_equal(ew_test_ewctl("up auth-service", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "running already"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("down", NULL, &out, &err), 0);
    assert_non_null(strstr(out, "auth-service stopped"));
    free(out);
    free(err);
    assert_int_equal(kill((pid_t)pid, 0), -1);
    assert_int_equal(stat("var/run/auth-service.pid", &st), -1);
    /* nothing running: down says nothing and succeeds */
    assert_int_equal(ew_test_ewctl("down", NULL, &out, &err), 0);
    assert_string_equal(out, "");
    free(out);
    free(err);
    leave_temp_dir(dir);
}

static void test_up_reports_a_service_that_does_not_start(void **state)
{
    char dir[] = "/tmp/ewctl-up-XXXXXX";
    enter_temp_dir(dir);
    setenv("HTTP_PORT", "not-a-port", 1);
    char *out, *err;
    assert_int_equal(ew_test_ewctl("up auth-service --timeout 20", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "auth-service exited"));
    assert_non_null(strstr(err, "HTTP_PORT")); /* the service's own words, from its log */
    free(out);
    free(err);
    struct stat st;
    assert_int_equal(stat("var/run/auth-service.pid", &st), -1);
    assert_int_equal(ew_test_ewctl("up no-such-service", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "no service"));
    free(out);
    free(err);
    leave_temp_dir(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_up_prints_addresses_and_down_stops),
    cmocka_unit_test(test_up_reports_a_service_that_does_not_start),
};

EW_TEST_MAIN(tests)
