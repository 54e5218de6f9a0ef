/* Tests of notification-service as a process (set-up: services/svc_env.h): the test publishes the
 * events it handles through a bus of its own on the service's SQLite bus, and checks the mail it
 * wrote (MAIL_DIR in the test's folder), the events it published (the log), its HTTP API, and a
 * fake SMTP server's view of what it sent. One case keeps the service's database in PostgreSQL.
 * ew-fixture: postgres */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#define SVC_UNDER_TEST "notification-service"
#include "services/svc_env.h"
#include "eventwire/id.h"

/* The service with its mail in DIR/mail, fast retries and a fast relay, plus extra. */
static env *start(const char *const *extra)
{
    static const char *const own[] = {"EVENT_HANDLER_BACKOFF_MAX_MS=100", NULL};
    return up_fast("MAIL_DIR", "mail", own, extra);
}

static void registered(env *e, const char *user_id, const char *username, const char *email)
{
    static const char *const roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user_id, .email = email, .username = username, .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user_id, NULL);
}

/* The .eml files in the mail folder: how many, and (when not NULL) the text of the one whose
 * text holds needle. */
static int mails(env *e, const char *needle, char **text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/mail", e->dir);
    DIR *d = opendir(path);
    if (text) *text = NULL;
    if (!d) return 0;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".eml") || de->d_name[0] == '.') continue;
        char file[800];
        snprintf(file, sizeof file, "%s/%s", path, de->d_name);
        FILE *f = fopen(file, "r");
        if (!f) continue;
        char *buf = calloc(1, 65536);
        size_t got = fread(buf, 1, 65535, f);
        buf[got] = '\0';
        fclose(f);
        if (!needle || strstr(buf, needle)) {
            n++;
            if (text && !*text) {
                *text = buf;
                buf = NULL;
            }
        }
        free(buf);
    }
    closedir(d);
    return n;
}

static char *mail_file(env *e, const char *message_id)
{
    char path[512];
    snprintf(path, sizeof path, "%s/mail/%s.eml", e->dir, message_id);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("no %s", path);
    char *buf = calloc(1, 65536);
    size_t got = fread(buf, 1, 65535, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

/* How many dead letters match f; *attempts gets the last one's attempts. */
typedef struct dl_count {
    int n, attempts;
} dl_count;

static int count_dead_letter(void *ud, const ew_dlq_row *row)
{
    dl_count *c = ud;
    c->n++;
    c->attempts = row->attempts;
    return 0;
}

static dl_count dead_letters(env *e, const ew_dlq_filter *f)
{
    dl_count c = {0, 0};
    ew_error err = {0};
    if (ew_store_dlq_list(e->events, f, count_dead_letter, &c, &err)) fail_msg("%s", err.msg);
    return c;
}

/* ---- cases ----------------------------------------------------------------------------------- */

static void test_welcome_email_is_sent_once(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1], event_id[EW_UUID_LEN + 1], reg_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(reg_id);
    static const char *const roles[] = {"user"};
    ew_user_registered reg = {
        .user_id = user_id, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &reg, user_id, reg_id);
    ew_uuid7(event_id);
    ew_user_profile_created pc = {.user_id = user_id, .display_name = "Ada Lovelace"};
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, event_id);

    ew_event *ev = wait_event(e, "notification.welcome_email_sent", user_id, 1);
    const ew_notification_welcome_email_sent *w = ew_notification_welcome_email_sent_data(ev);
    assert_string_equal(w->user_id, user_id);
    assert_string_equal(w->email, "ada@example.com");
    assert_string_equal(ew_event_source(ev), "notification-service");
    /* Caused by whichever of the two came second: the two types' handlers run side by side,
     * and a profile that beats the registration waits for it (pending welcomes). */
    const char *cause = ew_event_causation_id(ev);
    assert_true(strcmp(cause, event_id) == 0 || strcmp(cause, reg_id) == 0);
    char message_id[64];
    snprintf(message_id, sizeof message_id, "%s", w->message_id);
    assert_true(ew_uuid_valid(message_id));
    ew_event_unref(ev);

    /* an RFC 5322 message, named after its id */
    char *text = mail_file(e, message_id);
    assert_non_null(strstr(text, "From: eventwire <no-reply@eventwire.local>\r\n"));
    assert_non_null(strstr(text, "\r\nTo: ada@example.com\r\n"));
    assert_non_null(strstr(text, "\r\nSubject: Welcome, Ada Lovelace!\r\n"));
    assert_non_null(strstr(text, "\r\nDate: "));
    char mid[128];
    snprintf(mid, sizeof mid, "\r\nMessage-ID: <%s@eventwire.local>\r\n", message_id);
    assert_non_null(strstr(text, mid));
    assert_non_null(strstr(text, "\r\n\r\nHello Ada Lovelace,\r\n"));
    assert_non_null(strstr(text, "\"ada\""));
    free(text);

    /* the same event again: the log stores it once; redelivered to the service: its inbox skips
     * it; a second, distinct user.profile_created: the sent-messages table does */
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, event_id);
    ew_event *again;
    assert_int_equal(count_events(e, "user.profile_created", user_id, &again), 1);
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(bus(e), SVC_UNDER_TEST, NULL, again, 0, &err), 0);
    ew_event_unref(again);
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, NULL);
    assert_int_equal(count_events(e, "user.profile_created", user_id, NULL), 2);
    wait_handled(e);
    usleep(100000);
    assert_int_equal(count_events(e, "notification.welcome_email_sent", user_id, NULL), 1);
    assert_int_equal(mails(e, "ada@example.com", NULL), 1);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_messages"
                              " WHERE user_id = $1",
                              user_id),
                     1);

    /* GET /notifications/{user_id} */
    char path[128];
    snprintf(path, sizeof path, "/notifications/%s", user_id);
    http_result r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), user_id);
    const char *msgs = http_member(&r, "messages");
    assert_non_null(msgs);
    assert_non_null(strstr(msgs, message_id));
    assert_non_null(strstr(msgs, "\"template\":\"welcome\""));
    assert_non_null(strstr(msgs, "\"sent_at\":\""));
    http_result_free(&r);
    down(e);
}

static void test_profile_before_registration_waits_for_the_address(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_user_profile_created pc = {.user_id = user_id};
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, NULL);
    usleep(30000);
    registered(e, user_id, "grace", "grace@example.com");
    ew_event *ev = wait_event(e, "notification.welcome_email_sent", user_id, 1);
    char *text = mail_file(e, ew_notification_welcome_email_sent_data(ev)->message_id);
    assert_non_null(strstr(text, "Subject: Welcome, grace!\r\n"));
    free(text);
    ew_event_unref(ev);
    down(e);
}

static void test_password_reset_email_holds_the_token(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(request_id);
    ew_password_reset_token_issued t = {.request_id = request_id,
                                        .user_id = user_id,
                                        .email = "alan@example.com",
                                        .token = "tok-3f9a1c0d2b",
                                        .expires_at = "2030-01-01T00:00:00Z"};
    publish(e, EW_T_PASSWORD_RESET_TOKEN_ISSUED, &t, user_id, NULL);
    ew_event *ev = wait_event(e, "notification.email_sent", user_id, 1);
    const ew_notification_email_sent *s = ew_notification_email_sent_data(ev);
    assert_string_equal(s->template_name, "password_reset");
    assert_string_equal(s->email, "alan@example.com");
    assert_string_equal(s->user_id, user_id);
    assert_true(ew_uuid_valid(s->message_id));
    char *text = mail_file(e, s->message_id);
    assert_non_null(strstr(text, "\r\nTo: alan@example.com\r\n"));
    assert_non_null(strstr(text, "\r\nSubject: Reset your password\r\n"));
    assert_non_null(strstr(text, "    tok-3f9a1c0d2b\r\n"));
    assert_non_null(strstr(text, "2030-01-01T00:00:00Z"));
    free(text);
    ew_event_unref(ev);
    /* the token is in the mail only, never in the service's database */
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_messages"
                              " WHERE subject LIKE '%tok-%' OR ref = $1",
                              "tok-3f9a1c0d2b"),
                     0);
    down(e);
}

static void test_export_link_is_mailed(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(export_id);
    registered(e, user_id, "barbara", "barbara@example.com");
    char url[200];
    snprintf(url, sizeof url, "http://127.0.0.1:8005/exports/%s/download", export_id);
    static const char *const svcs[] = {"auth-service", "export-service"};
    ew_user_data_export_completed c = {.export_id = export_id,
                                       .user_id = user_id,
                                       .download_url = url,
                                       .expires_at = "2030-01-02T00:00:00Z",
                                       .services = {svcs, 2}};
    publish(e, EW_T_USER_DATA_EXPORT_COMPLETED, &c, user_id, NULL);
    ew_event *ev = wait_event(e, "notification.email_sent", user_id, 1);
    const ew_notification_email_sent *s = ew_notification_email_sent_data(ev);
    assert_string_equal(s->template_name, "data_export_ready");
    assert_string_equal(s->email, "barbara@example.com");
    char *text = mail_file(e, s->message_id);
    assert_non_null(strstr(text, url));
    assert_non_null(strstr(text, "Subject: Your data export is ready\r\n"));
    free(text);
    ew_event_unref(ev);
    down(e);
}

/* user.data_export_completed handled before user.registered (a notification-service killed
 * while holding user.registered leaves it pending until it is reclaimed, REDIS_CLAIM_IDLE_MS:
 * the 10-minute soak on redis dead-lettered the export's mail so): the link waits for the
 * address, past every back-off, and is mailed when it comes. */
static void test_export_before_registration_waits_for_the_address(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(export_id);
    char url[200];
    snprintf(url, sizeof url, "http://127.0.0.1:8005/exports/%s/download?c=secret", export_id);
    static const char *const svcs[] = {"auth-service", "export-service"};
    ew_user_data_export_completed c = {.export_id = export_id,
                                       .user_id = user_id,
                                       .download_url = url,
                                       .expires_at = "2030-01-02T00:00:00Z",
                                       .services = {svcs, 2}};
    publish(e, EW_T_USER_DATA_EXPORT_COMPLETED, &c, user_id, NULL);
    /* five attempts 20 to 100 ms apart would all have ended within a second */
    usleep(1000000);
    ew_dlq_filter flt = {.event_name = "user.data_export_completed", .status = -1};
    assert_int_equal(dead_letters(e, &flt).n, 0);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_pending_exports"
                              " WHERE user_id = $1",
                              user_id),
                     1);
    assert_int_equal(count_events(e, "notification.email_sent", user_id, NULL), 0);
    registered(e, user_id, "edsger", "edsger@example.com");
    ew_event *ev = wait_event(e, "notification.email_sent", user_id, 1);
    const ew_notification_email_sent *s = ew_notification_email_sent_data(ev);
    assert_string_equal(s->template_name, "data_export_ready");
    assert_string_equal(s->email, "edsger@example.com");
    char *text = mail_file(e, s->message_id);
    assert_non_null(strstr(text, url));
    free(text);
    ew_event_unref(ev);
    /* mailed once, and the link is no longer kept */
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_pending_exports"
                              " WHERE user_id = $1",
                              user_id),
                     0);
    assert_int_equal(dead_letters(e, &flt).n, 0);
    usleep(200000);
    assert_int_equal(count_events(e, "notification.email_sent", user_id, NULL), 1);
    down(e);
}

/* A port nothing listens on. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_smtp_failure_publishes_email_failed_and_dead_letters(void **state)
{
    char url[64];
    snprintf(url, sizeof url, "SMTP_URL=smtp://127.0.0.1:%d", closed_port());
    const char *extra[] = {url, "EVENT_HANDLER_MAX_ATTEMPTS=2", "SMTP_TIMEOUT_MS=2000", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(request_id);
    ew_password_reset_token_issued t = {.request_id = request_id,
                                        .user_id = user_id,
                                        .email = "edsger@example.com",
                                        .token = "secret-token",
                                        .expires_at = "2030-01-01T00:00:00Z"};
    publish(e, EW_T_PASSWORD_RESET_TOKEN_ISSUED, &t, user_id, NULL);
    /* one per failed attempt */
    ew_event *ev = wait_event(e, "notification.email_failed", user_id, 2);
    const ew_notification_email_failed *f = ew_notification_email_failed_data(ev);
    assert_string_equal(f->template_name, "password_reset");
    assert_string_equal(f->email, "edsger@example.com");
    assert_non_null(strstr(f->error, "SMTP"));
    assert_non_null(strstr(f->error, "attempt 2"));
    ew_event_unref(ev);
    /* after the last attempt the event is a dead letter of the service's group */
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    dl_count found = {0, 0};
    while (!found.n && ew_mono_ns() < deadline) {
        ew_dlq_filter flt = {
            .event_name = "password.reset_token_issued", .group = SVC_UNDER_TEST, .status = -1};
        found = dead_letters(e, &flt);
        if (!found.n) usleep(20000);
    }
    assert_int_equal(found.n, 1);
    assert_int_equal(found.attempts, 2);
    assert_int_equal(count_events(e, "notification.email_sent", user_id, NULL), 0);
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.notification_messages", NULL),
                     0);
    assert_int_equal(mails(e, NULL, NULL), 0);
    down(e);
}

/* ---- a fake SMTP server ---------------------------------------------------------------------- */

typedef struct smtp_fake {
    int lfd, port;
    pthread_t th;
    char from[256], rcpt[256];
    char *data;
    int messages;
} smtp_fake;

static int read_line(int fd, char *buf, size_t n)
{
    size_t len = 0;
    while (len + 1 < n) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r <= 0) return -1;
        buf[len++] = c;
        if (c == '\n') break;
    }
    buf[len] = '\0';
    return (int)len;
}

static void say(int fd, const char *s)
{
    if (write(fd, s, strlen(s)) < 0) return;
}

static void *smtp_main(void *p)
{
    smtp_fake *s = p;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    say(fd, "220 fake.example ESMTP\r\n");
    char line[2048];
    while (read_line(fd, line, sizeof line) > 0) {
        if (!strncasecmp(line, "EHLO", 4) || !strncasecmp(line, "HELO", 4)) {
            say(fd, "250-fake.example\r\n250 SIZE 1000000\r\n");
        } else if (!strncasecmp(line, "MAIL FROM:", 10)) {
            snprintf(s->from, sizeof s->from, "%.*s", (int)strcspn(line + 10, "\r\n"), line + 10);
            say(fd, "250 OK\r\n");
        } else if (!strncasecmp(line, "RCPT TO:", 8)) {
            snprintf(s->rcpt, sizeof s->rcpt, "%.*s", (int)strcspn(line + 8, "\r\n"), line + 8);
            say(fd, "250 OK\r\n");
        } else if (!strncasecmp(line, "DATA", 4)) {
            say(fd, "354 go ahead\r\n");
            ew_buf b;
            ew_buf_init(&b);
            while (read_line(fd, line, sizeof line) > 0 && strcmp(line, ".\r\n"))
                ew_buf_puts(&b, line);
            s->data = ew_buf_steal(&b, NULL);
            s->messages++;
            say(fd, "250 OK queued\r\n");
        } else if (!strncasecmp(line, "QUIT", 4)) {
            say(fd, "221 bye\r\n");
            break;
        } else {
            say(fd, "502 not implemented\r\n");
        }
    }
    close(fd);
    return NULL;
}

static void test_smtp_delivery(void **state)
{
    smtp_fake s = {0};
    s.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(s.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s.lfd, 4), 0);
    assert_int_equal(getsockname(s.lfd, (struct sockaddr *)&a, &l), 0);
    assert_int_equal(pthread_create(&s.th, NULL, smtp_main, &s), 0);
    char url[64]; /* a server without TLS: the URL must say so */
    snprintf(url, sizeof url, "SMTP_URL=smtp://127.0.0.1:%d?tls=none", ntohs(a.sin_port));
    const char *extra[] = {url, "MAIL_FROM=Reset Desk <reset@mail.example.org>", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(request_id);
    ew_password_reset_token_issued t = {.request_id = request_id,
                                        .user_id = user_id,
                                        .email = "barbara@example.com",
                                        .token = "smtp-token-42",
                                        .expires_at = "2030-01-01T00:00:00Z"};
    publish(e, EW_T_PASSWORD_RESET_TOKEN_ISSUED, &t, user_id, NULL);
    ew_event *ev = wait_event(e, "notification.email_sent", user_id, 1);
    char mid[128];
    snprintf(mid, sizeof mid, "Message-ID: <%s@mail.example.org>",
             ew_notification_email_sent_data(ev)->message_id);
    ew_event_unref(ev);
    pthread_join(s.th, NULL);
    close(s.lfd);
    assert_int_equal(s.messages, 1);
    assert_string_equal(s.from, "<reset@mail.example.org>");
    assert_string_equal(s.rcpt, "<barbara@example.com>");
    assert_non_null(s.data);
    assert_non_null(strstr(s.data, "From: Reset Desk <reset@mail.example.org>\r\n"));
    assert_non_null(strstr(s.data, "smtp-token-42"));
    assert_non_null(strstr(s.data, mid));
    free(s.data);
    /* nothing in the spool: the mail went over SMTP */
    assert_int_equal(mails(e, NULL, NULL), 0);
    down(e);
}

/* ---- a real SMTP server with STARTTLS and AUTH (tests/services/smtp_server.py) --------------- */

typedef struct smtp_tls {
    char dir[256]; /* its certificate, key, auth.log and N.msg files */
    pid_t pid;
    int port;
} smtp_tls;

/* A copy of the server the running case started, until smtp_tls_stop(): reap_smtp(), as a
 * teardown, stops it when the case failed first (and the service, as reap() does). */
static smtp_tls smtp_current;

/* Starts smtp_server.py in MODE (starttls: a throw-away certificate for 127.0.0.1 made here with
 * openssl; plain-auth: no TLS, AUTH in the clear); false when python3-aiosmtpd or openssl is not
 * there (the case then skips, and says why). */
static bool smtp_tls_start(smtp_tls *t, const char *mode)
{
    const char *src = getenv("EW_SOURCE_DIR");
    char script[512];
    snprintf(script, sizeof script, "%s/tests/services/smtp_server.py", src ? src : ".");
    if (!src || access(script, R_OK) || access("/usr/bin/python3", X_OK) ||
        system("/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null") != 0 ||
        system("command -v openssl >/dev/null") != 0) {
        fprintf(stderr, "skipped: needs EW_SOURCE_DIR, /usr/bin/python3 with aiosmtpd, openssl "
                        "(scripts/setup)\n");
        return false;
    }
    svc_tmpdir(t->dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout '%s/key.pem' -out '%s/cert.pem' -days 1 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             t->dir, t->dir);
    assert_int_equal(system(cmd), 0);
    int out[2];
    assert_int_equal(pipe(out), 0);
    char cert[300], key[300], errpath[300];
    snprintf(cert, sizeof cert, "%s/cert.pem", t->dir);
    snprintf(key, sizeof key, "%s/key.pem", t->dir);
    snprintf(errpath, sizeof errpath, "%s/server.stderr", t->dir);
    fflush(NULL);
    t->pid = fork();
    assert_true(t->pid >= 0);
    if (t->pid == 0) {
        dup2(out[1], 1);
        int efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (efd >= 0) dup2(efd, 2);
        close(out[0]);
        execl("/usr/bin/python3", "python3", script, mode, t->dir, cert, key, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[32] = "";
    size_t len = 0;
    while (len + 1 < sizeof line && read(out[0], line + len, 1) == 1 && line[len] != '\n')
        len++;
    line[len] = '\0';
    close(out[0]);
    t->port = atoi(line);
    smtp_current = *t;
    if (t->port <= 0) {
        char text[2048] = "";
        FILE *f = fopen(errpath, "r");
        if (f) {
            text[fread(text, 1, sizeof text - 1, f)] = '\0';
            fclose(f);
        }
        fail_msg("smtp_server.py %s did not start: %s", mode, text);
    }
    return true;
}

static void smtp_tls_stop(smtp_tls *t)
{
    smtp_current.pid = 0;
    kill(t->pid, SIGTERM);
    waitpid(t->pid, NULL, 0);
    assert_int_equal(rm_dir(t->dir), 0);
}

static int reap_smtp(void **state)
{
    if (smtp_current.pid > 0) {
        kill(smtp_current.pid, SIGKILL);
        waitpid(smtp_current.pid, NULL, 0);
        rm_dir(smtp_current.dir);
        smtp_current.pid = 0;
    }
    return reap(state);
}

/* The text of file name in the server's folder ("" when there is none); the caller frees. */
static char *smtp_tls_file(const smtp_tls *t, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", t->dir, name);
    char *text = calloc(1, 1 << 16);
    FILE *f = fopen(path, "r");
    if (f) {
        text[fread(text, 1, (1 << 16) - 1, f)] = '\0';
        fclose(f);
    }
    return text;
}

static void reset_token(env *e, const char *user_id, const char *email, const char *token)
{
    char request_id[EW_UUID_LEN + 1];
    ew_uuid7(request_id);
    ew_password_reset_token_issued t = {.request_id = request_id,
                                        .user_id = user_id,
                                        .email = email,
                                        .token = token,
                                        .expires_at = "2030-01-01T00:00:00Z"};
    publish(e, EW_T_PASSWORD_RESET_TOKEN_ISSUED, &t, user_id, NULL);
}

/* A server that requires STARTTLS and then AUTH: the service upgrades, verifies the server's
 * certificate against SMTP_CA_FILE, logs in with the URL's user and password, and delivers. */
static void test_smtp_starttls_and_auth(void **state)
{
    smtp_tls t;
    if (!smtp_tls_start(&t, "starttls")) skip();
    char url[128], ca[320];
    snprintf(url, sizeof url, "SMTP_URL=smtp://mailer:s3cret@127.0.0.1:%d", t.port);
    snprintf(ca, sizeof ca, "SMTP_CA_FILE=%s/cert.pem", t.dir);
    const char *extra[] = {url, ca, "MAIL_FROM=Reset Desk <reset@mail.example.org>", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    reset_token(e, user_id, "radia@example.com", "tls-token-7");
    ew_event_unref(wait_event(e, "notification.email_sent", user_id, 1));
    char *log = smtp_tls_file(&t, "auth.log");
    assert_string_equal(log, "mailer tls=yes ok\n");
    free(log);
    char *msg = smtp_tls_file(&t, "1.msg");
    if (!strstr(msg, "from: reset@mail.example.org\nrcpt: radia@example.com\ntls: yes\n"
                     "auth: mailer\n"))
        fail_msg("the server saw: %s", msg);
    assert_non_null(strstr(msg, "tls-token-7"));
    free(msg);
    assert_int_equal(mails(e, NULL, NULL), 0);
    down(e);
    smtp_tls_stop(&t);
}

/* The same server without SMTP_CA_FILE: its certificate is nobody's the system trusts, so
 * nothing is sent (email_failed names the certificate), and no password went out. */
static void test_smtp_untrusted_certificate_is_refused(void **state)
{
    smtp_tls t;
    if (!smtp_tls_start(&t, "starttls")) skip();
    char url[128];
    snprintf(url, sizeof url, "SMTP_URL=smtp://mailer:s3cret@127.0.0.1:%d", t.port);
    const char *extra[] = {url, "EVENT_HANDLER_MAX_ATTEMPTS=1", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    reset_token(e, user_id, "radia@example.com", "tls-token-8");
    ew_event *ev = wait_event(e, "notification.email_failed", user_id, 1);
    const char *why = ew_notification_email_failed_data(ev)->error;
    if (!strstr(why, "certificate") && !strstr(why, "SSL")) fail_msg("email_failed says: %s", why);
    ew_event_unref(ev);
    char *log = smtp_tls_file(&t, "auth.log");
    assert_string_equal(log, "");
    free(log);
    char *msg = smtp_tls_file(&t, "1.msg");
    assert_string_equal(msg, "");
    free(msg);
    down(e);
    smtp_tls_stop(&t);
}

/* A server that offers AUTH but no STARTTLS (or one whose offer was stripped on the way): with
 * a user in SMTP_URL the service refuses to send rather than hand over the password in the
 * clear. */
static void test_smtp_password_never_goes_in_the_clear(void **state)
{
    smtp_tls t;
    if (!smtp_tls_start(&t, "plain-auth")) skip();
    char url[128];
    snprintf(url, sizeof url, "SMTP_URL=smtp://mailer:s3cret@127.0.0.1:%d", t.port);
    const char *extra[] = {url, "EVENT_HANDLER_MAX_ATTEMPTS=1", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    reset_token(e, user_id, "radia@example.com", "tls-token-9");
    ew_event_unref(wait_event(e, "notification.email_failed", user_id, 1));
    char *log = smtp_tls_file(&t, "auth.log");
    assert_string_equal(log, ""); /* no AUTH reached the server */
    free(log);
    char *msg = smtp_tls_file(&t, "1.msg");
    assert_string_equal(msg, "");
    free(msg);
    down(e);
    smtp_tls_stop(&t);
}

/* A server without STARTTLS and a URL without a user: TLS is required all the same, so nothing
 * is sent; with ?tls=none at the end of the URL, the message goes in the clear. */
static void test_smtp_requires_tls_unless_the_url_says_otherwise(void **state)
{
    smtp_tls t;
    if (!smtp_tls_start(&t, "plain")) skip();
    char url[128];
    snprintf(url, sizeof url, "SMTP_URL=smtp://127.0.0.1:%d", t.port);
    const char *extra[] = {url, "EVENT_HANDLER_MAX_ATTEMPTS=1", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    reset_token(e, user_id, "radia@example.com", "tls-token-10");
    ew_event *ev = wait_event(e, "notification.email_failed", user_id, 1);
    fprintf(stderr, "without ?tls=none: %s\n", ew_notification_email_failed_data(ev)->error);
    ew_event_unref(ev);
    char *msg = smtp_tls_file(&t, "1.msg");
    assert_string_equal(msg, ""); /* nothing reached the server */
    free(msg);
    down(e);

    snprintf(url, sizeof url, "SMTP_URL=smtp://127.0.0.1:%d?tls=none", t.port);
    e = start(extra);
    reset_token(e, user_id, "radia@example.com", "tls-token-11");
    ew_event_unref(wait_event(e, "notification.email_sent", user_id, 1));
    msg = smtp_tls_file(&t, "1.msg");
    assert_non_null(strstr(msg, "tls: no\n"));
    assert_non_null(strstr(msg, "tls-token-11"));
    free(msg);
    down(e);
    smtp_tls_stop(&t);

    /* a user with ?tls=none, or another query, stops the service at start */
    char dir[256];
    svc_tmpdir(dir);
    const char *login_clear[] = {"SMTP_URL=smtp://mailer:s3cret@127.0.0.1:25?tls=none", NULL};
    char *out = start_fails(dir, login_clear);
    assert_non_null(strstr(out, "password in the clear"));
    assert_null(strstr(out, "s3cret"));
    free(out);
    const char *query[] = {"SMTP_URL=smtp://127.0.0.1:25?tls=off", NULL};
    out = start_fails(dir, query);
    assert_non_null(strstr(out, "?tls=none"));
    free(out);
    assert_int_equal(rm_dir(dir), 0);
}

static void test_gdpr_export_and_deletion(void **state)
{
    env *e = start(NULL);
    char user_id[EW_UUID_LEN + 1], other[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1],
        request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(other);
    registered(e, user_id, "hedy", "hedy@example.com");
    ew_user_profile_created pc = {.user_id = user_id};
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, NULL);
    ew_event *ev = wait_event(e, "notification.welcome_email_sent", user_id, 1);
    char message_id[64];
    snprintf(message_id, sizeof message_id, "%s",
             ew_notification_welcome_email_sent_data(ev)->message_id);
    ew_event_unref(ev);

    /* export: what it holds about the user; {} about a user it does not know */
    ew_uuid7(export_id);
    ew_user_data_export_requested rq = {.export_id = export_id, .user_id = user_id};
    publish(e, EW_T_USER_DATA_EXPORT_REQUESTED, &rq, user_id, NULL);
    ev = wait_event(e, "user.data_collected", user_id, 1);
    const ew_user_data_collected *c = ew_user_data_collected_data(ev);
    assert_string_equal(c->export_id, export_id);
    assert_string_equal(c->service, "notification-service");
    assert_non_null(strstr(c->data, "\"email\":\"hedy@example.com\""));
    assert_non_null(strstr(c->data, "\"username\":\"hedy\""));
    assert_non_null(strstr(c->data, "\"template\":\"welcome\""));
    assert_non_null(strstr(c->data, message_id));
    ew_event_unref(ev);
    rq.user_id = other;
    publish(e, EW_T_USER_DATA_EXPORT_REQUESTED, &rq, other, NULL);
    ev = wait_event(e, "user.data_collected", other, 1);
    assert_string_equal(ew_user_data_collected_data(ev)->data, "{}");
    ew_event_unref(ev);

    /* deletion: the address, the message row and its file */
    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = user_id};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, user_id, NULL);
    ev = wait_event(e, "user.data_deleted", user_id, 1);
    const ew_user_data_deleted *dd = ew_user_data_deleted_data(ev);
    assert_string_equal(dd->request_id, request_id);
    assert_string_equal(dd->service, "notification-service");
    assert_int_equal(dd->records, 2);
    ew_event_unref(ev);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_users"
                              " WHERE user_id = $1",
                              user_id),
                     0);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.notification_messages"
                              " WHERE user_id = $1",
                              user_id),
                     0);
    assert_int_equal(mails(e, NULL, NULL), 0);
    char path[128];
    snprintf(path, sizeof path, "/notifications/%s", user_id);
    expect(e, "GET", path, NULL, 404, "user_id", "holds nothing");
    down(e);
}

static void test_bad_requests_and_settings(void **state)
{
    env *e = start(NULL);
    expect(e, "GET", "/notifications/not-a-uuid", NULL, 400, "user_id", "UUID");
    expect(e, "GET", "/notifications/0190a6b2-9a5e-7c3d-8e4f-0123456789AB", NULL, 400, "user_id",
           "UUID");
    expect(e, "GET", "/notifications/0190a6b2-9a5e-7c3d-8e4f-0123456789ab", NULL, 404, "user_id",
           NULL);
    http_result r =
        api(e, "POST", "/notifications/0190a6b2-9a5e-7c3d-8e4f-0123456789ab", "{}", NULL);
    assert_int_equal(r.status, 405);
    http_result_free(&r);
    r = api(e, "GET", "/healthz", NULL, NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    down(e);

    /* settings it cannot work with stop it at start, saying which */
    char dir[256];
    svc_tmpdir(dir);
    const char *bad_from[] = {"MAIL_FROM=nobody", NULL};
    free(start_fails(dir, bad_from));
    const char *bad_url[] = {"SMTP_URL=http://127.0.0.1:25", NULL};
    char *out = start_fails(dir, bad_url); /* both starts' stderr */
    assert_non_null(strstr(out, "MAIL_FROM"));
    assert_non_null(strstr(out, "SMTP_URL"));
    free(out);
    const char *bad_ca[] = {"SMTP_URL=smtp://127.0.0.1:25", "SMTP_CA_FILE=/nonexistent/ca.pem",
                            NULL};
    out = start_fails(dir, bad_ca);
    assert_non_null(strstr(out, "SMTP_CA_FILE: cannot read /nonexistent/ca.pem"));
    free(out);
    assert_int_equal(rm_dir(dir), 0);
}

static void test_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *extra[] = {db, NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1], path[128];
    ew_uuid7(user_id);
    registered(e, user_id, "pguser", "pg@example.com");
    ew_user_profile_created pc = {.user_id = user_id};
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, NULL);
    publish(e, EW_T_USER_PROFILE_CREATED, &pc, user_id, NULL);
    ew_event_unref(wait_event(e, "notification.welcome_email_sent", user_id, 1));
    wait_handled(e);
    assert_int_equal(count_events(e, "notification.welcome_email_sent", user_id, NULL), 1);
    assert_int_equal(mails(e, "pg@example.com", NULL), 1);
    snprintf(path, sizeof path, "/notifications/%s", user_id);
    http_result r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(http_member(&r, "messages"), "\"template\":\"welcome\""));
    http_result_free(&r);
    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = user_id};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, user_id, NULL);
    ew_event *ev = wait_event(e, "user.data_deleted", user_id, 1);
    assert_int_equal(ew_user_data_deleted_data(ev)->records, 2);
    ew_event_unref(ev);
    expect(e, "GET", path, NULL, 404, "user_id", NULL);
    /* an export's link before the address waits for it (notification_pending_exports) */
    char late[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(late);
    ew_uuid7(export_id);
    static const char *const svcs[] = {"auth-service"};
    ew_user_data_export_completed c = {.export_id = export_id,
                                       .user_id = late,
                                       .download_url = "http://127.0.0.1:8005/exports/x/download",
                                       .expires_at = "2030-01-02T00:00:00Z",
                                       .services = {svcs, 1}};
    publish(e, EW_T_USER_DATA_EXPORT_COMPLETED, &c, late, NULL);
    usleep(1000000);
    registered(e, late, "pglate", "pglate@example.com");
    ev = wait_event(e, "notification.email_sent", late, 1);
    assert_string_equal(ew_notification_email_sent_data(ev)->template_name, "data_export_ready");
    ew_event_unref(ev);
    ew_dlq_filter flt = {.event_name = "user.data_export_completed", .status = -1};
    assert_int_equal(dead_letters(e, &flt).n, 0);
    down(e);
    ew_test_pg_drop(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_welcome_email_is_sent_once, reap),
    cmocka_unit_test_teardown(test_profile_before_registration_waits_for_the_address, reap),
    cmocka_unit_test_teardown(test_password_reset_email_holds_the_token, reap),
    cmocka_unit_test_teardown(test_export_link_is_mailed, reap),
    cmocka_unit_test_teardown(test_export_before_registration_waits_for_the_address, reap),
    cmocka_unit_test_teardown(test_smtp_failure_publishes_email_failed_and_dead_letters, reap),
    cmocka_unit_test_teardown(test_smtp_delivery, reap),
    cmocka_unit_test_teardown(test_smtp_starttls_and_auth, reap_smtp),
    cmocka_unit_test_teardown(test_smtp_untrusted_certificate_is_refused, reap_smtp),
    cmocka_unit_test_teardown(test_smtp_password_never_goes_in_the_clear, reap_smtp),
    cmocka_unit_test_teardown(test_smtp_requires_tls_unless_the_url_says_otherwise, reap_smtp),
    cmocka_unit_test_teardown(test_gdpr_export_and_deletion, reap),
    cmocka_unit_test_teardown(test_bad_requests_and_settings, reap),
    cmocka_unit_test_teardown(test_on_postgresql, reap),
};

EW_TEST_MAIN(tests)
