/* Who may call what (docs/security.md): the five services as processes on one SQLite bus, every
 * route of every service called with each kind of caller -- no token, a malformed one, an
 * expired one, a revoked one, another user's, the owner's, an admin's -- against the documented
 * status; and a revocation reaching every service within a second. The first admin is made the
 * operator's way, with `ewctl user grant-admin`. */
#include "support/ew_test.h"
#define SVC_UNDER_TEST "auth-service"
#include "services/svc_env.h"
#include "eventwire/id.h"

#define NSVC 5
static const char *const names[NSVC] = {"auth-service", "user-service", "notification-service",
                                        "analytics-service", "export-service"};
enum { AUTH, USER, NOTIF, ANALYTICS, EXPORT };

enum { NONE, MALFORMED, EXPIRED, REVOKED, OTHER, OWNER, ADMIN, NKINDS };
static const char *const kind_names[NKINDS] = {
    "no token", "malformed", "expired", "revoked", "another user's", "the owner's", "an admin's"};

typedef struct world {
    env *e;           /* auth-service */
    svc_proc p[NSVC]; /* [AUTH] is e->p */
    char owner[EW_UUID_LEN + 1], other[EW_UUID_LEN + 1], admin[EW_UUID_LEN + 1];
    char export_id[EW_UUID_LEN + 1], key[64];
    char revoked[SVC_TOKEN_MAX + 1], expired[SVC_TOKEN_MAX + 1], malformed[SVC_TOKEN_MAX + 1];
    int serial;
} world;

static world *running;

static int stop_others(void **state)
{
    (void)state;
    if (running) {
        for (int i = 1; i < NSVC; i++)
            if (running->p[i].pid) {
                kill(running->p[i].pid, SIGKILL);
                waitpid(running->p[i].pid, NULL, 0);
            }
        free(running);
        running = NULL;
    }
    return reap(state);
}

static http_result call(world *w, int svc, const char *method, const char *path, const char *body,
                        const char *bearer)
{
    return api_on(&w->p[svc], method, path, body, bearer);
}

static void register_user(world *w, const char *name, char *id)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"username\":\"%s\",\"email\":\"%s@example.com\",\"password\":\"password %s\"}",
             name, name, name);
    http_result r = call(w, AUTH, "POST", "/auth/register", body, NULL);
    if (r.status != 201) fail_msg("register %s: %ld %s", name, r.status, r.body);
    snprintf(id, EW_UUID_LEN + 1, "%.36s", http_member(&r, "user_id"));
    http_result_free(&r);
}

/* A fresh login of name: its token into out. */
static void login(world *w, const char *name, char out[SVC_TOKEN_MAX + 1])
{
    char body[256];
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"password\":\"password %s\"}", name, name);
    http_result r = call(w, AUTH, "POST", "/auth/login", body, NULL);
    if (r.status != 200) fail_msg("login %s: %ld %s", name, r.status, r.body);
    snprintf(out, SVC_TOKEN_MAX + 1, "%.2048s", http_member(&r, "token"));
    http_result_free(&r);
}

/* Polls GET path of svc with bearer until it answers want (10 s at most). */
static void await_status(world *w, int svc, const char *path, const char *bearer, long want)
{
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        http_result r = call(w, svc, "GET", path, NULL, bearer);
        long got = r.status;
        if (got == want) {
            http_result_free(&r);
            return;
        }
        if (ew_mono_ns() > deadline) {
            svc_proc_dump(&w->p[svc]);
            fail_msg("%s GET %s: want %ld, still %ld %s", names[svc], path, want, got, r.body);
        }
        http_result_free(&r);
        usleep(20000);
    }
}

/* The five services, three users (the admin made by ewctl), an export of the owner's, and the
 * bad tokens. */
static world *build(void)
{
    world *w = calloc(1, sizeof *w);
    running = w;
    static const char *const limits[] = {"AUTH_RESETS_PER_EMAIL=1000",
                                         "AUTH_RESETS_PER_ADDRESS=1000", NULL};
    w->e = up(limits);
    w->p[AUTH] = w->e->p;
    static const char *const fast[] = {"OUTBOX_POLL_MS=50", "EVENT_HANDLER_BACKOFF_MS=20",
                                       "USER_DATA_SERVICES=auth-service,user-service,"
                                       "notification-service,analytics-service,export-service",
                                       NULL};
    for (int i = 1; i < NSVC; i++)
        if (svc_proc_start(&w->p[i], names[i], w->e->dir, fast))
            fail_msg("%s did not start", names[i]);
    register_user(w, "owner", w->owner);
    register_user(w, "other", w->other);
    register_user(w, "root", w->admin);

    /* the operator makes root an admin on the deployment; root's next login carries it */
    char setting[400], tok[SVC_TOKEN_MAX + 1], path[300];
    snprintf(setting, sizeof setting, "sqlite:%s/events.db", w->e->dir);
    setenv("EVENT_BUS_TYPE", "sqlite", 1);
    setenv("EVENT_STORE_URL", setting, 1);
    snprintf(setting, sizeof setting, "sqlite:%s/{SERVICE_NAME}.db", w->e->dir);
    setenv("SERVICE_DB_URL", setting, 1);
    login(w, "root", tok);
    char *out, *err;
    if (ew_test_ewctl("user grant-admin ROOT", NULL, &out, &err))
        fail_msg("ewctl user grant-admin: %s", err);
    assert_non_null(strstr(out, "\"admin\""));
    free(out);
    free(err);
    snprintf(path, sizeof path, "/auth/users/%s", w->admin);
    await_status(w, AUTH, path, tok, 401); /* the role change revoked root's tokens */
    login(w, "root", tok);
    await_status(w, ANALYTICS, "/stats", tok, 200);

    /* what the owner has everywhere before the table runs */
    char own[SVC_TOKEN_MAX + 1];
    login(w, "owner", own);
    snprintf(path, sizeof path, "/users/%s/profile", w->owner);
    await_status(w, USER, path, own, 200);
    snprintf(path, sizeof path, "/notifications/%s", w->owner);
    await_status(w, NOTIF, path, own, 200);
    snprintf(path, sizeof path, "/stats/users/%s", w->owner);
    await_status(w, ANALYTICS, path, own, 200);
    char body[128];
    snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", w->owner);
    http_result r = call(w, EXPORT, "POST", "/exports", body, own);
    if (r.status != 202) fail_msg("POST /exports: %ld %s", r.status, r.body);
    snprintf(w->export_id, sizeof w->export_id, "%.36s", http_member(&r, "export_id"));
    http_result_free(&r);
    int64_t deadline = ew_mono_ns() + 20000000000LL;
    for (;;) {
        snprintf(path, sizeof path, "/exports/%s", w->export_id);
        r = call(w, EXPORT, "GET", path, NULL, own);
        const char *url = r.status == 200 ? http_member(&r, "download_url") : NULL;
        const char *k = url ? strstr(url, "?key=") : NULL;
        if (k) snprintf(w->key, sizeof w->key, "%.63s", k + 5);
        http_result_free(&r);
        if (k) break;
        if (ew_mono_ns() > deadline) fail_msg("the export did not complete: %s", path);
        usleep(50000);
    }

    /* bad tokens of the owner's: tampered, expired, revoked (logged out) */
    snprintf(w->malformed, sizeof w->malformed, "%s", own);
    char *last = w->malformed + strlen(w->malformed) - 2;
    *last = *last == 'A' ? 'B' : 'A';
    int64_t now = ew_now_us() / 1000000;
    mint_in(w->e->dir, w->owner, false, now - 7200, now - 3600, w->expired);
    login(w, "owner", w->revoked);
    r = call(w, AUTH, "POST", "/auth/logout", NULL, w->revoked);
    assert_int_equal(r.status, 204);
    http_result_free(&r);
    snprintf(path, sizeof path, "/users/%s/profile", w->owner);
    await_status(w, USER, path, w->revoked, 401);
    return w;
}

/* The bearer for a kind of caller; fresh logins for the users, since some routes end sessions or
 * revoke tokens. */
static const char *bearer(world *w, int kind, const char *owner_name, char buf[SVC_TOKEN_MAX + 1])
{
    switch (kind) {
    case NONE:
        return NULL;
    case MALFORMED:
        return w->malformed;
    case EXPIRED:
        return w->expired;
    case REVOKED:
        return w->revoked;
    case OTHER:
        login(w, "other", buf);
        return buf;
    case OWNER:
        login(w, owner_name, buf);
        return buf;
    default:
        login(w, "root", buf);
        return buf;
    }
}

typedef struct route {
    int svc;
    const char *method, *path, *body; /* {U}: the owner's id, {X}: the export, {K}: its key,
                                       * {N}: a number of the call's own */
    long want[NKINDS];
    int victim; /* 1: the owner is a user made for the call (the route deletes it) */
} route;

#define PRIVATE(ok)                                                                                \
    {                                                                                              \
        401, 401, 401, 401, 403, ok, ok                                                            \
    }
#define ADMIN_ONLY(ok)                                                                             \
    {                                                                                              \
        401, 401, 401, 401, 403, 403, ok                                                           \
    }
#define HIDDEN(ok)                                                                                 \
    {                                                                                              \
        401, 401, 401, 401, 404, ok, ok                                                            \
    }
#define PUBLIC(ok)                                                                                 \
    {                                                                                              \
        ok, ok, ok, ok, ok, ok, ok                                                                 \
    }

/* The documented table (docs/security.md). */
static const route routes[] = {
    {AUTH, "POST", "/auth/register",
     "{\"username\":\"new{N}\",\"email\":\"new{N}@example.com\","
     "\"password\":\"password new{N}\"}",
     PUBLIC(201), 0},
    {AUTH, "POST", "/auth/login", "{\"username\":\"other\",\"password\":\"password other\"}",
     PUBLIC(200), 0},
    {AUTH, "POST", "/auth/password-reset", "{\"email\":\"other@example.com\"}", PUBLIC(202), 0},
    {AUTH, "POST", "/auth/password-reset/confirm", "{\"token\":\"x\",\"password\":\"12345678\"}",
     PUBLIC(400), 0},
    {AUTH, "GET", "/auth/users/{U}", NULL, PRIVATE(200), 0},
    {AUTH, "PUT", "/auth/users/{U}/roles", "{\"roles\":[\"user\"]}", ADMIN_ONLY(200), 0},
    {AUTH, "POST", "/auth/logout", NULL, {401, 401, 401, 401, 204, 204, 204}, 0},
    {AUTH, "DELETE", "/auth/users/{U}", NULL, PRIVATE(202), 1},
    {USER, "GET", "/users/{U}/profile", NULL, PRIVATE(200), 0},
    {USER, "PUT", "/users/{U}/profile", "{\"bio\":\"b\"}", PRIVATE(200), 0},
    {USER, "GET", "/users/{U}/preferences", NULL, PRIVATE(200), 0},
    {USER, "PUT", "/users/{U}/preferences", "{\"preferences\":{\"language\":\"en\"}}", PRIVATE(200),
     0},
    {USER, "POST", "/users/{U}/verify", NULL, PRIVATE(202), 0},
    {USER, "PUT", "/users/{U}/consent", "{\"purpose\":\"analytics\",\"granted\":true}",
     PRIVATE(200), 0},
    {USER, "POST", "/users/verify/confirm", "{\"token\":\"x\"}", PUBLIC(400), 0},
    {NOTIF, "GET", "/notifications/{U}", NULL, PRIVATE(200), 0},
    {ANALYTICS, "GET", "/stats", NULL, ADMIN_ONLY(200), 0},
    {ANALYTICS, "GET", "/stats/users/{U}", NULL, PRIVATE(200), 0},
    {EXPORT, "POST", "/exports", "{\"user_id\":\"{U}\"}", PRIVATE(202), 0},
    {EXPORT, "GET", "/exports?user_id={U}", NULL, PRIVATE(200), 0},
    {EXPORT, "GET", "/exports", NULL, {401, 401, 401, 401, 200, 200, 200}, 0},
    {EXPORT, "GET", "/exports/{X}", NULL, HIDDEN(200), 0},
    {EXPORT, "GET", "/exports/{X}/download?key={K}", NULL, HIDDEN(200), 0},
    {EXPORT, "GET", "/exports/{X}/download", NULL, {401, 401, 401, 401, 404, 404, 404}, 0},
    {AUTH, "GET", "/healthz", NULL, PUBLIC(200), 0},
    {USER, "GET", "/healthz", NULL, PUBLIC(200), 0},
    {NOTIF, "GET", "/healthz", NULL, PUBLIC(200), 0},
    {ANALYTICS, "GET", "/healthz", NULL, PUBLIC(200), 0},
    {EXPORT, "GET", "/healthz", NULL, PUBLIC(200), 0},
    {AUTH, "GET", "/metrics", NULL, PUBLIC(200), 0},
    {USER, "GET", "/metrics", NULL, PUBLIC(200), 0},
    {NOTIF, "GET", "/metrics", NULL, PUBLIC(200), 0},
    {ANALYTICS, "GET", "/metrics", NULL, PUBLIC(200), 0},
    {EXPORT, "GET", "/metrics", NULL, PUBLIC(200), 0},
};
#define NROUTES (sizeof routes / sizeof routes[0])

/* Does the table's path (parameters {U}, {X}, a query) name the service's route template
 * ("/users/{id}/profile")? */
static bool same_route(const char *path, const char *tmpl)
{
    for (;;) {
        size_t pn = strcspn(path, "/?"), tn = strcspn(tmpl, "/");
        bool pp = pn > 2 && path[0] == '{', tp = tn > 2 && tmpl[0] == '{';
        if (pp != tp || (!pp && (pn != tn || strncmp(path, tmpl, pn)))) return false;
        path += pn;
        tmpl += tn;
        if (*path != '/' || *tmpl != '/') return (*path == '\0' || *path == '?') && !*tmpl;
        path++;
        tmpl++;
    }
}

/* Stops the five services and frees w (the end of a case that passed). */
static void demolish(world *w)
{
    down(w->e);
    w->e = NULL;
    for (int i = 1; i < NSVC; i++)
        svc_proc_stop(&w->p[i]);
    free(w);
    running = NULL;
}

/* A GET route of each service that the owner may call: what a token of theirs is tried on. */
static void owner_paths(const world *w, char path[NSVC][300])
{
    snprintf(path[AUTH], 300, "/auth/users/%s", w->owner);
    snprintf(path[USER], 300, "/users/%s/profile", w->owner);
    snprintf(path[NOTIF], 300, "/notifications/%s", w->owner);
    snprintf(path[ANALYTICS], 300, "/stats/users/%s", w->owner);
    snprintf(path[EXPORT], 300, "/exports/%s", w->export_id);
}

/* Every route each service answers (its --routes) is in the table, with the kind of access it
 * has (a route that takes no token is answered without one, and the other way round), and every
 * row of the table is a route of its service: a route added without a row fails here. */
static void test_every_route_of_every_service_is_in_the_table(void **state)
{
    (void)state;
    char dir[256], cmd[1600], self[512];
    svc_tmpdir(dir);
    const char *bin = getenv("EW_BUILD_DIR");
    if (!bin) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        self[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) *slash = '\0';
        bin = self;
    }
    bool covered[NROUTES] = {false};
    int missing = 0, total = 0;
    for (int svc = 0; svc < NSVC; svc++) {
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && EVENT_BUS_TYPE=sqlite EVENT_STORE_URL=sqlite:events.db "
                 "SERVICE_DB_URL=sqlite:'{SERVICE_NAME}'.db '%s/%s' --routes 2>/dev/null",
                 dir, bin, names[svc]);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        char line[512];
        int n = 0;
        while (fgets(line, sizeof line, f)) {
            char method[16], tmpl[256], access[16];
            if (sscanf(line, "%15s %255s %15s", method, tmpl, access) != 3)
                fail_msg("%s --routes: '%s'", names[svc], line);
            n++;
            bool found = false;
            for (size_t i = 0; i < NROUTES; i++) {
                const route *rt = &routes[i];
                if (rt->svc != svc || strcmp(rt->method, method) || !same_route(rt->path, tmpl))
                    continue;
                found = covered[i] = true;
                bool open = rt->want[NONE] != 401;
                if (open != !strcmp(access, "public"))
                    fail_msg("%s %s %s is %s, but the table has it answer %ld without a token",
                             names[svc], method, tmpl, access, rt->want[NONE]);
            }
            if (!found) {
                fprintf(stderr, "%s %s %s (%s) is not in the table\n", names[svc], method, tmpl,
                        access);
                missing++;
            }
        }
        assert_int_equal(pclose(f), 0);
        if (n < 3) fail_msg("%s --routes printed %d routes", names[svc], n);
        total += n;
    }
    if (missing) fail_msg("%d route(s) of the services are not in the table", missing);
    for (size_t i = 0; i < NROUTES; i++)
        if (!covered[i])
            fail_msg("the table's %s %s %s is no route of that service", names[routes[i].svc],
                     routes[i].method, routes[i].path);
    fprintf(stderr, "%d routes of %d services, all in the table of %zu rows\n", total, NSVC,
            NROUTES);
    assert_int_equal(rm_dir(dir), 0);
}

/* t with {U}, {X}, {K} and {N} replaced, into out. */
static void expand(world *w, const char *t, const char *user, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = t; *p && o + 1 < cap;) {
        const char *v = NULL;
        char num[16];
        if (!strncmp(p, "{U}", 3)) v = user;
        if (!strncmp(p, "{X}", 3)) v = w->export_id;
        if (!strncmp(p, "{K}", 3)) v = w->key;
        if (!strncmp(p, "{N}", 3)) {
            snprintf(num, sizeof num, "%d", w->serial);
            v = num;
        }
        if (v) {
            o += (size_t)snprintf(out + o, cap - o, "%s", v);
            p += 3;
        } else {
            out[o++] = *p++;
        }
    }
    out[o < cap ? o : cap - 1] = '\0';
}

static void test_every_route_with_every_kind_of_caller(void **state)
{
    (void)state;
    world *w = build();
    int failures = 0;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const route *rt = &routes[i];
        for (int k = 0; k < NKINDS; k++) {
            w->serial++;
            char user[EW_UUID_LEN + 1], name[32] = "owner";
            snprintf(user, sizeof user, "%s", w->owner);
            if (rt->victim) { /* a user of its own for each call: the route deletes it */
                snprintf(name, sizeof name, "victim%d", w->serial);
                register_user(w, name, user);
            }
            char path[600], body[600], buf[SVC_TOKEN_MAX + 1];
            expand(w, rt->path, user, path, sizeof path);
            if (rt->body) expand(w, rt->body, user, body, sizeof body);
            const char *b = bearer(w, k, name, buf);
            http_result r = call(w, rt->svc, rt->method, path, rt->body ? body : NULL, b);
            if (r.status != rt->want[k]) {
                fprintf(stderr, "%s %s %s with %s: want %ld, got %ld %s\n", names[rt->svc],
                        rt->method, path, kind_names[k], rt->want[k], r.status,
                        r.body ? r.body : "");
                failures++;
            }
            if (r.status == 401) { /* RFC 6750: the challenge, and why when a token was given */
                char h[400];
                const char *v = http_header_value(&r, "WWW-Authenticate", h, sizeof h);
                if (!v || strncmp(v, "Bearer", 6) ||
                    (k != NONE && !strstr(v, "error=\"invalid_token\""))) {
                    fprintf(stderr, "%s %s with %s: WWW-Authenticate is %s\n", rt->method, path,
                            kind_names[k], v ? v : "missing");
                    failures++;
                }
            }
            http_result_free(&r);
        }
    }
    if (failures) fail_msg("%d call(s) answered otherwise than documented", failures);
    /* no token reached a log: a JWT starts with the base64 of {"alg" */
    for (int i = 0; i < NSVC; i++) {
        char log[512];
        snprintf(log, sizeof log, "%s/%s.stderr", w->e->dir, names[i]);
        FILE *f = fopen(log, "r");
        assert_non_null(f);
        char *text = calloc(1, 1 << 20);
        size_t n = fread(text, 1, (1 << 20) - 1, f);
        fclose(f);
        text[n] = '\0';
        if (strstr(text, "eyJhbGci") || strstr(text, w->key))
            fail_msg("%s logged a token or a download key", names[i]);
        free(text);
    }
    /* the signing key: 0600 in a 0700 folder; the public key readable */
    struct stat st;
    char kp[400];
    snprintf(kp, sizeof kp, "%s/keys", w->e->dir);
    assert_int_equal(stat(kp, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    snprintf(kp, sizeof kp, "%s/keys/auth-token.key", w->e->dir);
    assert_int_equal(stat(kp, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(kp, sizeof kp, "%s/keys/auth-token.pub", w->e->dir);
    assert_int_equal(stat(kp, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    /* each service recorded the other user's refused calls on the owner's data, by ids and the
     * route; the export's hidden 404s too; and every chain holds */
    for (int i = 0; i < NSVC; i++) {
        char args[200], want[300], *out;
        snprintf(args, sizeof args, "audit list --service %s --subject %s", names[i], w->owner);
        if (ew_test_ewctl(args, NULL, &out, NULL)) fail_msg("ewctl %s", args);
        snprintf(want, sizeof want,
                 "\"actor\":\"user:%s\",\"action\":\"http.refused\",\"subject\":\"%s\","
                 "\"details\":{\"route\":\"",
                 w->other, w->owner);
        if (!strstr(out, want)) fail_msg("%s: no %s in\n%s", names[i], want, out);
        if (i == EXPORT && (!strstr(out, "\"route\":\"GET /exports/{export_id}/download\","
                                         "\"reason\":\"another user's export\"}") ||
                            !strstr(out, "\"route\":\"GET /exports/{export_id}\",")))
            fail_msg("export-service: the hidden exports are not recorded:\n%s", out);
        assert_null(strstr(out, "example.com"));
        free(out);
    }
    char *verified;
    if (ew_test_ewctl("audit verify", NULL, &verified, NULL)) fail_msg("ewctl audit verify");
    assert_null(strstr(verified, "\"ok\":false"));
    free(verified);
    demolish(w);
}

/* Logout, role change and password reset: the tokens they end are refused by every service
 * within a second. */
static void test_revocation_reaches_every_service_within_a_second(void **state)
{
    (void)state;
    world *w = build();
    char path[NSVC][300];
    owner_paths(w, path);
    for (int how = 0; how < 2; how++) {
        char tok[SVC_TOKEN_MAX + 1];
        login(w, "owner", tok);
        for (int i = 0; i < NSVC; i++) { /* good everywhere, and cached */
            http_result r = call(w, i, "GET", path[i], NULL, tok);
            if (r.status != 200) fail_msg("%s %s: %ld %s", names[i], path[i], r.status, r.body);
            http_result_free(&r);
        }
        http_result r;
        if (how == 0) {
            r = call(w, AUTH, "POST", "/auth/logout", NULL, tok);
        } else {
            char p[300];
            snprintf(p, sizeof p, "/auth/users/%s/roles", w->owner);
            char admin[SVC_TOKEN_MAX + 1];
            login(w, "root", admin);
            r = call(w, AUTH, "PUT", p, "{\"roles\":[\"user\",\"editor\"]}", admin);
        }
        assert_true(r.status == 204 || r.status == 200);
        http_result_free(&r);
        int64_t t0 = ew_mono_ns();
        for (int i = 0; i < NSVC; i++) {
            for (;;) {
                r = call(w, i, "GET", path[i], NULL, tok);
                long st = r.status;
                http_result_free(&r);
                if (st == 401) break;
                if (ew_mono_ns() - t0 > 1000000000LL)
                    fail_msg("%s still accepts a revoked token (%s) after 1 s", names[i],
                             how ? "role change" : "logout");
                usleep(10000);
            }
        }
        fprintf(stderr, "revocation by %s reached every service in %lld ms\n",
                how ? "role change" : "logout", (long long)((ew_mono_ns() - t0) / 1000000));
    }
    demolish(w);
}

/* Many revocations of a user within one second, then a login: its token is good in every service
 * at once, and stays good once the revocations have reached them. Tokens carried whole seconds,
 * so each revocation in the same second put the next login's token a second ahead, and past
 * SVC_TOKEN_LEEWAY_S the other services refused it as issued in the future. */
static void test_a_login_after_many_revocations_in_a_second_is_valid_everywhere(void **state)
{
    (void)state;
    world *w = build();
    enum { REVOCATIONS = 8 };
    char path[NSVC][300], roles[300], admin[SVC_TOKEN_MAX + 1], old[SVC_TOKEN_MAX + 1];
    char tok[SVC_TOKEN_MAX + 1];
    owner_paths(w, path);
    snprintf(roles, sizeof roles, "/auth/users/%s/roles", w->owner);
    login(w, "root", admin);
    bool within = false;
    for (int attempt = 0; attempt < 5 && !within; attempt++) {
        login(w, "owner", old);
        int64_t t0 = ew_mono_ns();
        for (int i = 0; i < REVOCATIONS; i++) {
            http_result r =
                call(w, AUTH, "PUT", roles,
                     i % 2 ? "{\"roles\":[\"user\"]}" : "{\"roles\":[\"user\",\"editor\"]}", admin);
            if (r.status != 200) fail_msg("PUT %s: %ld %s", roles, r.status, r.body);
            http_result_free(&r);
        }
        within = ew_mono_ns() - t0 < 1000000000LL;
    }
    if (!within) fail_msg("%d role changes never fit in one second", REVOCATIONS);
    login(w, "owner", tok);
    for (int i = 0; i < NSVC; i++) { /* at once: no service waits for anything */
        http_result r = call(w, i, "GET", path[i], NULL, tok);
        if (r.status != 200)
            fail_msg("%s refused a token issued after %d revocations in a second: %ld %s", names[i],
                     REVOCATIONS, r.status, r.body);
        http_result_free(&r);
    }
    for (int i = 0; i < NSVC; i++) { /* the revocations arrive: the old token ends, not the new */
        await_status(w, i, path[i], old, 401);
        http_result r = call(w, i, "GET", path[i], NULL, tok);
        if (r.status != 200)
            fail_msg("%s refused the new token once the revocations came: %ld %s", names[i],
                     r.status, r.body);
        http_result_free(&r);
    }
    demolish(w);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_route_of_every_service_is_in_the_table),
    cmocka_unit_test_teardown(test_every_route_with_every_kind_of_caller, stop_others),
    cmocka_unit_test_teardown(test_revocation_reaches_every_service_within_a_second, stop_others),
    cmocka_unit_test_teardown(test_a_login_after_many_revocations_in_a_second_is_valid_everywhere,
                              stop_others),
};

EW_TEST_MAIN(tests)
