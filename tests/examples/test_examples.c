/* The example programs (examples/NAME.c, built as ew-NAME) run as a user runs them, and their
 * output is checked. An example that says `ew-example: service` in its source is a service: it
 * runs until SIGTERM, in a folder of its own, and must then close cleanly and exit 0; every other
 * example exits 0 by itself and every line it prints on stdout is a CloudEvent that decodes.
 * registration prints the whole flow, each user's five events caused by their registration, and
 * a summary that adds up; greeter, on the SQLite bus, greets the users registered beside it and
 * dead-letters the one it never can greet into the event store. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"
#include "eventwire/store.h"
#include "store/handle.h"

/* The folder the examples were built in: $EW_BUILD_DIR, else this test's own. */
static const char *build_dir(void)
{
    static char self[4096];
    const char *bin = getenv("EW_BUILD_DIR");
    if (bin) return bin;
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return ".";
    self[n] = '\0';
    *strrchr(self, '/') = '\0';
    return self;
}

/* Runs `ew-NAME ARGS` from the build folder; exit status, stdout and stderr (caller frees). */
static int run_example(const char *name, const char *args, char **out, char **errout)
{
    const char *bin = build_dir();
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

/* ---- services: started in a folder of their own, stopped with SIGTERM ------------------- */

/* A file's contents (caller frees); "" when it cannot be read. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);
    assert_non_null(buf);
    while (f && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    if (f) fclose(f);
    return buf;
}

/* Does examples/NAME.c say it is a service? */
static int is_service(const char *src, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/examples/%s.c", src, name);
    char *text = slurp(path);
    int yes = strstr(text, "ew-example: service") != NULL;
    free(text);
    return yes;
}

/* The service a case started and has not seen end yet: the case's teardown kills it when the
 * case failed halfway, so that no example outlives its test. */
static pid_t running;

static int kill_running(void **state)
{
    if (running > 0) {
        kill(running, SIGKILL);
        waitpid(running, NULL, 0);
        running = 0;
    }
    return 0;
}

/* Starts ew-NAME in dir, its stdout into dir/stdout and its stderr into dir/stderr, with env
 * (NAME=VALUE strings, NULL-terminated; may be NULL) added to the test's environment. */
static pid_t start_service(const char *name, const char *dir, const char *const *env)
{
    char exe[8192], out[4200], err[4200];
    snprintf(exe, sizeof exe, "%s/ew-%s", build_dir(), name);
    snprintf(out, sizeof out, "%s/stdout", dir);
    snprintf(err, sizeof err, "%s/stderr", dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0 || chdir(dir) != 0) _exit(126);
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execl(exe, exe, (char *)NULL);
        _exit(127);
    }
    running = pid;
    return pid;
}

/* Waits up to timeout_ms for text to appear in the file dir/name, written by pid (0: a process
 * that ended); its contents (caller frees), or a failure that shows them. */
static char *wait_for_text(pid_t pid, const char *dir, const char *name, const char *text,
                           int timeout_ms)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int64_t until = ew_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        char *got = slurp(path);
        if (strstr(got, text)) return got;
        int st;
        if (pid > 0 && waitpid(pid, &st, WNOHANG) == pid) {
            if (pid == running) running = 0;
            fail_msg("the example ended (status %d) before it wrote '%s': %s",
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1, text, got);
        }
        if (ew_mono_ns() > until)
            fail_msg("no '%s' in %s after %d ms: %s", text, name, timeout_ms, got);
        free(got);
        nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
}

/* The exit status of pid once it ends (-1: killed by a signal), waiting up to timeout_ms; a
 * process still running then is killed and fails the test. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t until = ew_mono_ns() + (int64_t)timeout_ms * 1000000;
    int st;
    pid_t got;
    while ((got = waitpid(pid, &st, WNOHANG)) == 0) {
        if (ew_mono_ns() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            if (pid == running) running = 0;
            fail_msg("pid %d still running %d ms after SIGTERM", (int)pid, timeout_ms);
        }
        nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    if (got == pid && pid == running) running = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void remove_tree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* A service example with nothing set: it comes up on the defaults (the SQLite bus in
 * var/eventwire.db under its folder), says it is ready, and SIGTERM closes it cleanly. */
static void run_service_example(const char *name)
{
    char dir[] = "/tmp/ew-example-XXXXXX";
    assert_non_null(mkdtemp(dir));
    pid_t pid = start_service(name, dir, NULL);
    free(wait_for_text(pid, dir, "stderr", "\"msg\":\"ready", 60000));
    assert_int_equal(kill(pid, SIGTERM), 0);
    int rc = wait_exit(pid, 60000);
    char path[4200];
    snprintf(path, sizeof path, "%s/stderr", dir);
    char *err = slurp(path);
    if (rc != 0) fail_msg("ew-%s exited %d after SIGTERM: %s", name, rc, err);
    assert_non_null(strstr(err, "\"msg\":\"closed\""));
    snprintf(path, sizeof path, "%s/var/eventwire.db", dir);
    struct stat st;
    if (stat(path, &st) != 0) fail_msg("ew-%s made no store at var/eventwire.db", name);
    free(err);
    remove_tree(dir);
}

/* Every example in examples/: it runs, exits 0, and prints only CloudEvents on stdout; a service
 * runs until SIGTERM and then closes cleanly. */
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
        ran++;
        if (is_service(src, name)) {
            run_service_example(name);
            continue;
        }
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
    }
    closedir(d);
    assert_true(ran >= 2);
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

/* ---- greeter ------------------------------------------------------------------------------ */

typedef struct collected {
    ew_event *evs[16];
    size_t n;
} collected;

static int collect(void *ud, const ew_stored_event *se)
{
    collected *c = ud;
    if (c->n == 16) fail_msg("more than 16 events");
    c->evs[c->n++] = ew_event_ref(se->event);
    return 0;
}

typedef struct letters {
    ew_dlq_row rows[4];
    size_t n;
} letters;

static int keep_letter(void *ud, const ew_dlq_row *row)
{
    letters *l = ud;
    if (l->n == 4) fail_msg("more than 4 dead letters");
    ew_dlq_row *r = &l->rows[l->n++];
    *r = *row;
    r->event_id = strdup(row->event_id);
    r->event_name = strdup(row->event_name);
    r->handler = strdup(row->handler);
    r->subscriber_group = strdup(row->subscriber_group);
    r->event = strdup(row->event);
    r->error = strdup(row->error);
    r->transport = NULL;
    return 0;
}

/* ew-greeter on the SQLite bus, started as a user starts it, beside a publisher of
 * registrations on the same file: each user with a deliverable address gets a mail in
 * GREETER_MAIL_DIR and a notification.email_sent caused by their registration; the one under
 * .invalid is dead-lettered at once into event_store.dead_letter_queue with the reason, which
 * names the user by id and not by address; no address shows in its log; SIGTERM closes it. */
static void test_greeter_greets_and_dead_letters(void **state)
{
    char dir[] = "/tmp/ew-greeter-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[4200], url_env[4300], mail_env[4300];
    snprintf(url, sizeof url, "sqlite:%s/events.db", dir);
    snprintf(url_env, sizeof url_env, "EVENT_STORE_URL=%s", url);
    snprintf(mail_env, sizeof mail_env, "GREETER_MAIL_DIR=%s/mail", dir);
    const char *env[] = {"EVENT_BUS_TYPE=sqlite", url_env, mail_env, NULL};
    pid_t pid = start_service("greeter", dir, env);
    free(wait_for_text(pid, dir, "stderr", "\"msg\":\"ready: group greeter on the sqlite bus\"",
                       60000));

    /* auth-service's part: three registrations, published on the same bus */
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "sqlite", &err) ||
        ew_config_set(cfg, "EVENT_STORE_URL", url, &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err))
        fail_msg("%s", err.msg);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) fail_msg("%s", err.msg);
    static const char *const emails[] = {"ada@example.com", "grace@example.org",
                                         "nobody@mail.example.invalid"};
    static const char *const names[] = {"ada", "grace", "nobody"};
    char ids[3][EW_UUID_LEN + 1];
    ew_event *regs[3];
    const char *roles[] = {"user"};
    for (int i = 0; i < 3; i++) {
        ew_uuid7(ids[i]);
        ew_user_registered u = {
            .user_id = ids[i], .email = emails[i], .username = names[i], .roles = {roles, 1}};
        if (ew_user_registered_new(&regs[i], &u, &(ew_event_attrs){.source = "auth-service"}, &err))
            fail_msg("%s", err.msg);
    }
    if (ew_bus_publish_batch(bus, (const ew_event *const *)regs, 3, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_bus_close(bus), 0);
    ew_config_free(cfg);

    /* the greetings, in its log */
    for (int i = 0; i < 2; i++) {
        char line[128];
        snprintf(line, sizeof line, "greeted user %s", ids[i]);
        free(wait_for_text(pid, dir, "stderr", line, 60000));
    }
    /* the dead letter, in the store */
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    letters dl = {0};
    int64_t until = ew_mono_ns() + 60000000000LL;
    while (dl.n == 0 && ew_mono_ns() < until) {
        if (ew_store_dlq_list(st, &(ew_dlq_filter){.status = -1}, keep_letter, &dl, &err))
            fail_msg("%s", err.msg);
        if (dl.n == 0) nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    assert_int_equal(dl.n, 1);
    ew_dlq_row *r = &dl.rows[0];
    assert_string_equal(r->event_id, ew_event_id(regs[2]));
    assert_string_equal(r->event_name, "user.registered");
    assert_string_equal(r->subscriber_group, "greeter");
    assert_string_equal(r->handler, "user.registered");
    assert_int_equal(r->attempts, 1); /* failed for good: not retried */
    assert_int_equal(r->status, EW_DLQ_PENDING);
    assert_non_null(strstr(r->error, ids[2]));
    assert_non_null(strstr(r->error, "never receives mail"));
    assert_null(strstr(r->error, "nobody@"));

    /* the follow-ups: one notification.email_sent per greeting, caused by its registration */
    collected c = {0};
    if (ew_store_read_all(st, 0, "notification.email_sent", 0, collect, &c, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(c.n, 2);
    for (size_t k = 0; k < c.n; k++) {
        /* the store keeps the address encrypted (docs/encryption.md): read as one with keys */
        assert_true(ew_event_encrypted(c.evs[k]));
        if (ew__store_unseal(st, &c.evs[k], &err)) fail_msg("%s", err.msg);
        const ew_notification_email_sent *m = ew_notification_email_sent_data(c.evs[k]);
        int i = !strcmp(m->user_id, ids[0]) ? 0 : !strcmp(m->user_id, ids[1]) ? 1 : -1;
        if (i < 0) fail_msg("a greeting for a user nobody registered: %s", m->user_id);
        assert_string_equal(m->email, emails[i]);
        assert_string_equal(m->template_name, "greeting");
        assert_string_equal(ew_event_source(c.evs[k]), "greeter");
        assert_string_equal(ew_event_subject(c.evs[k]), ids[i]);
        assert_string_equal(ew_event_causation_id(c.evs[k]), ew_event_id(regs[i]));
        assert_string_equal(ew_event_correlation_id(c.evs[k]), ew_event_correlation_id(regs[i]));
        /* and its mail, named by the message id */
        char path[4400], to[128];
        snprintf(path, sizeof path, "%s/mail/%s.eml", dir, m->message_id);
        char *mail = slurp(path);
        snprintf(to, sizeof to, "To: %s\r\n", emails[i]);
        if (!strstr(mail, to)) fail_msg("%s: not a mail to %s: '%s'", path, emails[i], mail);
        free(mail);
        ew_event_unref(c.evs[k]);
    }

    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(wait_exit(pid, 60000), 0);
    char *log = wait_for_text(0, dir, "stderr", "\"msg\":\"closed\"", 1000);
    assert_non_null(strstr(log, "\"msg\":\"stopping (SIGTERM)\""));
    for (int i = 0; i < 3; i++)
        if (strstr(log, emails[i])) fail_msg("an address in the greeter's log: %s", log);
    free(log);
    for (size_t k = 0; k < dl.n; k++) {
        dl.rows[k].transport = NULL;
        ew_dlq_row_release(&dl.rows[k]);
    }
    for (int i = 0; i < 3; i++)
        ew_event_unref(regs[i]);
    ew_store_close(st);
    remove_tree(dir);
}

/* A bad setting: the greeter names it and stops before it makes anything. */
static void test_greeter_refuses_a_bad_setting(void **state)
{
    char dir[] = "/tmp/ew-greeter-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *env[] = {"EVENT_BUS_TYPE=carrier-pigeon", NULL};
    pid_t pid = start_service("greeter", dir, env);
    assert_int_equal(wait_exit(pid, 60000), 1);
    char *log = wait_for_text(0, dir, "stderr", "EVENT_BUS_TYPE", 1000);
    assert_non_null(strstr(log, "\"level\":\"error\""));
    char path[4200];
    snprintf(path, sizeof path, "%s/var", dir);
    struct stat sb;
    if (stat(path, &sb) == 0) fail_msg("the greeter made %s before it refused the setting", path);
    free(log);
    remove_tree(dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_every_example_runs, kill_running),
    cmocka_unit_test(test_registration_prints_the_flow),
    cmocka_unit_test(test_registration_refuses_a_bad_count),
    cmocka_unit_test_teardown(test_greeter_greets_and_dead_letters, kill_running),
    cmocka_unit_test_teardown(test_greeter_refuses_a_bad_setting, kill_running),
};

EW_TEST_MAIN(tests)
