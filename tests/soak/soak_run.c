/* The chaos soak's machinery: the broker through scripts/test-servers, the five services as
 * processes on fixed ports (so that a restarted one answers where the load generator calls),
 * their memory, HTTP calls, the databases and the figures. */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "soak.h"
#include "svc_auth.h"

extern char **environ;

const char *const soak_service_names[SOAK_NSERVICES] = {
    "auth-service", "user-service", "notification-service", "analytics-service", "export-service"};

int64_t soak_ms(void)
{
    return ew_mono_ns() / 1000000;
}

static pthread_mutex_t say_lock = PTHREAD_MUTEX_INITIALIZER;

void soak_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&say_lock);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&say_lock);
    va_end(ap);
}

void soak_figure(soak_ctx *c, const char *name, double value, const char *unit)
{
    if (value == (double)(long long)value)
        soak_say("bench: %s.%s %lld %s", c->prefix, name, (long long)value, unit);
    else
        soak_say("bench: %s.%s %.1f %s", c->prefix, name, value, unit);
}

void soak_check(soak_ctx *c, bool ok, const char *what, const char *fmt, ...)
{
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    soak_say("check: %s %s%s%s%s", what, ok ? "ok" : "FAILED", *detail ? " (" : "", detail,
             *detail ? ")" : "");
    if (!ok) c->failures++;
}

void soak_check_rss(soak_ctx *c, bool ok, const char *what, const char *fmt, ...)
{
    char detail[512] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (SOAK_RSS_MEANINGFUL)
        soak_check(c, ok, what, "%s", detail);
    else
        soak_say("check: %s skipped (%s; under AddressSanitizer resident memory is not judged)",
                 what, detail);
}

/* ---- the broker -------------------------------------------------------------------------- */

static int run_servers(soak_ctx *c, const char *action)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' %s %s '%s' >>'%s/servers.log' 2>&1",
             c->source, action, c->backend, c->servers, c->work);
    int rc = system(cmd);
    return rc == 0 ? 0 : -1;
}

int soak_broker(soak_ctx *c, const char *action)
{
    if (!strcmp(c->backend, "sqlite")) return 0;
    return run_servers(c, action);
}

static int read_url(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(out, (int)n, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    out[strcspn(out, "\r\n")] = '\0';
    return 0;
}

/* A port nobody listens on (it can be bound), from a range of the soak's own. */
static int free_port(int from)
{
    for (int p = from; p < from + 2000; p++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok) return p;
    }
    return -1;
}

int soak_open(soak_ctx *c, const char *backend, const char *prefix)
{
    c->backend = backend;
    c->prefix = prefix;
    pthread_mutex_init(&c->lock, NULL);
    const char *b = getenv("EW_BUILD_DIR");
    if (b) {
        snprintf(c->build, sizeof c->build, "%s", b);
    } else {
        ssize_t n = readlink("/proc/self/exe", c->build, sizeof c->build - 1);
        c->build[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(c->build, '/');
        if (slash) *slash = '\0';
    }
    const char *s = getenv("EW_SOURCE_DIR");
    snprintf(c->source, sizeof c->source, "%s", s ? s : EW_SOAK_SOURCE_DIR);
    snprintf(c->work, sizeof c->work, "/tmp/ew-soak-XXXXXX");
    if (!mkdtemp(c->work)) {
        fprintf(stderr, "soak: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    if (chdir(c->work) || mkdir("var", 0700) || mkdir("var/log", 0700)) {
        fprintf(stderr, "soak: %s: %s\n", c->work, strerror(errno));
        return -1;
    }
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(c->ns, sizeof c->ns, "soak%.8s", id + 24);
    /* the broker's state folder lies in the build folder, beside ew-kafka-mock */
    snprintf(c->servers, sizeof c->servers, "%s/soak-servers-%s", c->build, c->ns);
    setenv("EVENT_BUS_TYPE", backend, 1);
    if (strcmp(backend, "sqlite")) {
        if (run_servers(c, "start")) {
            fprintf(stderr, "soak: cannot start %s (%s/servers.log)\n", backend, c->work);
            return -1;
        }
        char path[700];
        snprintf(path, sizeof path, "%s/%s.url", c->servers, backend);
        if (read_url(path, c->broker_url, sizeof c->broker_url)) return -1;
        if (!strcmp(backend, "redis")) {
            setenv("REDIS_EVENT_URL", c->broker_url, 1);
            setenv("REDIS_CHANNEL_PREFIX", c->ns, 1);
        } else if (!strcmp(backend, "kafka")) {
            setenv("KAFKA_BOOTSTRAP_SERVERS", c->broker_url, 1);
            setenv("KAFKA_TOPIC_PREFIX", c->ns, 1);
            setenv("KAFKA_CONSUMER_GROUP", c->ns, 1);
        } else if (!strcmp(backend, "rabbitmq")) {
            setenv("RABBITMQ_URL", c->broker_url, 1);
            setenv("RABBITMQ_EXCHANGE", c->ns, 1);
        } else {
            fprintf(stderr, "soak: unknown backend %s\n", backend);
            return -1;
        }
    }
    /* The load is a test's: the cheapest password hash, and the login and reset limits raised
     * so that they do not answer the generator (docs/security.md says benchmarks raise them) */
    setenv("AUTH_PASSWORD_HASH", "min", 1);
    setenv("AUTH_LOGIN_FAILURES_PER_ACCOUNT", "1000000", 1);
    setenv("AUTH_LOGIN_FAILURES_PER_ADDRESS", "1000000", 1);
    setenv("AUTH_RESETS_PER_ADDRESS", "1000000", 1);
    setenv("AUTH_REGISTRATIONS_PER_ADDRESS", "1000000", 1);
    setenv("EXPORT_REQUESTS_PER_USER", "1000000", 1);
    setenv("EVENT_HANDLER_BACKOFF_MS", "50", 1);
    setenv("EVENT_HANDLER_BACKOFF_MAX_MS", "2000", 1);
    setenv("OUTBOX_POLL_MS", "200", 1);
    setenv("REDIS_CLAIM_IDLE_MS", "5000", 1);
    setenv("LOG_LEVEL", "info", 1);
    unsetenv("HTTP_PORT");
    unsetenv("SERVICE_DB_URL");
    unsetenv("EVENT_STORE_URL");
    /* below the ephemeral range (a client socket never takes a killed service's port) and
     * apart from scripts/test-servers's ranges; from a random start, so that two soaks on one
     * machine do not pick the same ports */
    int port = 10000 + (int)((unsigned)getpid() * 2654435761u % 9000u);
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        c->svc[i].name = soak_service_names[i];
        c->svc[i].out_fd = -1;
        c->svc[i].port = port = free_port(port + 1);
        if (port < 0) return -1;
    }
    return 0;
}

void soak_close(soak_ctx *c, bool keep)
{
    for (int i = 0; i < SOAK_NSERVICES; i++)
        if (c->svc[i].pid) soak_service_kill(c, i);
    if (strcmp(c->backend, "sqlite")) run_servers(c, "stop");
    rmdir(c->servers);
    if (chdir("/")) return;
    if (!keep) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->work);
        if (system(cmd)) fprintf(stderr, "soak: could not remove %s\n", c->work);
    } else {
        soak_say("soak: the run's folder is kept: %s", c->work);
    }
}

/* ---- processes --------------------------------------------------------------------------- */

int soak_service_start(soak_ctx *c, int i)
{
    soak_service *v = &c->svc[i];
    char exe[700], port[32], log[300];
    snprintf(exe, sizeof exe, "%s/%s", c->build, v->name);
    snprintf(port, sizeof port, "HTTP_PORT=%d", v->port);
    snprintf(log, sizeof log, "var/log/%s.log", v->name);
    size_t n = 0;
    while (environ[n])
        n++;
    const char **envp = calloc(n + 2, sizeof *envp);
    if (!envp) return -1;
    size_t k = 0;
    for (size_t j = 0; j < n; j++)
        if (strncmp(environ[j], "HTTP_PORT=", 10)) envp[k++] = environ[j];
    envp[k++] = port;
    envp[k] = NULL;
    int errfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int fds[2];
    if (errfd < 0 || pipe2(fds, O_CLOEXEC)) {
        if (errfd >= 0) close(errfd);
        free(envp);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* a soak that dies (a time-out's SIGKILL) takes its services with it; the thread that
         * started one outlives it (soak.c) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        dup2(errfd, 2);
        char *const args[] = {exe, NULL};
        execve(exe, args, (char *const *)envp);
        _exit(127);
    }
    free(envp);
    close(fds[1]);
    close(errfd);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    char line[512];
    size_t len = 0;
    int64_t deadline = soak_ms() + 30000;
    while (len < sizeof line - 1) {
        int left = (int)(deadline - soak_ms());
        struct pollfd pf = {fds[0], POLLIN, 0};
        if (left <= 0 || poll(&pf, 1, left) <= 0) break;
        ssize_t got = read(fds[0], line + len, 1);
        if (got <= 0 || line[len] == '\n') break;
        len++;
    }
    line[len] = '\0';
    if (!strstr(line, " listening on http://")) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(fds[0]);
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    v->pid = pid;
    v->out_fd = fds[0];
    v->started_ms = soak_ms();
    v->starts++;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int soak_service_start_retry(soak_ctx *c, int i, int64_t give_up_ms)
{
    int64_t end = soak_ms() + give_up_ms;
    for (;;) {
        if (soak_service_start(c, i) == 0) return 0;
        if (soak_ms() > end) return -1;
        usleep(500000);
    }
}

/* The incarnation of v ends: the longest-life figures. Under c->lock. */
static void incarnation_ends(soak_service *v)
{
    int64_t life = soak_ms() - v->started_ms;
    if (v->inc_first_kb && life > v->life_ms) {
        v->life_ms = life;
        v->life_first_kb = v->inc_first_kb;
        v->life_last_kb = v->inc_last_kb;
    }
    v->inc_first_kb = v->inc_last_kb = 0;
}

void soak_rss_finish(soak_ctx *c)
{
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < SOAK_NSERVICES; i++)
        if (c->svc[i].pid) incarnation_ends(&c->svc[i]);
    pthread_mutex_unlock(&c->lock);
}

static void forget(soak_ctx *c, int i)
{
    pthread_mutex_lock(&c->lock);
    incarnation_ends(&c->svc[i]);
    c->svc[i].pid = 0;
    if (c->svc[i].out_fd >= 0) close(c->svc[i].out_fd);
    c->svc[i].out_fd = -1;
    pthread_mutex_unlock(&c->lock);
}

void soak_service_kill(soak_ctx *c, int i)
{
    pid_t pid = c->svc[i].pid;
    if (!pid) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    forget(c, i);
}

int soak_service_stop(soak_ctx *c, int i)
{
    pid_t pid = c->svc[i].pid;
    if (!pid) return -1;
    kill(pid, SIGTERM);
    int status = 0;
    int64_t end = soak_ms() + 20000;
    while (waitpid(pid, &status, WNOHANG) != pid) {
        if (soak_ms() > end) {
            soak_service_kill(c, i);
            return -1;
        }
        usleep(10000);
    }
    forget(c, i);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int soak_reap(soak_ctx *c)
{
    int n = 0;
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        pid_t pid = c->svc[i].pid;
        int status;
        if (pid && waitpid(pid, &status, WNOHANG) == pid) {
            soak_say("soak: %s exited by itself (%s %d); its log: %s/var/log/%s.log",
                     c->svc[i].name, WIFEXITED(status) ? "status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), c->work,
                     c->svc[i].name);
            forget(c, i);
            c->svc[i].unexpected_exits++;
            n++;
        }
    }
    return n;
}

long soak_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

void soak_sample_rss(soak_ctx *c, bool warm)
{
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        soak_service *v = &c->svc[i];
        if (!v->pid) continue;
        long kb = soak_rss_kb(v->pid);
        if (kb <= 0) continue;
        if (warm && !v->rss_first_kb) v->rss_first_kb = kb;
        v->rss_last_kb = kb;
        if (!v->inc_first_kb && soak_ms() - v->started_ms >= 5000) v->inc_first_kb = kb;
        if (v->inc_first_kb) v->inc_last_kb = kb;
        if (kb > v->rss_peak_kb) v->rss_peak_kb = kb;
        v->rss_samples++;
    }
}

int soak_sanitizer_reports(soak_ctx *c)
{
    static const char *const marks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                        "runtime error:", "WARNING: ThreadSanitizer"};
    int n = 0;
    for (int i = 0; i < SOAK_NSERVICES; i++) {
        char path[300], line[4096];
        snprintf(path, sizeof path, "var/log/%s.log", c->svc[i].name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        while (fgets(line, sizeof line, f))
            for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++)
                if (strstr(line, marks[k])) {
                    soak_say("soak: %s: %s", c->svc[i].name, line);
                    n++;
                }
        fclose(f);
    }
    return n;
}

/* ---- HTTP -------------------------------------------------------------------------------- */

static size_t on_body(char *data, size_t sz, size_t nm, void *ud)
{
    soak_http *r = ud;
    size_t len = strlen(r->body), add = sz * nm;
    char *p = realloc(r->body, len + add + 1);
    if (!p) return 0;
    memcpy(p + len, data, add);
    p[len + add] = '\0';
    r->body = p;
    return add;
}

static size_t on_header(char *data, size_t sz, size_t nm, void *ud)
{
    soak_http *r = ud;
    if (sz * nm > 12 && !strncasecmp(data, "Retry-After:", 12)) r->retry_after = true;
    return sz * nm;
}

soak_http soak_call(soak_ctx *c, int i, const char *method, const char *path, const char *body,
                    const char *bearer, long timeout_ms)
{
    soak_http r = {0};
    r.body = calloc(1, 1);
    char url[1024], auth[SVC_TOKEN_MAX + 40];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", c->svc[i].port, path);
    CURL *h = curl_easy_init();
    struct curl_slist *hl = NULL;
    if (bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        hl = curl_slist_append(hl, auth);
    }
    if (body) hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    if (body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    if (method) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    int64_t t0 = ew_mono_ns();
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
    r.ms = (double)(ew_mono_ns() - t0) / 1e6;
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return r;
}

void soak_http_free(soak_http *r)
{
    free(r->body);
    r->body = NULL;
}

bool soak_member(const soak_http *r, const char *key, char *out, size_t n)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *j;
    bool ok = false;
    if (r->body && ew_json_parse(&j, r->body, strlen(r->body), NULL, &a, NULL) == 0) {
        const ew_json *m = ew_json_get(j, key);
        if (m && m->kind == EW_JSON_STRING && strlen(m->str) < n) {
            snprintf(out, n, "%s", m->str);
            ok = true;
        }
    }
    ew_arena_release(&a);
    return ok;
}

int soak_admin_token(soak_ctx *c, char *out, size_t n)
{
    svc_token_keys k;
    ew_error e = {0};
    char sub[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1];
    ew_uuid7(sub);
    ew_uuid7(sid);
    const char *roles[] = {"admin"};
    int64_t now = ew_now_us() / 1000000;
    if (svc_token_keys_open(&k, "var/keys", &e) ||
        svc_token_sign(&k, sub, sid, roles, 1, now, now + 3600 * 4, out, n)) {
        fprintf(stderr, "soak: cannot make an admin token: %s\n", e.msg);
        return -1;
    }
    sodium_memzero(&k, sizeof k);
    return 0;
}

/* ---- the databases ----------------------------------------------------------------------- */

int soak_query(const char *file, const char *sql, const char *const *params, size_t n, ew_row_fn fn,
               void *ud)
{
    char url[600];
    snprintf(url, sizeof url, "sqlite:var/%s", file);
    ew_store *db;
    ew_error err = {0};
    if (ew_store_open(&db, &(ew_store_options){.url = url}, &err)) {
        soak_say("soak: %s: %s", file, err.msg);
        return -1;
    }
    ew_txn *t;
    int rc = ew_store_begin(db, &t, &err);
    if (!rc) {
        rc = ew_txn_query(t, sql, params, n, fn, ud, &err);
        ew_txn_rollback(t);
    }
    if (rc) soak_say("soak: %s: %s: %s", file, sql, err.msg);
    ew_store_close(db);
    return rc ? -1 : 0;
}

static int first_value(void *ud, const ew_row *row)
{
    *(long *)ud = row->ncols && row->values[0] ? atol(row->values[0]) : -1;
    return 1;
}

long soak_count(const char *file, const char *sql, const char *param)
{
    long v = -1;
    const char *p[] = {param};
    if (soak_query(file, sql, param ? p : NULL, param ? 1 : 0, first_value, &v)) return -1;
    return v;
}
