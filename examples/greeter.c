/* greeter: a service of one's own, as docs/own-service.md builds it. It greets every user who
 * registers: for each user.registered it writes a welcome mail into a folder (GREETER_MAIL_DIR,
 * one file per message, as notification-service's file transport does) and publishes
 * notification.email_sent, which follows from the registration. An address under .invalid
 * (RFC 6761: never deliverable) fails for good, and the event goes to the event store's dead
 * letter queue with the reason (`ewctl dlq list`). It runs until SIGTERM or SIGINT, then lets the
 * handler finish what it started and closes everything.
 *
 * Every setting comes from the environment; with none set it runs on the SQLite bus in
 * var/eventwire.db under the current folder, beside `ewctl up`'s services when started there:
 *
 *     ew-greeter                      (built by the project as build/ew-greeter)
 *
 * ew-example: service */
#define _POSIX_C_SOURCE 200809L /* pthread_sigmask, sigwait, mkdir: POSIX, which -std=c11 hides */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include "eventwire/bus.h"
#include "eventwire/id.h"
#include "eventwire/log.h"
#include "eventwire/store.h"

/* The greeter's own setting, beside the library's: checked, read from the environment and shown
 * as theirs are (ew_config_define). */
static const ew_setting greeter_settings[] = {
    {"GREETER_MAIL_DIR", "var/greetings", "a folder",
     "Where the greeter writes its welcome mails, one file per message (made 0700).",
     EW_SETTING_STRING, 0, 0},
};

typedef struct greeter {
    ew_logger *log;       /* borrowed from main */
    const char *mail_dir; /* borrowed from the configuration */
} greeter;

/* mkdir -p, each folder made 0700 (the mails hold addresses). */
static int make_dirs(const char *path)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return errno = ENAMETOOLONG, -1;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) return -1;
        if (!(*s = c)) return 0;
    }
}

static int is_undeliverable(const char *email)
{
    const char *at = strrchr(email, '@');
    size_t n = at ? strlen(at + 1) : 0;
    return n >= 8 && strcmp(at + 1 + n - 8, ".invalid") == 0;
}

/* The handler: runs on a worker thread of the bus, once per delivery. It may run again for the
 * same event (a retry, or a redelivery after a crash: at least once), so what it does twice must
 * do no harm; here a second delivery writes a second mail. docs/own-service.md shows how the
 * store's inbox makes a handler's database writes happen once. */
static ew_handler_result greet(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    greeter *g = ud;
    const ew_user_registered *u = ew_user_registered_data(ev);
    if (is_undeliverable(u->email)) {
        /* Will never succeed: no retry, straight to the dead letter queue with this reason.
         * The reason names the user by id: an address is personal data, kept out of errors. */
        ew_ctx_set_error(ctx, "user %s: an address under .invalid never receives mail", u->user_id);
        return EW_HANDLER_FAIL;
    }
    char msgid[EW_UUID_LEN + 1], path[4096];
    ew_uuid7(msgid);
    snprintf(path, sizeof path, "%s/%s.eml", g->mail_dir, msgid);
    FILE *f = fopen(path, "wx");
    if (!f ||
        fprintf(f, "To: %s\r\nSubject: Welcome, %s\r\nMessage-ID: <%s@greeter>\r\n\r\nHello!\r\n",
                u->email, u->username, msgid) < 0 ||
        fclose(f) != 0) {
        /* A full disk or a folder gone may pass: back off and try again (ew_subscribe_opts) */
        ew_ctx_set_error(ctx, "cannot write %s: %s", path, strerror(errno));
        return EW_HANDLER_RETRY;
    }
    /* A follow-up event: it carries the registration's correlation id, the registration as its
     * cause, and is published only if this handler returns ok. */
    ew_notification_email_sent sent = {
        .user_id = u->user_id, .email = u->email, .template_name = "greeting", .message_id = msgid};
    ew_error err = {0};
    if (ew_ctx_publish(ctx, EW_T_NOTIFICATION_EMAIL_SENT, &sent, u->user_id, &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_RETRY;
    }
    ew_logger_printf(g->log, EW_LOG_INFO, "greeter", "greeted user %s (message %s)", u->user_id,
                     msgid);
    return EW_HANDLER_OK;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        int help = argc == 2 && !strcmp(argv[1], "--help");
        fprintf(help ? stdout : stderr,
                "usage: %s\n\nGreets every user who registers, until SIGTERM or SIGINT. Settings "
                "come from the\nenvironment: EVENT_BUS_TYPE, EVENT_STORE_URL, SERVICE_NAME (the "
                "group, default\ngreeter), GREETER_MAIL_DIR (default var/greetings), LOG_LEVEL, "
                "...\n",
                argv[0]);
        return help ? 0 : 2;
    }
    /* Blocked before any thread exists: every thread the library starts inherits the mask, so
     * that only sigwait() below sees SIGTERM and SIGINT, on this thread, at a moment of our
     * choosing (nothing runs in signal context). */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    ew_error err = {0};
    ew_logger *log = NULL;
    ew_config *cfg = NULL;
    ew_store *store = NULL;
    ew_bus *bus = NULL;
    greeter g = {0};
    int status = 1;
    if (ew_logger_new(&log, "greeter", EW_LOG_FORMAT_JSON, EW_LOG_INFO, 2, &err)) {
        fprintf(stderr, "greeter: %s\n", err.msg);
        return 1;
    }
    /* The settings: the library's defaults, ours, then the environment, which wins. A bad value
     * stops the program here with its name and the reason. */
    if (ew_config_new(&cfg, &err) ||
        ew_config_define(cfg, greeter_settings,
                         sizeof greeter_settings / sizeof greeter_settings[0], &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "greeter", &err) || ew_config_from_env(cfg, &err))
        goto fail_config;
    ew_logger_configure(log, cfg);
    g.log = log;
    g.mail_dir = ew_config_get(cfg, "GREETER_MAIL_DIR");
    if (make_dirs(g.mail_dir) != 0) {
        ew_error_set(&err, EW_EIO, "GREETER_MAIL_DIR %s: %s", g.mail_dir, strerror(errno));
        goto fail_config;
    }

    /* The event store (EVENT_STORE_URL), where dead letters go: on the SQLite bus, the same file
     * the bus is. It must outlive the bus, whose sink writes into it. */
    ew_store_options so = {.config = cfg, .log = ew_logger_sink, .log_ud = log};
    if (ew_store_open(&store, &so, &err)) goto fail_config;

    /* The bus that EVENT_BUS_TYPE names, with the store's dead letter sink. */
    ew_bus_options bo = {
        .config = cfg, .log = ew_logger_sink, .log_ud = log, .dlq = ew_store_dlq_sink(store)};
    if (ew_bus_open(&bus, &bo, &err)) goto fail_store;

    /* One handler in the group SERVICE_NAME; instances of the greeter share the work. On the
     * SQLite bus the group's place in the log is kept from here on, even while no greeter runs. */
    ew_subscribe_opts sub = {.max_attempts = 5, .backoff_initial_ms = 200};
    if (ew_bus_subscribe(bus, "user.registered", greet, &g, &sub, &err) || ew_bus_start(bus, &err))
        goto fail_bus;
    ew_logger_printf(log, EW_LOG_INFO, "greeter", "ready: group %s on the %s bus",
                     ew_config_get(cfg, "SERVICE_NAME"), ew_bus_backend(bus));

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    ew_logger_printf(log, EW_LOG_INFO, "greeter", "stopping (%s)",
                     sig == SIGINT ? "SIGINT" : "SIGTERM");
    status = 0;

fail_bus:
    /* The bus first: it stops taking events, lets the handler finish what it has (up to
     * EVENT_BUS_DRAIN_TIMEOUT_MS; the group's position is kept, so what is left is delivered at
     * the next start) and may still write dead letters into the store. */
    if (ew_bus_close(bus) == EW_ETIMEDOUT && status == 0) {
        ew_error_set(&err, EW_ETIMEDOUT, "closed with events still in hand");
        status = 1;
    }
fail_store:
    ew_store_close(store);
fail_config:
    if (status)
        ew_logger_printf(log, EW_LOG_ERROR, "greeter", "%s", err.msg);
    else
        ew_logger_printf(log, EW_LOG_INFO, "greeter", "closed");
    ew_config_free(cfg);
    ew_logger_free(log);
    return status;
}
