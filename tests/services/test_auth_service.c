/* Tests of auth-service as a process: the real executable (EW_BUILD_DIR), its own database and
 * the SQLite bus in a temporary folder, driven over HTTP with libcurl. The events it publishes are
 * read from the event store (the SQLite bus's log); events it handles are published by the test
 * through a bus of its own. One case keeps the service's database in PostgreSQL.
 * ew-fixture: postgres */
#include <pthread.h>
#include <sodium.h>
#include "support/ew_test.h"
#include "http/http_client.h"
#define SVC_UNDER_TEST "auth-service"
#include "services/svc_env.h"
#include "eventwire/id.h"

/* Registers a user and returns its id (static buffer per call site is the caller's). */
static void register_user(env *e, const char *username, const char *email, const char *pw,
                          char *user_id)
{
    char body[512];
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"email\":\"%s\",\"password\":\"%s\"}",
             username, email, pw);
    http_result r = api(e, "POST", "/auth/register", body, NULL);
    if (r.status != 201) fail_msg("register %s: %ld %s", username, r.status, r.body);
    snprintf(user_id, EW_UUID_LEN + 1, "%.36s", http_member(&r, "user_id"));
    http_result_free(&r);
}

static void login(env *e, const char *body, char *token)
{
    http_result r = api(e, "POST", "/auth/login", body, NULL);
    if (r.status != 200) fail_msg("login %s: %ld %s", body, r.status, r.body);
    snprintf(token, SVC_TOKEN_MAX + 1, "%.2048s", http_member(&r, "token"));
    http_result_free(&r);
}

/* ---- cases ----------------------------------------------------------------------------------- */

static void test_register_login_logout(void **state)
{
    env *e = up(NULL);
    http_result r = api(e, "POST", "/auth/register",
                        "{\"username\":\"Ada\",\"email\":\"Ada@Example.com\","
                        "\"password\":\"correct horse\"}",
                        NULL);
    assert_int_equal(r.status, 201);
    char user_id[EW_UUID_LEN + 1], loc[128], want_loc[128];
    snprintf(user_id, sizeof user_id, "%.36s", http_member(&r, "user_id"));
    assert_true(ew_uuid_valid(user_id));
    snprintf(want_loc, sizeof want_loc, "/auth/users/%s", user_id);
    assert_string_equal(http_header_value(&r, "Location", loc, sizeof loc), want_loc);
    http_result_free(&r);

    /* user.registered, v2 with roles ["user"], went out through the outbox */
    ew_event *ev = wait_event(e, "user.registered", user_id, 1);
    assert_int_equal(ew_event_version(ev), 2);
    assert_string_equal(ew_event_source(ev), "auth-service");
    const ew_user_registered *u = ew_user_registered_data(ev);
    assert_string_equal(u->user_id, user_id);
    assert_string_equal(u->username, "Ada");
    assert_string_equal(u->email, "ada@example.com");
    static const char *const roles[] = {"user"};
    strlist_is(u->roles, roles, 1);
    ew_event_unref(ev);

    /* login by username (any case) and by email */
    char tok1[SVC_TOKEN_MAX + 1], tok2[SVC_TOKEN_MAX + 1];
    login(e, "{\"username\":\"ada\",\"password\":\"correct horse\"}", tok1);
    login(e, "{\"email\":\"ADA@example.com\",\"password\":\"correct horse\"}", tok2);
    assert_int_equal(strncmp(tok1, "eyJ", 3), 0); /* a JWT: header.claims.signature */
    assert_non_null(strchr(strchr(tok1, '.') + 1, '.'));
    assert_string_not_equal(tok1, tok2);
    ev = wait_event(e, "user.logged_in", user_id, 2);
    const ew_user_logged_in *li = ew_user_logged_in_data(ev);
    assert_string_equal(li->ip_address, "127.0.0.1");
    assert_string_equal(li->user_agent, "auth-service-test/1.0");
    char session[EW_UUID_LEN + 1];
    snprintf(session, sizeof session, "%s", li->session_id);
    ew_event_unref(ev);

    /* the token is stored hashed, never as it is */
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.auth_sessions", NULL), 2);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.auth_sessions WHERE "
                              "token_hash = $1 OR user_agent = $1",
                              tok1),
                     0);

    /* logout with the second token ends that session */
    r = api(e, "POST", "/auth/logout", NULL, tok2);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.len, 0);
    http_result_free(&r);
    ev = wait_event(e, "user.logged_out", user_id, 1);
    assert_string_equal(ew_user_logged_out_data(ev)->session_id, session);
    ew_event_unref(ev);
    r = api(e, "POST", "/auth/logout", NULL, tok2);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(http_member(&r, "error"), "revoked"));
    http_result_free(&r);
    r = api(e, "POST", "/auth/logout", NULL, NO_TOKEN);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(http_member(&r, "error"), "Bearer"));
    http_result_free(&r);

    /* the status */
    char path[128];
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), user_id);
    assert_string_equal(http_member(&r, "status"), "active");
    assert_string_equal(http_member(&r, "profile_created"), "false");
    assert_string_equal(http_member(&r, "roles"), "[\"user\"]");
    assert_non_null(http_member(&r, "created_at"));
    assert_null(http_member(&r, "password_hash"));
    http_result_free(&r);

    /* the health endpoint */
    r = api(e, "GET", "/healthz", NULL, NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    down(e);
}

/* A User-Agent is any bytes a client likes: a login keeps what an event and JSON can carry of
 * it (found by fuzz_service: one that was not UTF-8, or cut inside a character at 512 bytes, made
 * user.logged_in refuse it and the login answer 500). */
static void test_login_keeps_what_can_be_carried_of_any_user_agent(void **state)
{
    env *e = up(NULL);
    http_result r = api(e, "POST", "/auth/register",
                        "{\"username\":\"agentuser\",\"email\":\"ua@example.com\","
                        "\"password\":\"correct horse\"}",
                        NULL);
    assert_int_equal(r.status, 201);
    char user_id[EW_UUID_LEN + 1];
    snprintf(user_id, sizeof user_id, "%.36s", http_member(&r, "user_id"));
    http_result_free(&r);
    char long_ua[12 + 600 + 1] = "User-Agent: ";
    for (int i = 0; i < 300; i++)
        memcpy(long_ua + 12 + 2 * i, "\xC3\xA9", 2); /* é, 2 bytes: 512 falls inside one */
    long_ua[12 + 600] = '\0';
    const char *agents[] = {"User-Agent: fuz\xFF\xFEz/1.0 \xC0\x80", long_ua};
    char want_long[513] = "";
    for (int i = 0; i < 256; i++)
        strcat(want_long, "\xC3\xA9");
    const char *want[] = {"fuz\xEF\xBF\xBD\xEF\xBF\xBDz/1.0 \xEF\xBF\xBD\xEF\xBF\xBD", want_long};
    char url[2048];
    snprintf(url, sizeof url, "%s/auth/login", e->p.base);
    for (size_t i = 0; i < 2; i++) {
        const char *hdrs[] = {agents[i], "Content-Type: application/json", NULL};
        http_req rq = {.method = "POST",
                       .body = "{\"username\":\"agentuser\",\"password\":\"correct horse\"}",
                       .headers = hdrs};
        r = http_do(url, &rq);
        if (r.status != 200) fail_msg("login %zu: %ld %s", i, r.status, r.body);
        http_result_free(&r);
        ew_event *ev = wait_event(e, "user.logged_in", user_id, (int)i + 1);
        const char *got = ew_user_logged_in_data(ev)->user_agent;
        /* each login's event is waited for before the next login: the newest is i's */
        assert_non_null(got);
        assert_true(ew_utf8_valid(got, strlen(got)));
        assert_string_equal(got, want[i]);
        ew_event_unref(ev);
    }
    down(e);
}

static void test_bad_input_is_refused_and_nothing_is_half_written(void **state)
{
    static const char *const extra[] = {"HTTP_MAX_BODY_BYTES=2048", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1];
    register_user(e, "grace", "grace@example.com", "hopper1906", user_id);
    struct {
        const char *method, *path, *body;
        long status;
        const char *field, *needle;
    } bad[] = {
        /* malformed JSON names the position */
        {"POST", "/auth/register", "{\"username\": \"x\",", 400, "(null)",
         "malformed JSON: line 1, column 18"},
        {"POST", "/auth/register", "[]", 400, NULL, "must be a JSON object"},
        {"POST", "/auth/register", "", 400, NULL, "body is empty"},
        /* missing and wrong fields */
        {"POST", "/auth/register", "{\"email\":\"a@b.io\",\"password\":\"12345678\"}", 400,
         "username", "username is required"},
        {"POST", "/auth/register", "{\"username\":\"abc\",\"password\":\"12345678\"}", 400, "email",
         "email is required"},
        {"POST", "/auth/register", "{\"username\":\"abc\",\"email\":\"a@b.io\"}", 400, "password",
         "password is required"},
        {"POST", "/auth/register",
         "{\"username\":7,\"email\":\"a@b.io\",\"password\":\"12345678\"}", 400, "username",
         "must be a string"},
        {"POST", "/auth/register",
         "{\"username\":\"a b\",\"email\":\"a@b.io\",\"password\":\"12345678\"}", 400, "username",
         "username must be"},
        {"POST", "/auth/register",
         "{\"username\":\"abc\",\"email\":\"a@b.io\",\"password\":\"12345678\",\"admin\":true}",
         400, "admin", "unknown field admin"},
        /* bad email: what the catalog refuses in an event (ew_field_valid) */
        {"POST", "/auth/register",
         "{\"username\":\"abc\",\"email\":\"not-an-email\",\"password\":\"12345678\"}", 400,
         "email", "not a valid email address"},
        {"POST", "/auth/register",
         "{\"username\":\"abc\",\"email\":\"a@b\",\"password\":\"12345678\"}", 400, "email",
         "not a valid email address"},
        {"POST", "/auth/register",
         "{\"username\":\"abc\",\"email\":\"Ada <a@b.io>\",\"password\":\"12345678\"}", 400,
         "email", "not a valid email address"},
        /* weak password */
        {"POST", "/auth/register",
         "{\"username\":\"abc\",\"email\":\"a@b.io\",\"password\":\"short\"}", 400, "password",
         "at least 8 characters"},
        /* duplicates */
        {"POST", "/auth/register",
         "{\"username\":\"GRACE\",\"email\":\"other@example.com\",\"password\":\"12345678\"}", 409,
         "username", "taken"},
        {"POST", "/auth/register",
         "{\"username\":\"other\",\"email\":\"Grace@Example.com\",\"password\":\"12345678\"}", 409,
         "email", "exists already"},
        /* login */
        {"POST", "/auth/login", "{\"username\":\"grace\",\"password\":\"wrong password\"}", 401,
         "(null)", "wrong username or password"},
        {"POST", "/auth/login", "{\"username\":\"nobody\",\"password\":\"wrong password\"}", 401,
         "(null)", "wrong username or password"},
        {"POST", "/auth/login",
         "{\"email\":\"nobody@example.com\",\"password\":\"wrong password\"}", 401, NULL,
         "wrong email or password"},
        {"POST", "/auth/login", "{\"password\":\"hopper1906\"}", 400, "username",
         "username or email is required"},
        {"POST", "/auth/login",
         "{\"username\":\"grace\",\"email\":\"grace@example.com\",\"password\":\"hopper1906\"}",
         400, "email", "not both"},
        {"POST", "/auth/login", "{\"username\":\"grace\"}", 400, "password",
         "password is required"},
        /* routes and ids */
        {"GET", "/auth/nothing", NULL, 404, "(null)", "no route for /auth/nothing"},
        {"GET", "/auth/register", NULL, 405, NULL, "not allowed"},
        {"GET", "/auth/users/not-a-uuid", NULL, 404, NULL, "no user not-a-uuid"},
        {"GET", "/auth/users/01a21b84-0000-7000-8000-000000000000", NULL, 404, NULL, "no user"},
        {"DELETE", "/auth/users/01a21b84-0000-7000-8000-000000000000", NULL, 404, NULL, "no user"},
        /* found by fuzz_service: a reason that is not UTF-8 could not go into the event (500) */
        {"DELETE", "/auth/users/01a21b84-0000-7000-8000-000000000000?reason=gone%FF", NULL, 400,
         "reason", "not valid UTF-8"},
        {"PUT", "/auth/users/01a21b84-0000-7000-8000-000000000000/roles", "{\"roles\":[\"user\"]}",
         404, NULL, "no user"},
        /* password reset */
        {"POST", "/auth/password-reset", "{\"email\":\"nope\"}", 400, "email",
         "not a valid email address"},
        {"POST", "/auth/password-reset", "{}", 400, "email", "email is required"},
        {"POST", "/auth/password-reset/confirm", "{\"token\":\"abc\",\"password\":\"12345678\"}",
         400, "token", "not valid"},
        {"POST", "/auth/password-reset/confirm", "{\"token\":\"abc\",\"password\":\"1234\"}", 400,
         "password", "at least 8"},
        {"POST", "/auth/password-reset/confirm", "{\"password\":\"12345678\"}", 400, "token",
         "token is required"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect(e, bad[i].method, bad[i].path, bad[i].body, bad[i].status, bad[i].field,
               bad[i].needle);
    /* a body over HTTP_MAX_BODY_BYTES */
    char *big = malloc(4096);
    snprintf(big, 4096, "{\"username\":\"abc\",\"email\":\"a@b.io\",\"password\":\"%03000d\"}", 1);
    expect(e, "POST", "/auth/register", big, 413, "(null)", "larger than the limit of 2048 bytes");
    free(big);

    /* nothing of the refused requests was written or published */
    assert_int_equal(count_events(e, "user.registered", NULL, NULL), 1);
    assert_int_equal(count_events(e, "user.logged_in", NULL, NULL), 0);
    assert_int_equal(count_events(e, "password.#", NULL, NULL), 0);
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.auth_users", NULL), 1);
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.auth_sessions", NULL), 0);
    assert_int_equal(
        db_count(e, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL", NULL), 0);
    /* and the user registered first still logs in */
    char tok[SVC_TOKEN_MAX + 1];
    login(e, "{\"username\":\"grace\",\"password\":\"hopper1906\"}", tok);
    down(e);
}

/* Logins, failed logins and role changes land in auth-service's audit chain, by id only, and
 * `ewctl audit verify` finds the chain whole, signed with the service's key. */
static void test_actions_are_audited(void **state)
{
    env *e = up(NULL);
    char ada[EW_UUID_LEN + 1], admin[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], path[128];
    register_user(e, "adaaudit", "ada.audit@example.com", "analytical engine", ada);
    register_user(e, "rootaudit", "root.audit@example.com", "superuser", admin);
    login(e, "{\"username\":\"adaaudit\",\"password\":\"analytical engine\"}", tok);
    http_result r = api(e, "POST", "/auth/login",
                        "{\"username\":\"adaaudit\",\"password\":\"wrong guess\"}", NO_TOKEN);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    r = api(e, "POST", "/auth/login", "{\"username\":\"nobody\",\"password\":\"x\"}", NO_TOKEN);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    mint(e, admin, true, tok);
    snprintf(path, sizeof path, "/auth/users/%s/roles", ada);
    r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", tok);
    assert_int_equal(r.status, 200);
    http_result_free(&r);

    char url[400], cmd[600];
    snprintf(url, sizeof url, "sqlite:%s/{SERVICE_NAME}.db", e->dir);
    setenv("SERVICE_DB_URL", url, 1);
    char *out;
    assert_int_equal(ew_test_ewctl("audit list --service auth-service", NULL, &out, NULL), 0);
    char login_ok[160], failed[160], role[200];
    snprintf(login_ok, sizeof login_ok,
             "\"actor\":\"user:%s\",\"action\":\"auth.login\",\"subject\":\"%s\"", ada, ada);
    snprintf(failed, sizeof failed,
             "\"actor\":\"anonymous\",\"action\":\"auth.login_failed\",\"subject\":\"%s\"", ada);
    snprintf(role, sizeof role,
             "\"actor\":\"user:%s\",\"action\":\"user.role_changed\",\"subject\":\"%s\","
             "\"details\":{\"roles\":[\"user\",\"editor\"]}",
             admin, ada);
    if (!strstr(out, login_ok) || !strstr(out, failed) || !strstr(out, role))
        fail_msg("audit list lacks an entry:\n%s", out);
    /* the unknown name's failure names no subject; nothing names a person */
    assert_non_null(strstr(out, "\"action\":\"auth.login_failed\",\"subject\":null"));
    assert_null(strstr(out, "adaaudit"));
    assert_null(strstr(out, "example.com"));
    assert_null(strstr(out, "nobody"));
    assert_null(strstr(out, "wrong guess"));
    free(out);
    snprintf(cmd, sizeof cmd,
             "audit verify --service auth-service --key %s/keys/auth-service.audit.key.pub",
             e->dir);
    assert_int_equal(ew_test_ewctl(cmd, NULL, &out, NULL), 0);
    assert_non_null(strstr(out, "\"service\":\"auth-service\",\"ok\":true"));
    free(out);
    unsetenv("SERVICE_DB_URL");
    down(e);
}

/* Two revocations of one user within one second: a token issued between them (its iat is the
 * first's not_before) ends with the second too. Revocations count whole seconds, so the case is
 * the one where both fall in the same second: the sequence is tried until it does. */
static void test_revocations_within_one_second(void **state)
{
    env *e = up(NULL);
    char ada[EW_UUID_LEN + 1], admin[EW_UUID_LEN + 1], adm[SVC_TOKEN_MAX + 1];
    char tok[SVC_TOKEN_MAX + 1], path[128], self[128];
    register_user(e, "adarevoke", "ada.revoke@example.com", "analytical engine", ada);
    register_user(e, "rootrevoke", "root.revoke@example.com", "superuser", admin);
    mint(e, admin, true, adm);
    snprintf(path, sizeof path, "/auth/users/%s/roles", ada);
    snprintf(self, sizeof self, "/auth/users/%s", ada);
    bool same_second = false;
    for (int attempt = 0; attempt < 20 && !same_second; attempt++) {
        int64_t t0 = ew_now_us() / 1000000;
        http_result r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", adm);
        assert_int_equal(r.status, 200);
        http_result_free(&r);
        login(e, "{\"username\":\"adarevoke\",\"password\":\"analytical engine\"}", tok);
        r = api(e, "GET", self, NULL, tok);
        assert_int_equal(r.status, 200); /* issued after the first revocation: good */
        http_result_free(&r);
        r = api(e, "PUT", path, "{\"roles\":[\"user\"]}", adm);
        assert_int_equal(r.status, 200);
        http_result_free(&r);
        same_second = ew_now_us() / 1000000 == t0;
        r = api(e, "GET", self, NULL, tok);
        if (same_second && r.status != 401)
            fail_msg("a token issued between two revocations in one second outlived the "
                     "second: %ld",
                     r.status);
        assert_int_equal(r.status, 401); /* in any case */
        http_result_free(&r);
    }
    if (!same_second) { /* a machine this slow never put both in one second: not the case */
        down(e);
        skip();
    }
    /* and the user logs in again at once */
    login(e, "{\"username\":\"adarevoke\",\"password\":\"analytical engine\"}", tok);
    http_result r = api(e, "GET", self, NULL, tok);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    down(e);
}

/* Role changes in quick succession: the service's own user.role_changed events come back to it
 * over the bus after it applied them. One that arrived after a newer change set the older roles
 * back and revoked the tokens issued since (seen as a 401 in revocations_within_one_second; this
 * failed 4 runs of 4 before changes carried the version of the user's roles). */
static void test_quick_role_changes_keep_the_last(void **state)
{
    env *e = up(NULL);
    char user[EW_UUID_LEN + 1], admin[EW_UUID_LEN + 1], adm[SVC_TOKEN_MAX + 1], path[128];
    char tok[SVC_TOKEN_MAX + 1], self[128];
    register_user(e, "quickroles", "quick.roles@example.com", "many changes", user);
    register_user(e, "quickadmin", "quick.admin@example.com", "superuser", admin);
    mint(e, admin, true, adm);
    snprintf(path, sizeof path, "/auth/users/%s/roles", user);
    snprintf(self, sizeof self, "/auth/users/%s", user);
    static const char *const bodies[] = {
        "{\"roles\":[\"user\",\"editor\"]}", "{\"roles\":[\"user\"]}",
        "{\"roles\":[\"user\",\"editor\"]}", "{\"roles\":[\"user\",\"reviewer\"]}"};
    enum { CHANGES = 4 };
    for (int i = 0; i < CHANGES; i++) {
        http_result r = api(e, "PUT", path, bodies[i], adm);
        assert_int_equal(r.status, 200);
        http_result_free(&r);
    }
    login(e, "{\"username\":\"quickroles\",\"password\":\"many changes\"}", tok);
    /* the four events went out, each with the version it made, and the service has had them */
    ew_event *ev = wait_event(e, "user.role_changed", user, CHANGES);
    assert_int_equal(ew_event_version(ev), 2);
    assert_int_equal(ew_user_role_changed_data(ev)->roles_version, CHANGES);
    ew_event_unref(ev);
    wait_handled(e);
    http_result r = api(e, "GET", self, NULL, tok);
    assert_int_equal(r.status, 200); /* issued after the last change: valid */
    assert_string_equal(http_member(&r, "roles"), "[\"user\",\"reviewer\"]");
    http_result_free(&r);
    assert_int_equal(db_count(e,
                              "SELECT roles_version FROM event_store.auth_users "
                              "WHERE user_id = $1",
                              user),
                     CHANGES);
    down(e);
}

/* Role changes from elsewhere than the route: one without a version (the operator's `ewctl user
 * grant-admin` does not know it) is applied as the next version when the roles differ; one of a
 * version the row has passed changes nothing and revokes nothing. */
static void test_role_changes_from_the_bus_are_ordered(void **state)
{
    env *e = up(NULL);
    char user[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], self[128];
    register_user(e, "busroles", "bus.roles@example.com", "bus changes", user);
    snprintf(self, sizeof self, "/auth/users/%s", user);
    const char *admin_roles[] = {"user", "admin"}, *user_roles[] = {"user"};
    ew_user_role_changed d = {.user_id = user,
                              .roles = {admin_roles, 2},
                              .previous_roles = {user_roles, 1},
                              .changed_by = "operator (ewctl user)"};
    publish(e, EW_T_USER_ROLE_CHANGED, &d, user, NULL);
    wait_handled(e);
    http_result r = api(e, "GET", self, NULL, NULL);
    assert_string_equal(http_member(&r, "roles"), "[\"user\",\"admin\"]");
    http_result_free(&r);
    assert_int_equal(db_count(e,
                              "SELECT roles_version FROM event_store.auth_users "
                              "WHERE user_id = $1",
                              user),
                     1);
    ew_event_unref(wait_event(e, "user.tokens_revoked", user, 1));

    /* the same again changes nothing: no version, no revocation */
    publish(e, EW_T_USER_ROLE_CHANGED, &d, user, NULL);
    /* a stale change, of the version the row holds already */
    login(e, "{\"username\":\"busroles\",\"password\":\"bus changes\"}", tok);
    ew_user_role_changed stale = {.user_id = user,
                                  .roles = {user_roles, 1},
                                  .previous_roles = {admin_roles, 2},
                                  .changed_by = "someone",
                                  .roles_version = 1};
    publish(e, EW_T_USER_ROLE_CHANGED, &stale, user, NULL);
    wait_handled(e);
    r = api(e, "GET", self, NULL, tok);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "roles"), "[\"user\",\"admin\"]");
    http_result_free(&r);
    assert_int_equal(count_events(e, "user.tokens_revoked", user, NULL), 1);
    /* a newer version is applied */
    stale.roles_version = 2;
    publish(e, EW_T_USER_ROLE_CHANGED, &stale, user, NULL);
    wait_handled(e);
    r = api(e, "GET", self, NULL, tok);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    r = api(e, "GET", self, NULL, NULL);
    assert_string_equal(http_member(&r, "roles"), "[\"user\"]");
    http_result_free(&r);
    down(e);
}

static void test_roles_change(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], admin_id[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], path[128];
    register_user(e, "edsger", "edsger@example.com", "goto harmful", user_id);
    register_user(e, "root", "root@example.com", "superuser", admin_id);
    login(e, "{\"username\":\"root\",\"password\":\"superuser\"}", tok);
    snprintf(path, sizeof path, "/auth/users/%s/roles", user_id);
    struct {
        const char *body, *needle;
    } bad[] = {
        {"{\"roles\":[]}", "at least one role"},
        {"{\"roles\":\"admin\"}", "must be an array of strings"},
        {"{\"roles\":[\"Admin!\"]}", "may hold only"},
        {"{\"roles\":[\"a\",\"a\"]}", "twice"},
        {"{\"roles\":[1]}", "non-empty string"},
        {"{\"roles\":[\"user\"],\"x\":1}", "unknown field x"},
        {"{}", "roles is required"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect(e, "PUT", path, bad[i].body, 400, NULL, bad[i].needle);
    /* a bad token is refused, a user's too; an admin's names who changed the roles */
    http_result r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", "bogus");
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", tok);
    assert_int_equal(r.status, 403);
    http_result_free(&r);
    mint(e, admin_id, true, tok);
    r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", tok);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "roles"), "[\"user\",\"editor\"]");
    assert_string_equal(http_member(&r, "previous_roles"), "[\"user\"]");
    http_result_free(&r);
    ew_event *ev = wait_event(e, "user.role_changed", user_id, 1);
    const ew_user_role_changed *rc = ew_user_role_changed_data(ev);
    static const char *const now_roles[] = {"user", "editor"}, *const before[] = {"user"};
    strlist_is(rc->roles, now_roles, 2);
    strlist_is(rc->previous_roles, before, 1);
    assert_string_equal(rc->changed_by, admin_id);
    ew_event_unref(ev);
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_string_equal(http_member(&r, "roles"), "[\"user\",\"editor\"]");
    http_result_free(&r);
    down(e);
}

static void test_password_reset(void **state)
{
    static const char *const extra[] = {"AUTH_RESET_TOKEN_TTL_SECONDS=2", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1];
    register_user(e, "barbara", "barbara@example.com", "liskov1939", user_id);
    login(e, "{\"username\":\"barbara\",\"password\":\"liskov1939\"}", tok);
    /* no account enumeration: unknown and known addresses get the same answer */
    int64_t t0 = ew_mono_ns();
    http_result r1 =
        api(e, "POST", "/auth/password-reset", "{\"email\":\"nobody@example.com\"}", NULL);
    int64_t t1 = ew_mono_ns();
    http_result r2 =
        api(e, "POST", "/auth/password-reset", "{\"email\":\"Barbara@example.com\"}", NULL);
    int64_t t2 = ew_mono_ns();
    /* nor by the time the answer takes: both at least 100 ms, whatever each wrote */
    assert_true(t1 - t0 >= 100000000LL && t2 - t1 >= 100000000LL);
    assert_int_equal(r1.status, 202);
    assert_int_equal(r2.status, 202);
    assert_string_equal(r1.body, r2.body);
    http_result_free(&r1);
    http_result_free(&r2);
    ew_event *req = wait_event(e, "password.reset_requested", user_id, 1);
    ew_event *iss = wait_event(e, "password.reset_token_issued", user_id, 1);
    assert_int_equal(count_events(e, "password.reset_requested", NULL, NULL), 1);
    const ew_password_reset_token_issued *ti = ew_password_reset_token_issued_data(iss);
    assert_string_equal(ti->request_id, ew_password_reset_requested_data(req)->request_id);
    assert_string_equal(ti->email, "barbara@example.com");
    char body[256];
    snprintf(body, sizeof body, "{\"token\":\"%s\",\"password\":\"new password 1\"}", ti->token);
    char request_id[EW_UUID_LEN + 1], weak[256], first_token[128];
    snprintf(request_id, sizeof request_id, "%s", ti->request_id);
    snprintf(first_token, sizeof first_token, "%s", ti->token);
    snprintf(weak, sizeof weak, "{\"token\":\"%s\",\"password\":\"1234\"}", ti->token);
    ew_event_unref(req);
    ew_event_unref(iss);
    /* a too short new password is refused and the token stays good */
    expect(e, "POST", "/auth/password-reset/confirm", weak, 400, "password", "at least 8");
    http_result r = api(e, "POST", "/auth/password-reset/confirm", body, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), user_id);
    http_result_free(&r);
    ew_event *done = wait_event(e, "password.reset_completed", user_id, 1);
    assert_string_equal(ew_password_reset_completed_data(done)->request_id, request_id);
    ew_event_unref(done);
    /* single use; the old password and the old sessions are gone */
    expect(e, "POST", "/auth/password-reset/confirm", body, 400, "token", "used already");
    expect(e, "POST", "/auth/login", "{\"username\":\"barbara\",\"password\":\"liskov1939\"}", 401,
           NULL, "wrong username or password");
    r = api(e, "POST", "/auth/logout", NULL, tok);
    assert_int_equal(r.status, 401);
    http_result_free(&r);
    login(e, "{\"username\":\"barbara\",\"password\":\"new password 1\"}", tok);
    /* a token that expired */
    r = api(e, "POST", "/auth/password-reset", "{\"email\":\"barbara@example.com\"}", NULL);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    iss = wait_event(e, "password.reset_token_issued", user_id, 2);
    snprintf(body, sizeof body, "{\"token\":\"%s\",\"password\":\"new password 2\"}",
             ew_password_reset_token_issued_data(iss)->token);
    ew_event_unref(iss);
    usleep(2200000);
    expect(e, "POST", "/auth/password-reset/confirm", body, 400, "token", "expired");
    assert_int_equal(count_events(e, "password.reset_completed", NULL, NULL), 1);
    /* the chain: two requests (not the unknown address's), one reset, the used token and the
     * expired one shown again -- by the user's id, never the address or a token */
    char url[400], want[3][220];
    snprintf(url, sizeof url, "sqlite:%s/{SERVICE_NAME}.db", e->dir);
    setenv("SERVICE_DB_URL", url, 1);
    char *out;
    assert_int_equal(ew_test_ewctl("audit list --service auth-service", NULL, &out, NULL), 0);
    snprintf(want[0], sizeof want[0],
             "\"actor\":\"anonymous\",\"action\":\"auth.password_reset_requested\","
             "\"subject\":\"%s\",\"details\":{\"request_id\":\"%s\"}",
             user_id, request_id);
    snprintf(want[1], sizeof want[1], "\"action\":\"auth.password_reset\",\"subject\":\"%s\"",
             user_id);
    snprintf(want[2], sizeof want[2],
             "\"action\":\"auth.password_reset_refused\",\"subject\":\"%s\","
             "\"details\":{\"request_id\":\"%s\",\"reason\":\"used\"}",
             user_id, request_id);
    for (int i = 0; i < 3; i++)
        if (!strstr(out, want[i])) fail_msg("no %s in\n%s", want[i], out);
    assert_non_null(strstr(out, "\"reason\":\"expired\"}"));
    const char *at = out;
    int requests = 0;
    while ((at = strstr(at, "\"action\":\"auth.password_reset_requested\"")))
        requests++, at++;
    assert_int_equal(requests, 2);
    assert_null(strstr(out, "\"action\":\"auth.password_reset_requested\",\"subject\":null"));
    assert_null(strstr(out, "example.com"));
    assert_null(strstr(out, first_token));
    free(out);
    unsetenv("SERVICE_DB_URL");
    down(e);
}

static void test_handlers_profile_created_and_deactivated(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], path[128];
    register_user(e, "ken", "ken@example.com", "unix1969", user_id);
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    ew_error err = {0};
    ew_user_profile_created pc = {.user_id = user_id, .display_name = "Ken"};
    if (ew_bus_publish_new(bus(e), EW_T_USER_PROFILE_CREATED, &pc, user_id, &err))
        fail_msg("%s", err.msg);
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        http_result r = api(e, "GET", path, NULL, NULL);
        int done = r.status == 200 && !strcmp(http_member(&r, "profile_created"), "true");
        http_result_free(&r);
        if (done) break;
        if (ew_mono_ns() > deadline) {
            svc_proc_dump(&e->p);
            fail_msg("profile_created did not become true within 10 s");
        }
        usleep(20000);
    }
    /* the registration saga's compensation deactivates the user */
    ew_user_deactivated d = {.user_id = user_id, .reason = "profile creation failed"};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DEACTIVATED, &d, user_id, &err))
        fail_msg("%s", err.msg);
    for (;;) {
        http_result r = api(e, "GET", path, NULL, NULL);
        int done = r.status == 200 && !strcmp(http_member(&r, "status"), "deactivated");
        http_result_free(&r);
        if (done) break;
        if (ew_mono_ns() > deadline) fail_msg("the user was not deactivated within 10 s");
        usleep(20000);
    }
    expect(e, "POST", "/auth/login", "{\"username\":\"ken\",\"password\":\"unix1969\"}", 403, NULL,
           "deactivated");
    /* and a password reset is not offered to it */
    expect(e, "POST", "/auth/password-reset", "{\"email\":\"ken@example.com\"}", 202, NULL, NULL);
    usleep(200000);
    assert_int_equal(count_events(e, "password.reset_requested", NULL, NULL), 0);
    down(e);
}

static void test_deletion_and_export(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], other[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], path[128];
    register_user(e, "dennis", "dennis@example.com", "cprogramming", user_id);
    register_user(e, "brian", "brian@example.com", "awkward1977", other);
    login(e, "{\"username\":\"dennis\",\"password\":\"cprogramming\"}", tok);

    /* export: the service answers with what it holds */
    ew_error err = {0};
    char export_id[EW_UUID_LEN + 1];
    ew_uuid7(export_id);
    ew_user_data_export_requested x = {.export_id = export_id, .user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DATA_EXPORT_REQUESTED, &x, user_id, &err))
        fail_msg("%s", err.msg);
    ew_event *ev = wait_event(e, "user.data_collected", user_id, 1);
    const ew_user_data_collected *dc = ew_user_data_collected_data(ev);
    assert_string_equal(dc->export_id, export_id);
    assert_string_equal(dc->service, "auth-service");
    assert_non_null(strstr(dc->data, "\"username\":\"dennis\""));
    assert_non_null(strstr(dc->data, "\"email\":\"dennis@example.com\""));
    assert_non_null(strstr(dc->data, "\"sessions\":[{"));
    assert_null(strstr(dc->data, "password_hash"));
    assert_null(strstr(dc->data, "token_hash"));
    ew_event *asked;
    assert_int_equal(count_events(e, "user.data_export_requested", user_id, &asked), 1);
    assert_string_equal(ew_event_causation_id(ev), ew_event_id(asked));
    assert_string_equal(ew_event_correlation_id(ev), ew_event_correlation_id(asked));
    ew_event_unref(asked);
    ew_event_unref(ev);

    /* deletion: 202, user.deletion_requested, then the service's own handler deletes */
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    http_result r = api(e, "DELETE", path, NULL, tok);
    assert_int_equal(r.status, 202);
    char request_id[EW_UUID_LEN + 1];
    snprintf(request_id, sizeof request_id, "%.36s", http_member(&r, "request_id"));
    http_result_free(&r);
    ev = wait_event(e, "user.deletion_requested", user_id, 1);
    assert_string_equal(ew_user_deletion_requested_data(ev)->request_id, request_id);
    assert_string_equal(ew_user_deletion_requested_data(ev)->requested_by, user_id);
    ew_event_unref(ev);
    ev = wait_event(e, "user.data_deleted", user_id, 1);
    const ew_user_data_deleted *dd = ew_user_data_deleted_data(ev);
    assert_string_equal(dd->request_id, request_id);
    assert_string_equal(dd->service, "auth-service");
    assert_int_equal(dd->records, 3); /* the user, its session, its tokens' epoch */
    ew_event_unref(ev);
    expect(e, "GET", path, NULL, 404, NULL, "no user");
    expect(e, "POST", "/auth/login", "{\"username\":\"dennis\",\"password\":\"cprogramming\"}", 401,
           NULL, NULL);
    /* the other user is untouched */
    char tok2[SVC_TOKEN_MAX + 1];
    login(e, "{\"username\":\"brian\",\"password\":\"awkward1977\"}", tok2);
    down(e);
}

typedef struct slow_req {
    env *e;
    http_result r;
} slow_req;

static void *register_thread(void *p)
{
    slow_req *s = p;
    s->r = api(s->e, "POST", "/auth/register",
               "{\"username\":\"late\",\"email\":\"late@example.com\",\"password\":\"in flight\"}",
               NULL);
    return NULL;
}

static void test_sigterm_finishes_the_request_in_flight_and_exits_zero(void **state)
{
    /* the real password hash (64 MiB, a noticeable time) keeps the request in flight */
    static const char *const extra[] = {"AUTH_PASSWORD_HASH=moderate", NULL};
    env *e = up(extra);
    slow_req s = {.e = e};
    pthread_t t;
    pthread_create(&t, NULL, register_thread, &s);
    usleep(150000);
    int64_t t0 = ew_mono_ns();
    assert_int_equal(svc_proc_signal_wait(&e->p, SIGTERM, 15000), 0);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    pthread_join(t, NULL);
    assert_int_equal(e->p.exit_status, 0);
    assert_int_equal(s.r.status, 201);
    char user_id[EW_UUID_LEN + 1];
    snprintf(user_id, sizeof user_id, "%.36s", http_member(&s.r, "user_id"));
    http_result_free(&s.r);
    /* its event was published before the service exited */
    assert_int_equal(count_events(e, "user.registered", user_id, NULL), 1);
    if (ms > 10000) fail_msg("stopping took %lld ms", (long long)ms);
    /* started again on the same database, the user is there and the schema is as it was */
    static const char *const again[] = {NULL};
    if (svc_proc_start(&e->p, "auth-service", e->dir, again)) fail_msg("no restart");
    char tok[SVC_TOKEN_MAX + 1];
    login(e, "{\"username\":\"late\",\"password\":\"in flight\"}", tok);
    /* an idle service stops at once */
    assert_int_equal(svc_proc_signal_wait(&e->p, SIGTERM, 10000), 0);
    assert_int_equal(e->p.exit_status, 0);
    if (e->p.stop_ms > 3000)
        fail_msg("an idle service took %lld ms to stop", (long long)e->p.stop_ms);
    /* SIGINT too */
    if (svc_proc_start(&e->p, "auth-service", e->dir, again)) fail_msg("no restart");
    assert_int_equal(svc_proc_signal_wait(&e->p, SIGINT, 10000), 0);
    assert_int_equal(e->p.exit_status, 0);
    down(e);
}

static int first_text(void *ud, const ew_row *row)
{
    snprintf(ud, 256, "%s", row->values[0] ? row->values[0] : "(null)");
    return 1;
}

static void test_default_password_hash(void **state)
{
    /* AUTH_PASSWORD_HASH unset (the test harness sets min otherwise): libsodium's interactive
     * limits, 64 MiB and 2 passes, as the stored hash says */
    static const char *const extra[] = {"AUTH_PASSWORD_HASH", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1];
    register_user(e, "alan", "alan@example.com", "enigma1912", user_id);
    login(e, "{\"email\":\"alan@example.com\",\"password\":\"enigma1912\"}", tok);
    expect(e, "POST", "/auth/login", "{\"email\":\"alan@example.com\",\"password\":\"enigma1913\"}",
           401, NULL, "wrong email or password");
    char url[300], hash[256] = "";
    snprintf(url, sizeof url, "sqlite:%s/auth-service.db", e->dir);
    ew_store *db;
    ew_error err = {0};
    if (ew_store_open(&db, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_txn *t;
    const char *p[] = {user_id};
    assert_int_equal(ew_store_begin(db, &t, &err), 0);
    assert_int_equal(ew_txn_query(t,
                                  "SELECT password_hash FROM event_store.auth_users "
                                  "WHERE user_id = $1",
                                  p, 1, first_text, hash, &err),
                     0);
    ew_txn_rollback(t);
    ew_store_close(db);
    char want[64];
    snprintf(want, sizeof want, "$argon2id$v=19$m=%llu,t=%llu,",
             (unsigned long long)crypto_pwhash_MEMLIMIT_INTERACTIVE / 1024,
             (unsigned long long)crypto_pwhash_OPSLIMIT_INTERACTIVE);
    if (strncmp(hash, want, strlen(want)) != 0)
        fail_msg("stored hash %s, wanted %s...", hash, want);
    down(e);
}

/* Many logins at once with the interactive limits (64 MiB a hash): AUTH_MAX_CONCURRENT_HASHES=2
 * keeps the service's peak resident memory near two hashes' worth; every login is answered. */
typedef struct hammer {
    env *e;
    long status;
} hammer;

static void *login_thread(void *p)
{
    hammer *h = p;
    http_result r = api(h->e, "POST", "/auth/login",
                        "{\"username\":\"nobody\",\"password\":\"wrong password\"}", NO_TOKEN);
    h->status = r.status;
    http_result_free(&r);
    return NULL;
}

static long peak_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kib = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kib;
}

static void test_concurrent_hashes_are_capped(void **state)
{
    static const char *const extra[] = {
        "AUTH_PASSWORD_HASH=interactive", "AUTH_MAX_CONCURRENT_HASHES=2",
        "AUTH_LOGIN_FAILURES_PER_ACCOUNT=1000", "AUTH_LOGIN_FAILURES_PER_ADDRESS=1000", NULL};
    env *e = up(extra);
    enum { N = 12 };
    hammer h[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        h[i] = (hammer){e, 0};
        pthread_create(&t[i], NULL, login_thread, &h[i]);
    }
    for (int i = 0; i < N; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++)
        assert_int_equal(h[i].status, 401);
    long peak = peak_rss_kib(e->p.pid);
    fprintf(stderr, "auth-service peak resident memory: %ld MiB for %d logins at once\n",
            peak / 1024, N);
    /* two hashes (128 MiB) and the service itself; without the cap, twelve would take 768 */
    assert_true(peak > 0 && peak < 320 * 1024);
    down(e);
}

static void test_bad_configuration_stops_at_start(void **state)
{
    static const char *const extra[] = {"HTTP_PORT=http", NULL};
    char *text = start_fails(NULL, extra);
    assert_non_null(strstr(text, "HTTP_PORT: 'http' is not a whole number"));
    free(text);
}

static void test_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *const extra[] = {db, "HOUSEKEEPING_INTERVAL_MS=200", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], path[128];
    register_user(e, "pguser", "pg@example.com", "postgres15", user_id);
    expect(e, "POST", "/auth/register",
           "{\"username\":\"PGUSER\",\"email\":\"x@example.com\",\"password\":\"12345678\"}", 409,
           "username", "taken");
    login(e, "{\"username\":\"pguser\",\"password\":\"postgres15\"}", tok);
    http_result r = api(e, "POST", "/auth/logout", NULL, tok);
    assert_int_equal(r.status, 204);
    http_result_free(&r);
    snprintf(path, sizeof path, "/auth/users/%s/roles", user_id);
    r = api(e, "PUT", path, "{\"roles\":[\"user\",\"admin\"]}", NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    ew_event_unref(wait_event(e, "user.logged_out", user_id, 1));
    /* a handler's write in PostgreSQL, in the inbox's transaction */
    ew_error err = {0};
    ew_user_profile_created pc = {.user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_PROFILE_CREATED, &pc, user_id, &err))
        fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        r = api(e, "GET", path, NULL, NULL);
        int done = r.status == 200 && !strcmp(http_member(&r, "profile_created"), "true");
        if (done) assert_string_equal(http_member(&r, "roles"), "[\"user\",\"admin\"]");
        http_result_free(&r);
        if (done) break;
        if (ew_mono_ns() > deadline) fail_msg("profile_created did not become true within 10 s");
        usleep(20000);
    }
    /* the address is in the database's files (the row, its unique index) before the erasure */
    char where[1400];
    if (pg_files_holding(url, "pg@example.com", where, sizeof where) < 1)
        fail_msg("the address is in no file of the database: the search sees nothing");
    r = api(e, "DELETE", path, NULL, NULL);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    ew_event_unref(wait_event(e, "user.data_deleted", user_id, 1));
    expect(e, "GET", path, NULL, 404, NULL, "no user");
    /* and in none once the housekeeping compacted what the erasure deleted (VACUUM FULL) */
    int64_t end = ew_mono_ns() + 20000000000LL;
    int left;
    while ((left = pg_files_holding(url, "pg@example.com", where, sizeof where)) > 0 &&
           ew_mono_ns() < end)
        usleep(200000);
    if (left)
        fail_msg("after the erasure, %d file(s) still hold the address, %s first", left, where);
    down(e);
    ew_test_pg_drop(url);
}

/* A database made before roles_version and not_before_ms (at url, the service's database): its
 * two tables as they were, a user "olduser" with the role user, and a revocation of the user in
 * whole seconds, 2 s ahead (as a burst of revocations left them), whose not_before it returns.
 * user_id gets the user's id. */
static int64_t old_database(const char *url, char *user_id)
{
    static const char *const old[] = {
        "CREATE TABLE event_store.auth_users (user_id TEXT PRIMARY KEY, username TEXT NOT NULL,"
        " username_key TEXT NOT NULL UNIQUE, email TEXT NOT NULL UNIQUE,"
        " password_hash TEXT NOT NULL, roles TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN"
        " ('active', 'deactivated')), status_reason TEXT, profile_created INTEGER NOT NULL"
        " DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE TABLE event_store.auth_token_epochs (user_id TEXT PRIMARY KEY,"
        " not_before BIGINT NOT NULL)",
        NULL};
    ew_store *db;
    ew_error err = {0};
    if (ew_store_open(&db, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    char hash[crypto_pwhash_STRBYTES], nb[24];
    assert_int_equal(crypto_pwhash_str(hash, "old password", 12, crypto_pwhash_OPSLIMIT_MIN,
                                       crypto_pwhash_MEMLIMIT_MIN),
                     0);
    ew_uuid7(user_id);
    int64_t not_before = ew_now_us() / 1000000 + 2;
    snprintf(nb, sizeof nb, "%lld", (long long)not_before);
    const char *u[] = {user_id, hash}, *e[] = {user_id, nb};
    ew_txn *t;
    assert_int_equal(ew_store_begin(db, &t, &err), 0);
    for (const char *const *sql = old; *sql; sql++)
        if (ew_txn_exec(t, *sql, NULL, 0, NULL, &err)) fail_msg("%s", err.msg);
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.auth_users (user_id, username, username_key, email, "
                    "password_hash, roles, status, created_at, updated_at) VALUES ($1, 'olduser', "
                    "'olduser', 'old@example.com', $2, '[\"user\"]', 'active', "
                    "'2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
                    u, 2, NULL, &err) ||
        ew_txn_exec(t,
                    "INSERT INTO event_store.auth_token_epochs (user_id, not_before) "
                    "VALUES ($1, $2)",
                    e, 2, NULL, &err) ||
        ew_txn_commit(t, &err))
        fail_msg("%s", err.msg);
    ew_store_close(db);
    return not_before;
}

/* The new columns come to an old database at start, on SQLite and PostgreSQL: its user logs in
 * (after the revocation kept in seconds, not refused by it) and has roles changed, as version 1. */
static void upgrade(const char *url, const char *const *extra, const char *dir)
{
    char user_id[EW_UUID_LEN + 1], tok[SVC_TOKEN_MAX + 1], path[128];
    int64_t old_nb = old_database(url, user_id);
    env *e = up_service(SVC_UNDER_TEST, dir, extra);
    login(e, "{\"username\":\"olduser\",\"password\":\"old password\"}", tok);
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    http_result r = api(e, "GET", path, NULL, tok);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    snprintf(path, sizeof path, "/auth/users/%s/roles", user_id);
    r = api(e, "PUT", path, "{\"roles\":[\"user\",\"editor\"]}", NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    ew_event *ev = wait_event(e, "user.role_changed", user_id, 1);
    assert_int_equal(ew_user_role_changed_data(ev)->roles_version, 1);
    ew_event_unref(ev);
    ev = wait_event(e, "user.tokens_revoked", user_id, 1);
    /* past the revocation kept in seconds, read as milliseconds */
    assert_true(ew_user_tokens_revoked_data(ev)->not_before_ms > old_nb * 1000);
    ew_event_unref(ev);
    down(e);
}

static void test_an_old_database_is_upgraded_at_start(void **state)
{
    char dir[256], url[300];
    svc_tmpdir(dir);
    snprintf(url, sizeof url, "sqlite:%s/" SVC_UNDER_TEST ".db", dir);
    upgrade(url, NULL, dir);
    char db[600];
    char *pg = pg_service_db(db);
    const char *const extra[] = {db, NULL};
    svc_tmpdir(dir);
    upgrade(pg, extra, dir);
    ew_test_pg_drop(pg);
}

/* ---- abuse limits ------------------------------------------------------------------------------
 */

static long login_status(env *e, const char *user, const char *pw, char *retry, size_t n)
{
    char body[256];
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"password\":\"%s\"}", user, pw);
    http_result r = api(e, "POST", "/auth/login", body, NO_TOKEN);
    long st = r.status;
    if (retry) {
        const char *v = http_header_value(&r, "Retry-After", retry, n);
        if (!v) retry[0] = '\0';
    }
    http_result_free(&r);
    return st;
}

/* With the defaults: ten failed logins a minute per account, and per client address; the 11th
 * is 429 with Retry-After, whatever the password and whether the account exists. */
static void test_failed_logins_are_limited(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], retry[32], name[32];
    register_user(e, "grace", "grace@example.com", "right password", user_id);
    /* per address: ten failures on ten accounts that do not exist */
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "nobody%d", i);
        assert_int_equal(login_status(e, name, "wrong password", NULL, 0), 401);
    }
    assert_int_equal(login_status(e, "nobody99", "wrong password", retry, sizeof retry), 429);
    assert_true(atoi(retry) >= 1 && atoi(retry) <= 60);
    assert_int_equal(login_status(e, "grace", "right password", NULL, 0), 429);
    down(e);

    /* per account, the address's limit raised: an account that exists and one that does not
     * behave alike, the right password does not pass the limit, other accounts are not held */
    static const char *const extra[] = {"AUTH_LOGIN_FAILURES_PER_ADDRESS=1000", NULL};
    e = up(extra);
    register_user(e, "grace", "grace@example.com", "right password", user_id);
    register_user(e, "alan", "alan@example.com", "right password", user_id);
    const char *const who[] = {"grace", "ghost"};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 10; i++)
            assert_int_equal(login_status(e, who[k], "wrong password", NULL, 0), 401);
        assert_int_equal(login_status(e, who[k], "wrong password", retry, sizeof retry), 429);
        assert_true(atoi(retry) >= 1);
        assert_int_equal(login_status(e, who[k], "right password", NULL, 0), 429);
    }
    assert_int_equal(login_status(e, "alan", "right password", NULL, 0), 200);
    down(e);

    /* the window ends; a success forgets the account's failures. A window counts whole seconds
     * from the first failure's: the failures start just after a second begins, so a window of 5
     * holds them for at least 4 s, however slow the machine */
    static const char *const quick[] = {"AUTH_LIMIT_WINDOW_SECONDS=5", NULL};
    e = up(quick);
    register_user(e, "grace", "grace@example.com", "right password", user_id);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    usleep((useconds_t)(1000000 - ts.tv_nsec / 1000));
    int64_t t0 = ew_now_us();
    for (int i = 0; i < 10; i++)
        assert_int_equal(login_status(e, "grace", "wrong password", NULL, 0), 401);
    assert_int_equal(login_status(e, "grace", "right password", NULL, 0), 429);
    assert_true(ew_now_us() - t0 < 4000000); /* else the window could have ended meanwhile */
    usleep(5100000);
    assert_int_equal(login_status(e, "grace", "right password", NULL, 0), 200);
    down(e);
}

/* Password reset requests: five per email and ten per address a minute, the same answer whether
 * the address has an account. */
static void test_reset_requests_are_limited(void **state)
{
    static const char *const extra[] = {"AUTH_RESETS_PER_ADDRESS=1000", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], body[128];
    register_user(e, "ada", "ada@example.com", "right password", user_id);
    const char *const to[] = {"ada@example.com", "nobody@example.com"};
    for (int k = 0; k < 2; k++) {
        snprintf(body, sizeof body, "{\"email\":\"%s\"}", to[k]);
        for (int i = 0; i < 5; i++)
            expect(e, "POST", "/auth/password-reset", body, 202, NULL, NULL);
        http_result r = api(e, "POST", "/auth/password-reset", body, NO_TOKEN);
        assert_int_equal(r.status, 429);
        char retry[32];
        assert_non_null(http_header_value(&r, "Retry-After", retry, sizeof retry));
        http_result_free(&r);
    }
    ew_event_unref(wait_event(e, "password.reset_requested", user_id, 5));
    usleep(200000);
    assert_int_equal(count_events(e, "password.reset_requested", user_id, NULL), 5);
    down(e);
    /* ten from one address, to ten addresses: the eleventh is refused */
    e = up(NULL);
    for (int i = 0; i < 11; i++) {
        snprintf(body, sizeof body, "{\"email\":\"someone%d@example.com\"}", i);
        expect(e, "POST", "/auth/password-reset", body, i < 10 ? 202 : 429, NULL, NULL);
    }
    down(e);
}

/* ---- two confirmations of one reset token at once: exactly one succeeds ---------------------- */

typedef struct confirm {
    env *e;
    const char *body;
    pthread_barrier_t *go;
    long status;
} confirm;

static void *confirm_thread(void *p)
{
    confirm *c = p;
    pthread_barrier_wait(c->go);
    http_result r = api(c->e, "POST", "/auth/password-reset/confirm", c->body, NO_TOKEN);
    c->status = r.status;
    http_result_free(&r);
    return NULL;
}

static void race_confirmations(env *e, const char *name)
{
    char user_id[EW_UUID_LEN + 1], email[128], body[256];
    snprintf(email, sizeof email, "%s@example.com", name);
    register_user(e, name, email, "first password", user_id);
    for (int round = 1; round <= 5; round++) {
        snprintf(body, sizeof body, "{\"email\":\"%s\"}", email);
        http_result r = api(e, "POST", "/auth/password-reset", body, NO_TOKEN);
        assert_int_equal(r.status, 202);
        http_result_free(&r);
        ew_event *iss = wait_event(e, "password.reset_token_issued", user_id, round);
        snprintf(body, sizeof body, "{\"token\":\"%s\",\"password\":\"password %d\"}",
                 ew_password_reset_token_issued_data(iss)->token, round);
        ew_event_unref(iss);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, 2);
        confirm c[2] = {{e, body, &go, 0}, {e, body, &go, 0}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&t[i], NULL, confirm_thread, &c[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&go);
        if (!((c[0].status == 200 && c[1].status == 400) ||
              (c[0].status == 400 && c[1].status == 200)))
            fail_msg("round %d: the two confirmations got %ld and %ld", round, c[0].status,
                     c[1].status);
        ew_event_unref(wait_event(e, "password.reset_completed", user_id, round));
    }
    usleep(200000);
    assert_int_equal(count_events(e, "password.reset_completed", user_id, NULL), 5);
}

static void test_concurrent_reset_confirmations_one_wins(void **state)
{
    env *e = up(NULL);
    race_confirmations(e, "racer");
    down(e);
}

static void test_concurrent_reset_confirmations_one_wins_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *const extra[] = {db, NULL};
    env *e = up(extra);
    race_confirmations(e, "pgracer");
    down(e);
    ew_test_pg_drop(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_failed_logins_are_limited),
    cmocka_unit_test(test_reset_requests_are_limited),
    cmocka_unit_test(test_concurrent_reset_confirmations_one_wins),
    cmocka_unit_test(test_concurrent_reset_confirmations_one_wins_on_postgresql),
    cmocka_unit_test(test_register_login_logout),
    cmocka_unit_test(test_login_keeps_what_can_be_carried_of_any_user_agent),
    cmocka_unit_test(test_bad_input_is_refused_and_nothing_is_half_written),
    cmocka_unit_test(test_roles_change),
    cmocka_unit_test(test_quick_role_changes_keep_the_last),
    cmocka_unit_test(test_role_changes_from_the_bus_are_ordered),
    cmocka_unit_test(test_revocations_within_one_second),
    cmocka_unit_test(test_actions_are_audited),
    cmocka_unit_test(test_password_reset),
    cmocka_unit_test(test_handlers_profile_created_and_deactivated),
    cmocka_unit_test(test_deletion_and_export),
    cmocka_unit_test(test_sigterm_finishes_the_request_in_flight_and_exits_zero),
    cmocka_unit_test(test_default_password_hash),
    cmocka_unit_test(test_concurrent_hashes_are_capped),
    cmocka_unit_test(test_bad_configuration_stops_at_start),
    cmocka_unit_test(test_on_postgresql),
    cmocka_unit_test(test_an_old_database_is_upgraded_at_start),
};

EW_TEST_MAIN(tests)
