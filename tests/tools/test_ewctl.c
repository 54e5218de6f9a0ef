/* Tests of ewctl as a user runs it: the built binary, its output and its exit status. */
#include <ctype.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include <stdatomic.h>
#include <stdbool.h>
#include "eventwire/bus.h"
#include "eventwire/evauth.h"
#include "eventwire/event.h"
#include "eventwire/store.h"

static void test_help_on_every_command(void **state)
{
    const char *cmds[] = {"--help",         "schema --help", "validate --help", "config --help",
                          "publish --help", "tail --help",   "dlq --help",      "store --help",
                          "saga --help",    "up --help",     "down --help",     "user --help"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *out;
        assert_int_equal(ew_test_ewctl(cmds[i], NULL, &out, NULL), 0);
        assert_non_null(strstr(out, "usage: ewctl"));
        free(out);
    }
    char *out, *err;
    assert_int_equal(ew_test_ewctl("frobnicate", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "unknown command 'frobnicate'"));
    free(out);
    free(err);
}

/* Is word in text as a word of its own (not inside another)? */
static bool has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        bool before = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '-');
        bool after = !(isalnum((unsigned char)p[n]) || p[n] == '-');
        if (before && after) return true;
    }
    return false;
}

/* What a newcomer reads first is complete: every command `ewctl help` lists answers --help, and
 * its line in `ewctl help` names every subcommand its usage shows (`ewctl dlq retry`, `ewctl
 * store replay`, `ewctl audit checkpoint`, ...). */
static void test_help_names_every_subcommand(void **state)
{
    char *help, *save = NULL;
    assert_int_equal(ew_test_ewctl("help", NULL, &help, NULL), 0);
    int commands = 0, subcommands = 0;
    for (char *line = strtok_r(help, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[64];
        int at = 0;
        if (strncmp(line, "  ", 2) != 0 || sscanf(line + 2, "%63[a-z-] %n", name, &at) != 1 || !at)
            continue;
        const char *summary = line + 2 + at;
        char args[128], *usage;
        snprintf(args, sizeof args, "%s --help", name);
        if (ew_test_ewctl(args, NULL, &usage, NULL) != 0) fail_msg("ewctl %s --help failed", name);
        commands++;
        char prefix[80];
        snprintf(prefix, sizeof prefix, "ewctl %s ", name);
        for (const char *p = strstr(usage, prefix); p; p = strstr(p + 1, prefix)) {
            char sub[64];
            if (sscanf(p + strlen(prefix), "%63[a-z-]", sub) != 1 ||
                !isalpha((unsigned char)sub[0]))
                continue;
            subcommands++;
            if (!has_word(summary, sub))
                fail_msg("`ewctl help` says of %s \"%s\", which does not name its subcommand %s",
                         name, summary, sub);
        }
        free(usage);
    }
    free(help);
    assert_true(commands >= 13);
    assert_true(subcommands >= 10);
}

/* ewctl user: a usage error is 2; a user who is not there is 1, and nothing is published (the
 * grant itself is tested with the services running, in tests/services/test_authz.c). */
static void test_user_grant_admin_refuses_what_it_cannot_do(void **state)
{
    char *out, *err;
    assert_int_equal(ew_test_ewctl("user grant-admin", NULL, &out, &err), 2);
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("user make-god ada", NULL, &out, &err), 2);
    free(out);
    free(err);
    char dir[] = "/tmp/ewctl-user-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/{SERVICE_NAME}.db", dir);
    setenv("SERVICE_DB_URL", url, 1);
    snprintf(url, sizeof url, "sqlite:%s/events.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    assert_int_equal(ew_test_ewctl("user grant-admin nobody", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "ewctl:"));
    free(out);
    free(err);
    unsetenv("SERVICE_DB_URL");
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_schema_list_and_show(void **state)
{
    char *out, *err;
    assert_int_equal(ew_test_ewctl("schema list", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "user.registered\t2\tlatest"));
    assert_non_null(strstr(out, "user.registered\t1\told"));
    assert_non_null(strstr(out, "user.deletion_completed\t1\tlatest"));
    free(out);
    assert_int_equal(ew_test_ewctl("schema show user.registered", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"$schema\": \"https://json-schema.org/draft/2020-12/schema\""));
    assert_non_null(strstr(out, "\"x-personal-data\": true"));
    free(out);
    assert_int_equal(ew_test_ewctl("schema show user.registered --version 1", NULL, &out, NULL), 0);
    assert_null(strstr(out, "\"roles\": {"));
    free(out);
    assert_int_equal(ew_test_ewctl("schema show user.registered --envelope", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"specversion\": {\"const\": \"1.0\"}"));
    free(out);
    assert_int_equal(ew_test_ewctl("schema show user.nothing", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "unknown event type 'user.nothing'"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("schema show", NULL, &out, &err), 2);
    free(out);
    free(err);
}

#define GOOD                                                                                       \
    "{\"specversion\":\"1.0\",\"id\":\"a1\",\"source\":\"s\",\"type\":\"user.logged_out\","        \
    "\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"session_id\":\"x\"}}"

static void test_validate_reports_each_bad_line(void **state)
{
    const char *input = GOOD "\n"
                             "{\"specversion\":\"1.0\"\n"
                             "\n"
                             "[1]\n" GOOD "\n"
                             "{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":"
                             "\"user.nope\",\"data\":{}}\n";
    char *out, *err;
    assert_int_equal(ew_test_ewctl("validate -", input, &out, &err), 1);
    assert_non_null(strstr(out, "line 1: ok user.logged_out v1 a1"));
    assert_non_null(strstr(out, "line 2: EW_EJSON: "));
    assert_non_null(strstr(out, "line 4: EW_ENOTOBJ: "));
    assert_non_null(strstr(out, "line 5: ok"));
    assert_non_null(strstr(out, "line 6: EW_EUNKNOWNTYPE: unknown event type 'user.nope'"));
    assert_null(strstr(out, "line 3"));
    assert_non_null(strstr(err, "5 events, 2 valid, 3 invalid"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("validate --quiet --json -", input, &out, NULL), 1);
    assert_null(strstr(out, "\"ok\":true"));
    assert_non_null(strstr(out, "{\"line\":4,\"ok\":false,\"error\":\"EW_ENOTOBJ\""));
    free(out);
    assert_int_equal(ew_test_ewctl("validate -", GOOD "\n" GOOD "\n", &out, NULL), 0);
    free(out);
    assert_int_equal(ew_test_ewctl("validate /nonexistent/file", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "cannot open /nonexistent/file"));
    free(out);
    free(err);
}

static void test_validate_honours_size_limit(void **state)
{
    char *out;
    assert_int_equal(ew_test_ewctl("validate -", GOOD "\n", &out, NULL), 0);
    free(out);
    setenv("EVENT_MAX_BYTES", "1024", 1);
    char big[4096];
    snprintf(big, sizeof big, "{\"specversion\":\"1.0\",\"pad\":\"%03000d\"}\n", 0);
    assert_int_equal(ew_test_ewctl("validate -", big, &out, NULL), 1);
    assert_non_null(strstr(out, "EW_ETOOBIG"));
    free(out);
    char *err;
    setenv("EVENT_MAX_BYTES", "lots", 1);
    assert_int_equal(ew_test_ewctl("validate -", GOOD "\n", &out, &err), 2);
    assert_non_null(strstr(err, "EVENT_MAX_BYTES"));
    free(out);
    free(err);
    unsetenv("EVENT_MAX_BYTES");
}

static void test_config_lists_settings(void **state)
{
    char *out, *err;
    assert_int_equal(ew_test_ewctl("config", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "EVENT_BUS_TYPE\t"));
    assert_non_null(strstr(out, "SAGA_TIMEOUT_SECONDS\t3600\t3600"));
    free(out);
    setenv("SAGA_TIMEOUT_SECONDS", "never", 1);
    assert_int_equal(ew_test_ewctl("config", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "SAGA_TIMEOUT_SECONDS: 'never' is not a whole number"));
    unsetenv("SAGA_TIMEOUT_SECONDS");
    free(out);
    free(err);
}

/* The standard output of the service NAME run with args, beside ewctl. Caller frees. */
static char *run_service(const char *name, const char *args)
{
    char self[4096] = ".", cmd[8192];
    const char *bin = getenv("EW_BUILD_DIR");
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!bin && n > 0) {
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        bin = self;
    }
    snprintf(cmd, sizeof cmd, "%s/%s %s", bin ? bin : ".", name, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *buf = calloc(1, 1 << 16);
    size_t len = fread(buf, 1, (1 << 16) - 1, p);
    buf[len] = '\0';
    assert_int_equal(pclose(p), 0);
    return buf;
}

/* The library's table holds the library's settings; each service's are its own. */
static void test_config_lists_each_programs_settings(void **state)
{
    char *out, *err;
    assert_int_equal(ew_test_ewctl("config", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "CONSOLE_TOKEN	")); /* ewctl's own */
    assert_null(strstr(out, "AUTH_PASSWORD_HASH"));
    assert_null(strstr(out, "HTTP_PORT"));
    free(out);
    assert_int_equal(ew_test_ewctl("config --service auth-service", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "HTTP_PORT	")); /* every service's */
    assert_non_null(strstr(out, "AUTH_PASSWORD_HASH	interactive	"));
    assert_null(strstr(out, "SMTP_URL"));       /* notification-service's */
    assert_null(strstr(out, "EVENT_BUS_TYPE")); /* the library's */
    /* the service itself says the same */
    char *own = run_service("auth-service", "--settings");
    assert_string_equal(own, out);
    free(own);
    free(out);
    /* a service's setting is checked as the library's are, and its secrets hidden */
    setenv("SMTP_URL", "smtp://mailer:hunter2@mail.example:25", 1);
    assert_int_equal(ew_test_ewctl("config --service notification-service", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "SMTP_URL	smtp://mailer:***@mail.example:25	"));
    assert_null(strstr(out, "hunter2"));
    unsetenv("SMTP_URL");
    free(out);
    setenv("AUTH_PASSWORD_HASH", "weak", 1);
    assert_int_equal(ew_test_ewctl("config --service auth-service", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "AUTH_PASSWORD_HASH: 'weak' is not one of"));
    free(out);
    free(err);
    /* ... and only where it is read: ewctl does not refuse another program's setting */
    assert_int_equal(ew_test_ewctl("config", NULL, &out, NULL), 0);
    free(out);
    unsetenv("AUTH_PASSWORD_HASH");
    assert_int_equal(ew_test_ewctl("config --service mail-service", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "no service 'mail-service'"));
    assert_non_null(strstr(err, "notification-service"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("config --service", NULL, &out, &err), 2);
    assert_non_null(strstr(err, "--service needs"));
    free(out);
    free(err);
}

static void test_publish_validates_before_it_publishes(void **state)
{
    char *out, *err;
    setenv("EVENT_BUS_TYPE", "memory", 1);
    assert_int_equal(
        ew_test_ewctl(
            "publish user.logged_out --subject s --data "
            "'{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"session_id\":\"x\"}'",
            NULL, &out, NULL),
        0);
    assert_int_equal(strlen(out), 37); /* the new event's id and a newline */
    free(out);
    assert_int_equal(
        ew_test_ewctl("publish user.logged_out --data -", "{\"user_id\":\"nope\"}", &out, &err), 1);
    assert_non_null(strstr(err, "EW_EDATA"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("publish user.exploded --data '{}'", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "unknown event type 'user.exploded'"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("publish user.logged_out", NULL, &out, &err), 2);
    free(out);
    free(err);
    assert_int_equal(
        ew_test_ewctl("publish user.logged_out --data @/nonexistent", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "cannot read /nonexistent"));
    free(out);
    free(err);
    setenv("EVENT_BUS_TYPE", "carrier-pigeon", 1);
    assert_int_equal(ew_test_ewctl("tail", NULL, &out, &err), 1);
    assert_non_null(strstr(err, "EVENT_BUS_TYPE"));
    free(out);
    free(err);
    unsetenv("EVENT_BUS_TYPE");
    assert_int_equal(ew_test_ewctl("tail 'user..x'", NULL, &out, &err), 2);
    free(out);
    free(err);
}

static void test_configuration_doc_matches_the_table(void **state)
{
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src) skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/configuration.md", src);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *doc = calloc(1, 1 << 16);
    size_t n = fread(doc, 1, (1 << 16) - 1, f);
    fclose(f);
    doc[n] = '\0';
    char *out;
    unsetenv("EVENT_BUS_TYPE");
    assert_int_equal(ew_test_ewctl("config --markdown", NULL, &out, NULL), 0);
    if (!strstr(doc, out))
        fail_msg("docs/configuration.md is out of date: regenerate its table with "
                 "`ewctl config --markdown`");
    free(out);
    free(doc);
}

static void test_dlq_and_store_commands(void **state)
{
    char dir[] = "/tmp/ewctl-store-XXXXXX", url[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/s.db", dir);
    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_user_logged_out d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = "s"};
    ew_event *ev[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(ew_user_logged_out_new(&ev[i], &d, &(ew_event_attrs){.source = "t"}, NULL),
                         0);
    assert_int_equal(
        ew_store_append(st, "user-1", EW_EXPECT_ANY, (const ew_event *const *)ev, 2, NULL, &err),
        0);
    ew_dlq_sink sink = ew_store_dlq_sink(st);
    ew_dead_letter dl = {.event = ev[0],
                         .event_id = ew_event_id(ev[0]),
                         .event_type = "user.logged_out",
                         .group = "auth-service",
                         .handler = "end-session",
                         .error = "database is locked",
                         .attempts = 5,
                         .first_failed_us = 1700000000000000LL,
                         .last_failed_us = 1700000001000000LL};
    assert_int_equal(sink.ops->put(sink.self, &dl, &err), 0);
    dl.event = ev[1];
    dl.event_id = ew_event_id(ev[1]);
    dl.handler = "other";
    assert_int_equal(sink.ops->put(sink.self, &dl, &err), 0);
    ew_store_close(st);
    setenv("EVENT_STORE_URL", url, 1);

    char *out, *errout;
    assert_int_equal(ew_test_ewctl("dlq list", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"handler\":\"end-session\""));
    assert_non_null(strstr(out, "\"handler\":\"other\""));
    assert_non_null(strstr(out, "\"status\":\"pending\""));
    assert_null(strstr(out, "\"event\":")); /* list leaves the event out */
    free(out);
    assert_int_equal(ew_test_ewctl("dlq list --handler other", NULL, &out, NULL), 0);
    assert_null(strstr(out, "end-session"));
    assert_non_null(strstr(out, "\"attempts\":5"));
    free(out);
    assert_int_equal(ew_test_ewctl("dlq show 1", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"event\":\"{\\\"specversion\\\""));
    assert_non_null(strstr(out, "\"error\":\"database is locked\""));
    free(out);
    /* no operator's chain before the operator did anything */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "the operator's chain holds nothing here yet"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("dlq discard 1", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "{\"id\":1,\"status\":\"discarded\"}"));
    free(out);
    /* discarded already: nothing to discard, and nothing recorded */
    assert_int_equal(ew_test_ewctl("dlq discard 1", NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "dead letter 1 is discarded already"));
    free(out);
    free(errout);
    /* the discard is in the operator's chain (in the event store, signed with keys/ewctl's key),
     * once, by the dead letter's id and its event's, and the chain holds */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    const char *entry = strstr(out, "\"service\":\"ewctl\",\"seq\":1,");
    assert_non_null(entry);
    assert_non_null(strstr(entry, "\"actor\":\"operator\",\"action\":\"dlq.discarded\","
                                  "\"subject\":\"1\""));
    assert_non_null(strstr(entry, ew_event_id(ev[0])));
    assert_non_null(strstr(entry, "\"handler\":\"end-session\""));
    assert_null(strstr(out, "\"seq\":2,"));
    free(out);
    char pub[160];
    snprintf(pub, sizeof pub, "audit verify --key %s/keys/ewctl.audit.key.pub", dir);
    assert_int_equal(ew_test_ewctl(pub, NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "{\"service\":\"ewctl\",\"ok\":true,\"entries\":1"));
    free(out);
    /* --limit is checked; a type that is not the catalog's is warned about */
    assert_int_equal(ew_test_ewctl("dlq list --limit ten", NULL, &out, &errout), 2);
    assert_non_null(strstr(errout, "--limit takes a number from 1"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("saga list --limit 0", NULL, &out, &errout), 2);
    assert_non_null(strstr(errout, "--limit takes a number from 1"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("dlq list --event user.regstered", NULL, &out, &errout), 0);
    assert_non_null(strstr(errout, "'user.regstered' is not an event type of the catalog"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("dlq list --status discarded", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"id\":1,"));
    assert_null(strstr(out, "\"id\":2,"));
    free(out);
    assert_int_equal(ew_test_ewctl("dlq show 99", NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "99"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("dlq list --status lost", NULL, &out, &errout), 2);
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("store stream user-1", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"version\":1"));
    assert_non_null(strstr(out, "\"version\":2"));
    assert_non_null(strstr(out, ew_event_id(ev[1])));
    free(out);
    assert_int_equal(ew_test_ewctl("store purge", NULL, &out, &errout), 0);
    assert_non_null(strstr(out, "{\"purged\":0}"));
    assert_non_null(strstr(errout, "purged 0 events in "));
    free(out);
    free(errout);
    /* the purge is the operator's second entry, with its count */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    entry = strstr(out, "\"seq\":2,");
    assert_non_null(entry);
    assert_non_null(strstr(entry, "\"actor\":\"operator\",\"action\":\"store.purged\","
                                  "\"subject\":null,\"details\":{\"purged\":0}"));
    free(out);
    setenv("EVENT_STORE_URL", "oracle://x", 1);
    assert_int_equal(ew_test_ewctl("dlq list", NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "cannot open the event store"));
    free(out);
    free(errout);
    unsetenv("EVENT_STORE_URL");
    for (int i = 0; i < 2; i++)
        ew_event_unref(ev[i]);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static ew_handler_result tb_count_late(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add((atomic_int *)ud, 1);
    return EW_HANDLER_OK;
}

/* ---- dlq retry and store replay: another process reaches a handler through the bus --------- */

typedef struct flaky {
    atomic_int fail, handled;
} flaky;

static ew_handler_result flaky_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    flaky *f = ud;
    if (atomic_load(&f->fail)) {
        ew_ctx_set_error(ctx, "profile database unavailable");
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&f->handled, 1);
    return EW_HANDLER_OK;
}

static int first_id(void *ud, const ew_dlq_row *r)
{
    *(int64_t *)ud = r->id;
    return 1;
}

/* Polls cond(ud) for up to 20 s. */
static bool eventually(bool (*cond)(void *), void *ud)
{
    for (int i = 0; i < 2000; i++) {
        if (cond(ud)) return true;
        usleep(10000);
    }
    return cond(ud);
}

typedef struct probe {
    ew_store *st;
    int64_t id;
    atomic_int *counter;
    int want;
} probe;

static bool has_dead_letter(void *ud)
{
    probe *p = ud;
    ew_dlq_filter f = {.handler = "create-profile", .status = -1};
    return ew_store_dlq_list(p->st, &f, first_id, &p->id, NULL) == 0 && p->id > 0;
}

static bool counted(void *ud)
{
    probe *p = ud;
    return atomic_load(p->counter) >= p->want;
}

static bool resolved(void *ud)
{
    probe *p = ud;
    ew_dlq_row r;
    if (ew_store_dlq_get(p->st, p->id, &r, NULL)) return false;
    bool yes = r.status == EW_DLQ_RESOLVED;
    ew_dlq_row_release(&r);
    return yes;
}

static void test_dlq_retry_and_store_replay_through_the_bus(void **state)
{
    char dir[] = "/tmp/ewctl-retry-XXXXXX", url[128], cmd[512];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/ew.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    ew_error err = {0};
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_from_env(cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "user-service", &err), 0);
    ew_bus *bus;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .dlq = ew_store_dlq_sink(st)}, &err))
        fail_msg("%s", err.msg);
    ew_config_free(cfg);
    flaky f = {.fail = 1};
    ew_subscribe_opts so = {.group = "user-service", .name = "create-profile", .max_attempts = 1};
    assert_int_equal(ew_bus_subscribe(bus, "user.registered", flaky_handle, &f, &so, &err), 0);
    assert_int_equal(ew_bus_start(bus, &err), 0);

    /* A service's handler fails for good: the event is a dead letter. */
    char *out, *errout;
    assert_int_equal(
        ew_test_ewctl("publish user.registered --subject 0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d "
                      "--data '{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                      "\"email\":\"ada@example.com\",\"username\":\"ada\","
                      "\"roles\":[\"user\"]}'",
                      NULL, &out, NULL),
        0);
    free(out);
    probe p = {.st = st, .counter = &f.handled};
    assert_true(eventually(has_dead_letter, &p));
    snprintf(cmd, sizeof cmd, "dlq list --handler create-profile --status pending");
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "profile database unavailable"));
    free(out);

    /* The cause is fixed; the operator retries it from another process. */
    atomic_store(&f.fail, 0);
    snprintf(cmd, sizeof cmd, "dlq retry %lld", (long long)p.id);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, &errout), 0);
    assert_non_null(strstr(out, "\"status\":\"retried\""));
    free(out);
    free(errout);
    p.want = 1;
    assert_true(eventually(counted, &p));
    assert_true(eventually(resolved, &p));
    snprintf(cmd, sizeof cmd, "dlq show %lld", (long long)p.id);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"status\":\"resolved\""));
    free(out);
    /* Nothing left to retry. */
    snprintf(cmd, sizeof cmd, "dlq retry %lld", (long long)p.id);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "resolved"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("dlq retry --all --event user.registered", NULL, &out, NULL), 0);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(ew_test_ewctl("dlq retry", NULL, &out, &errout), 2);
    free(out);
    free(errout);

    /* A group that joined late gets the stored events replayed; the others do not. */
    atomic_int late = 0;
    assert_int_equal(ew_bus_subscribe(bus, "user.*", tb_count_late, &late,
                                      &(ew_subscribe_opts){.group = "late-projection"}, &err),
                     0);
    assert_int_equal(ew_test_ewctl("store replay --from 1 'user.#' --to-group late-projection",
                                   NULL, &out, &errout),
                     0);
    assert_non_null(strstr(out, "\"replayed\":1"));
    /* not a terminal: plain lines, the summary last */
    assert_non_null(strstr(errout, "replayed 1 events in "));
    assert_null(strchr(errout, '\r'));
    free(out);
    free(errout);
    probe q = {.counter = &late, .want = 1};
    assert_true(eventually(counted, &q));
    usleep(200000);
    assert_int_equal(atomic_load(&late), 1);
    assert_int_equal(atomic_load(&f.handled), 1);
    /* the replay is in the operator's chain: to which group, from where, what, how many */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"action\":\"store.replayed\",\"subject\":\"late-projection\","
                                "\"details\":{\"from\":1,\"pattern\":\"user.#\",\"replayed\":1}"));
    free(out);
    assert_int_equal(ew_test_ewctl("store replay 'user.#' --to-group x", NULL, &out, &errout), 2);
    assert_non_null(strstr(errout, "--from"));
    free(out);
    free(errout);

    assert_int_equal(ew_bus_close(bus), 0);
    ew_store_close(st);
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_tail_brief_prints_one_line_per_event(void **state)
{
    char dir[] = "/tmp/ewctl-brief-XXXXXX", url[128], cmd[256];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/ew.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    char *out, *id, *errout;
    /* as ewctl, another source is refused (EW_EPERM) and nothing is sent */
    assert_int_equal(ew_test_ewctl("publish user.logged_out --subject subj-1 --source auth-service "
                                   "--data '{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                                   "\"session_id\":\"s1\"}'",
                                   NULL, &id, &errout),
                     1);
    assert_non_null(strstr(errout, "EW_EPERM"));
    assert_non_null(strstr(errout, "publishes as itself"));
    free(id);
    free(errout);
    /* with auth-service's key (made here by a rotation, as its first start would) */
    assert_int_equal(ew_test_ewctl("keys rotate --service auth-service", NULL, &out, NULL), 0);
    free(out);
    assert_int_equal(ew_test_ewctl("publish user.logged_out --subject subj-1 --as auth-service "
                                   "--data '{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                                   "\"session_id\":\"s1\"}'",
                                   NULL, &id, NULL),
                     0);
    id[strcspn(id, "\n")] = '\0';
    assert_int_equal(ew_test_ewctl("tail --brief --from-beginning --count 1", NULL, &out, NULL), 0);
    /* "HH:MM:SS.mmm  user.logged_out  auth-service  subj-1  corr=<id's first 8>" */
    assert_non_null(strstr(out, "user.logged_out"));
    assert_non_null(strstr(out, "auth-service"));
    assert_non_null(strstr(out, "subj-1"));
    char corr[16];
    snprintf(corr, sizeof corr, "corr=%.8s", id);
    assert_non_null(strstr(out, corr));
    assert_null(strchr(out, '{'));
    assert_int_equal((int)(strchr(out, '\n') - out) + 1, (int)strlen(out)); /* one line */
    free(out);
    /* publishing as auth-service is in the operator's chain, by the event's id and type */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    char want[200];
    snprintf(want, sizeof want,
             "\"action\":\"bus.published_as\",\"subject\":\"service:auth-service\","
             "\"details\":{\"event_id\":\"%s\",\"type\":\"user.logged_out\"}",
             id);
    if (!strstr(out, want)) fail_msg("no %s in\n%s", want, out);
    assert_null(strstr(out, "subj-1"));
    free(out);
    free(id);
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ewctl keys: list shows keys without secrets, rotate makes and retires, rotate without
 * --service is reserved, policy prints the default; ewctl as itself may not publish a sensitive
 * type, and --as needs the service's key file. */
/* A handler that fails while `fail` is set, and counts the user.registered events it gets at the
 * latest version (roles, the address in clear) when it does not. */
typedef struct upcast_seen {
    atomic_int fail, handled, latest;
} upcast_seen;

static ew_handler_result upcast_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    upcast_seen *u = ud;
    if (atomic_load(&u->fail)) {
        ew_ctx_set_error(ctx, "profile database unavailable");
        return EW_HANDLER_FAIL;
    }
    const ew_user_registered *d = ew_user_registered_data(ev);
    if (d && ew_event_version(ev) == 2 && d->roles.count == 1 &&
        strcmp(d->roles.items[0], "user") == 0 && strcmp(d->email, "ada@example.com") == 0)
        atomic_fetch_add(&u->latest, 1);
    atomic_fetch_add(&u->handled, 1);
    return EW_HANDLER_OK;
}

static int count_rows(void *ud, const ew_dlq_row *r)
{
    (void)r;
    (*(int *)ud)++;
    return 0;
}

/* A keyed service (auth-service) publishes user.registered at version 1; user-service, which
 * reads version 2 and checks every event (EVENT_AUTH=mac, the default policy), fails to handle
 * it; `ewctl dlq retry`, another process, hands the dead letter back: it verifies, as published,
 * and is handled at the latest version; nothing is refused. */
static void test_dlq_retry_of_an_old_event_verifies(void **state)
{
    char dir[] = "/tmp/ewctl-upcast-XXXXXX", url[128], cmd[128];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/ew.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    ew_error err = {0};
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_from_env(cfg, &err), 0);
    ew_evauth *user, *auth;
    if (ew_evauth_open(&user, &(ew_evauth_options){.config = cfg, .service = "user-service"},
                       &err) ||
        ew_evauth_open(&auth, &(ew_evauth_options){.config = cfg, .service = "auth-service"}, &err))
        fail_msg("%s", err.msg);
    ew_bus *bus, *pub;
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "user-service", &err), 0);
    if (ew_bus_open(&bus,
                    &(ew_bus_options){.config = cfg, .dlq = ew_store_dlq_sink(st), .auth = user},
                    &err))
        fail_msg("%s", err.msg);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err), 0);
    if (ew_bus_open(&pub, &(ew_bus_options){.config = cfg, .auth = auth}, &err))
        fail_msg("%s", err.msg);
    ew_config_free(cfg);
    upcast_seen u = {.fail = 1};
    ew_subscribe_opts so = {.group = "user-service", .name = "create-profile", .max_attempts = 1};
    assert_int_equal(ew_bus_subscribe(bus, "user.registered", upcast_handle, &u, &so, &err), 0);
    assert_int_equal(ew_bus_start(bus, &err), 0);
    assert_int_equal(ew_bus_start(pub, &err), 0);

    const char *uid = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    ew_user_registered_v1 d1 = {.user_id = uid, .email = "ada@example.com", .username = "ada"};
    ew_event *v1;
    assert_int_equal(ew_event_new(&v1, EW_T_USER_REGISTERED_V1, &d1,
                                  &(ew_event_attrs){.source = "auth-service", .subject = uid},
                                  &err),
                     0);
    assert_int_equal(ew_bus_publish(pub, v1, &err), 0);
    ew_event_unref(v1);
    probe p = {.st = st, .counter = &u.handled, .want = 1};
    assert_true(eventually(has_dead_letter, &p));
    int refused = 0;
    ew_dlq_filter rf = {.handler = "<decode>", .status = -1};
    assert_int_equal(ew_store_dlq_list(st, &rf, count_rows, &refused, &err), 0);
    assert_int_equal(refused, 0);

    atomic_store(&u.fail, 0);
    char *out, *errout;
    snprintf(cmd, sizeof cmd, "dlq retry %lld", (long long)p.id);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, &errout), 0);
    assert_non_null(strstr(out, "\"status\":\"retried\""));
    free(out);
    free(errout);
    assert_true(eventually(counted, &p));
    assert_true(eventually(resolved, &p));
    usleep(200000); /* a moment for a refusal, were there one */
    assert_int_equal(ew_store_dlq_list(st, &rf, count_rows, &refused, &err), 0);
    assert_int_equal(refused, 0);
    assert_int_equal(atomic_load(&u.handled), 1);
    assert_int_equal(atomic_load(&u.latest), 1);

    assert_int_equal(ew_bus_close(pub), 0);
    assert_int_equal(ew_bus_close(bus), 0);
    ew_evauth_close(auth);
    ew_evauth_close(user);
    ew_store_close(st);
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    assert_int_equal(system(rm), 0);
}

static void test_keys_commands(void **state)
{
    char dir[] = "/tmp/ewctl-keys-XXXXXX", url[128], cmd[256], path[160];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/ew.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    char *out, *errout;
    assert_int_equal(
        ew_test_ewctl("keys rotate --service export-service --grace 60", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"service\":\"export-service\""));
    assert_non_null(strstr(out, "\"alg\":\"mac\""));
    free(out);
    snprintf(path, sizeof path, "%s/keys/export-service.bus.key", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(
        ew_test_ewctl("keys rotate --service export-service --alg ed25519", NULL, &out, NULL), 0);
    free(out);
    assert_int_equal(ew_test_ewctl("keys list --service export-service", NULL, &out, NULL), 0);
    /* two keys, the first retired a minute from now (still current), the second ed25519 */
    char *second = strchr(out, '\n');
    assert_non_null(second);
    assert_non_null(strstr(out, "\"owner\":\"service:export-service\""));
    assert_non_null(strstr(second, "\"alg\":\"ed25519\""));
    assert_null(strstr(out, "material"));
    assert_null(strstr(out, "secret"));
    free(out);
    /* both rotations are in the operator's chain, by the service and the new key's id */
    assert_int_equal(ew_test_ewctl("audit list --service ewctl", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"seq\":1,"));
    assert_non_null((second = strstr(out, "\"seq\":2,")));
    assert_non_null(strstr(second, "\"action\":\"bus.key_rotated\",\"subject\":"
                                   "\"service:export-service\""));
    assert_non_null(strstr(second, "\"alg\":\"ed25519\""));
    free(out);
    assert_int_equal(ew_test_ewctl("audit verify --service ewctl", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"ok\":true,\"entries\":2"));
    free(out);
    /* bad values; without --service, rotate is the key-encryption key's, which takes neither
     * --alg nor --grace (tests/tools/test_ewctl_keys.c) */
    assert_int_equal(ew_test_ewctl("keys rotate --grace 5", NULL, &out, &errout), 2);
    assert_non_null(strstr(errout, "--service"));
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("keys rotate --service x --alg rsa", NULL, &out, &errout), 2);
    free(out);
    free(errout);
    assert_int_equal(ew_test_ewctl("keys policy --default", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "publish   auth-service"));
    free(out);
    /* ewctl as itself: nothing sensitive; --as a service without a key file: refused */
    const char *del = "publish user.deletion_requested --subject u --data '{\"request_id\":"
                      "\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"user_id\":"
                      "\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\"}'";
    assert_int_equal(ew_test_ewctl(del, NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "does not let ewctl publish user.deletion_requested"));
    free(out);
    free(errout);
    snprintf(cmd, sizeof cmd, "%s --as auth-service", del);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, &errout), 1);
    assert_non_null(strstr(errout, "auth-service.bus.key"));
    free(out);
    free(errout);
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A read command where there is no store says so, and makes none. */
static void test_no_store_is_said_not_made(void **state)
{
    char dir[] = "/tmp/ew-nostore-XXXXXX", url[160], path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/var/eventwire.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", path);
    setenv("EVENT_STORE_URL", url, 1);
    const char *cmds[] = {"dlq list", "store stream user-1", "saga list", "store purge"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *out, *errout;
        assert_int_equal(ew_test_ewctl(cmds[i], NULL, &out, &errout), 1);
        if (!strstr(errout, "no event store at ") || !strstr(errout, "EVENT_STORE_URL"))
            fail_msg("%s: %s", cmds[i], errout);
        free(out);
        free(errout);
    }
    assert_int_equal(access(path, F_OK), -1);
    unsetenv("EVENT_STORE_URL");
    rmdir(dir);
}

/* An event the tail cannot take gets one line on stderr — id, type, reason, where it came from,
 * where it went — and the tail goes on; its exit status stays 0. With --group the dead letter
 * is kept in the store's queue, where ewctl dlq shows where it came from. */
static void test_tail_says_what_it_drops(void **state)
{
    char dir[] = "/tmp/ewctl-drop-XXXXXX", url[128], cmd[256];
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof url, "sqlite:%s/ew.db", dir);
    setenv("EVENT_STORE_URL", url, 1);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    const char *pub =
        "publish user.logged_out --subject s --data "
        "'{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"session_id\":\"s1\"}'";
    char *out, *err;
    assert_int_equal(ew_test_ewctl(pub, NULL, &out, NULL), 0);
    free(out);
    /* someone writes a row with SQL whose data the schema refuses */
    ew_store *st;
    ew_error e = {0};
    assert_int_equal(ew_store_open(&st, &(ew_store_options){.url = url}, &e), 0);
    ew_txn *t;
    assert_int_equal(ew_store_begin(st, &t, &e), 0);
    assert_int_equal(
        ew_txn_exec(t,
                    "INSERT INTO event_store.events (position, event_id, stream_id, version, "
                    "event_type, event_version, data, metadata, recorded_at) VALUES ((SELECT "
                    "max(position) + 1 FROM event_store.events), 'raw-1', 'raw', 1, "
                    "'user.logged_out', 1, '{\"user_id\":5}', '{\"id\":\"raw-1\"}', "
                    "'2026-01-01T00:00:00.000000Z')",
                    NULL, 0, NULL, &e),
        0);
    assert_int_equal(ew_txn_commit(t, &e), 0);
    ew_store_close(st);
    assert_int_equal(ew_test_ewctl(pub, NULL, &out, NULL), 0);
    free(out);

    assert_int_equal(ew_test_ewctl("tail --from-beginning --count 2", NULL, &out, &err), 0);
    assert_int_equal(strchr(strchr(out, '\n') + 1, '\n') - out + 1, (long)strlen(out)); /* 2 */
    const char *line = strstr(err, "ewctl tail: could not take id=raw-1 type=user.logged_out: ");
    assert_non_null(line);
    assert_non_null(strstr(line, "EW_E"));
    assert_non_null(strstr(line, "from sqlite position=2"));
    assert_non_null(strstr(line, "dropped"));
    assert_null(strstr(strchr(line, '\n'), "could not take")); /* one line for it */
    free(out);
    free(err);

    assert_int_equal(ew_test_ewctl("tail --group g1 --from-beginning --count 2", NULL, &out, &err),
                     0);
    line = strstr(err, "ewctl tail: could not take id=raw-1 type=user.logged_out: ");
    assert_non_null(line);
    assert_non_null(
        strstr(line, "kept in event_store.dead_letter_queue (ewctl dlq list --group g1)"));
    free(out);
    free(err);
    assert_int_equal(ew_test_ewctl("dlq list --group g1", NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"event_id\":\"raw-1\""));
    assert_non_null(strstr(out, "\"handler\":\"<decode>\""));
    assert_non_null(strstr(out, "\"transport\":\"sqlite position=2\""));
    free(out);
    unsetenv("EVENT_STORE_URL");
    unsetenv("EVENT_BUS_TYPE");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_no_store_is_said_not_made),
    cmocka_unit_test(test_tail_brief_prints_one_line_per_event),
    cmocka_unit_test(test_keys_commands),
    cmocka_unit_test(test_tail_says_what_it_drops),
    cmocka_unit_test(test_dlq_retry_and_store_replay_through_the_bus),
    cmocka_unit_test(test_dlq_retry_of_an_old_event_verifies),
    cmocka_unit_test(test_dlq_and_store_commands),
    cmocka_unit_test(test_configuration_doc_matches_the_table),
    cmocka_unit_test(test_user_grant_admin_refuses_what_it_cannot_do),
    cmocka_unit_test(test_publish_validates_before_it_publishes),
    cmocka_unit_test(test_help_on_every_command),
    cmocka_unit_test(test_help_names_every_subcommand),
    cmocka_unit_test(test_schema_list_and_show),
    cmocka_unit_test(test_validate_reports_each_bad_line),
    cmocka_unit_test(test_validate_honours_size_limit),
    cmocka_unit_test(test_config_lists_settings),
    cmocka_unit_test(test_config_lists_each_programs_settings),
};

EW_TEST_MAIN(tests)
