/* The example programs (examples/NAME.c, built as ew-NAME) run as a user runs them, and their
 * output is checked: every example exits 0 and every line it prints on stdout is a CloudEvent
 * that decodes; registration prints the whole flow, each user's five events caused by their
 * registration, and a summary that adds up. */
#include <dirent.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/event.h"

/* Runs `ew-NAME ARGS` from the build folder; exit status, stdout and stderr (caller frees). */
static int run_example(const char *name, const char *args, char **out, char **errout)
{
    const char *bin = getenv("EW_BUILD_DIR");
    char self[4096] = ".";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!bin && n > 0) {
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        bin = self;
    }
    char err_path[] = "/tmp/ew-example-err-XXXXXX";
    int efd = mkstemp(err_path);
    assert_true(efd >= 0);
    close(efd);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s/ew-%s' %s 2> %s", bin, name, args, err_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int status = pclose(p);
    FILE *e = fopen(err_path, "r");
    char *ebuf = calloc(1, 1 << 16);
    if (e) {
        ebuf[fread(ebuf, 1, (1 << 16) - 1, e)] = '\0';
        fclose(e);
    }
    unlink(err_path);
    *out = buf;
    *errout = ebuf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Decodes every line of out as a CloudEvent into evs (at most cap); returns how many. */
static size_t decode_lines(char *out, ew_event **evs, size_t cap)
{
    size_t n = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        ew_error err = {0};
        if (n == cap) fail_msg("more than %zu events", cap);
        if (ew_event_decode(&evs[n], line, strlen(line), NULL, &err))
            fail_msg("not a CloudEvent (%s): %s", err.msg, line);
        n++;
    }
    return n;
}

/* Every example in examples/: it runs, exits 0, and prints only CloudEvents on stdout. */
static void test_every_example_runs(void **state)
{
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src) skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/examples", src);
    DIR *d = opendir(path);
    assert_non_null(d);
    int ran = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        if (len < 3 || strcmp(de->d_name + len - 2, ".c") != 0) continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(len - 2), de->d_name);
        char *out, *err;
        int rc = run_example(name, "", &out, &err);
        if (rc != 0) fail_msg("ew-%s exited %d: %s", name, rc, err);
        static ew_event *evs[4096];
        size_t n = decode_lines(out, evs, 4096);
        if (n == 0) fail_msg("ew-%s printed no event", name);
        for (size_t i = 0; i < n; i++)
            ew_event_unref(evs[i]);
        free(out);
        free(err);
        ran++;
    }
    closedir(d);
    assert_true(ran >= 1);
}

static const ew_event *find(ew_event **evs, size_t n, const char *type, const char *subject)
{
    const ew_event *found = NULL;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(ew_event_type(evs[i]), type) && !strcmp(ew_event_subject(evs[i]), subject)) {
            if (found) fail_msg("two %s about %s", type, subject);
            found = evs[i];
        }
    if (!found) fail_msg("no %s about %s", type, subject);
    return found;
}

/* ew-registration 7: seven users, each registered once and taken through the flow — a profile
 * and preferences, the welcome email, the analytics count — every follow-up caused by its
 * registration and in its correlation; the summary on stderr says so. */
static void test_registration_prints_the_flow(void **state)
{
    char *out, *err;
    int rc = run_example("registration", "7", &out, &err);
    if (rc != 0) fail_msg("ew-registration exited %d: %s", rc, err);
    assert_non_null(strstr(err,
                           "demo: 7 users registered; profiles marked 7, welcome emails 7, users "
                           "counted 7\n"));
    static ew_event *evs[64];
    size_t n = decode_lines(out, evs, 64);
    assert_int_equal(n, 7 * 5);
    int regs = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ew_event_type(evs[i]), "user.registered") != 0) continue;
        regs++;
        const ew_user_registered *u = ew_user_registered_data(evs[i]);
        assert_string_equal(ew_event_subject(evs[i]), u->user_id);
        const char *follow[] = {"user.profile_created", "user.preferences_updated",
                                "notification.welcome_email_sent", "analytics.user_tracked"};
        for (size_t k = 0; k < 4; k++) {
            const ew_event *f = find(evs, n, follow[k], u->user_id);
            assert_string_equal(ew_event_causation_id(f), ew_event_id(evs[i]));
            assert_string_equal(ew_event_correlation_id(f), ew_event_correlation_id(evs[i]));
        }
        const ew_event *w = find(evs, n, "notification.welcome_email_sent", u->user_id);
        assert_string_equal(ew_notification_welcome_email_sent_data(w)->email, u->email);
    }
    assert_int_equal(regs, 7);
    for (size_t i = 0; i < n; i++)
        ew_event_unref(evs[i]);
    free(out);
    free(err);
}

/* A bad argument: the usage on stderr, status 2, nothing on stdout. */
static void test_registration_refuses_a_bad_count(void **state)
{
    char *out, *err;
    assert_int_equal(run_example("registration", "0", &out, &err), 2);
    assert_non_null(strstr(err, "usage:"));
    assert_string_equal(out, "");
    free(out);
    free(err);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_example_runs),
    cmocka_unit_test(test_registration_prints_the_flow),
    cmocka_unit_test(test_registration_refuses_a_bad_count),
};

EW_TEST_MAIN(tests)
