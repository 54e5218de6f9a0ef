/* auth-service: the HTTP API. Every write and the events it publishes go in one transaction
 * (svc_begin ... svc_emit ... svc_commit); a request that fails writes nothing. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include "auth.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

#define USERNAME_MIN 3
#define USERNAME_MAX 32
#define PASSWORD_MIN 8
#define PASSWORD_MAX 128
#define EMAIL_MAX 254
#define ROLE_MAX 32
#define ROLES_MAX 16
#define USER_AGENT_MAX 512

/* ---- helpers ------------------------------------------------------------------------------- */

/* A slot to compute a password hash in: 0, or -1 when none came free within 10 s. Every 0 is
 * followed by hash_end(). Bounds the memory hashes take, whatever the load. */
static int hash_begin(auth *a)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    int rc = 0;
    pthread_mutex_lock(&a->hash_mu);
    while (a->hashing >= a->max_hashes && rc == 0)
        rc = pthread_cond_timedwait(&a->hash_cv, &a->hash_mu, &until);
    if (a->hashing < a->max_hashes) {
        a->hashing++;
        rc = 0;
    } else {
        rc = -1;
    }
    pthread_mutex_unlock(&a->hash_mu);
    return rc;
}

static void hash_end(auth *a)
{
    pthread_mutex_lock(&a->hash_mu);
    a->hashing--;
    pthread_cond_signal(&a->hash_cv);
    pthread_mutex_unlock(&a->hash_mu);
}

static bool username_valid(const char *u)
{
    size_t n = strlen(u);
    if (n < USERNAME_MIN || n > USERNAME_MAX) return false;
    for (const char *p = u; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') return false;
    return true;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static bool role_valid(const char *r)
{
    for (const char *p = r; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return false;
    return *r != '\0';
}

/* Checks the password of a request: 0, or -1 after answering 400. */
static int password_ok(ew_http_response *res, const char *field, const char *pw)
{
    if (strlen(pw) < PASSWORD_MIN) {
        ew_http_reply_error(res, 400, field, "%s must be at least %d characters", field,
                            PASSWORD_MIN);
        return -1;
    }
    return 0;
}

/* A JSON array of strings as text. Caller frees. */
static char *json_strlist(const char *const *items, size_t n)
{
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i) ew_buf_putc(&b, ',');
        ew_json_write_string(&b, items[i], strlen(items[i]));
    }
    ew_buf_putc(&b, ']');
    return ew_buf_steal(&b, NULL);
}

/* The roles column (a JSON array) as a list, in arena. */
static size_t parse_roles(const char *text, ew_arena *ar, const char **items, size_t cap)
{
    ew_json *j;
    size_t n = 0;
    if (!text || ew_json_parse(&j, text, strlen(text), NULL, ar, NULL) || j->kind != EW_JSON_ARRAY)
        return 0;
    for (const ew_json *e = j->child; e && n < cap; e = e->next)
        if (e->kind == EW_JSON_STRING) items[n++] = e->str;
    return n;
}

/* Answers 503 when no password hash could start (hash_begin). */
static void too_busy(ew_http_response *res)
{
    ew_http_header_add(res, "Retry-After", "1");
    ew_http_reply_error(res, 503, NULL, "too many password checks at once; try again");
}

/* Is this a unique-constraint failure of the database (a race lost to a concurrent insert)? */
static bool unique_violation(const ew_error *e)
{
    return strstr(e->msg, "UNIQUE constraint") || strstr(e->msg, "duplicate key");
}

/* Begins a transaction on the user user_id and reads its row (sql selects from auth_users
 * WHERE user_id = $1). 1: found, *t open, *row filled; 0: no such user, 404 answered; < 0: a
 * failure, in e. Nothing is open unless it returns 1. */
static int begin_on_user(auth *a, ew_http_response *res, const char *user_id, const char *sql,
                         ew_txn **t, svc_row *row, ew_error *e)
{
    int rc = svc_begin(a->s, t, e);
    if (rc) return rc;
    const char *p[] = {user_id};
    if ((rc = svc_query_row(*t, sql, p, 1, row, e)) || !row->found) {
        ew_txn_rollback(*t);
        if (!rc) ew_http_reply_error(res, 404, NULL, "no user %s", user_id);
        return rc;
    }
    return 1;
}

/* ---- POST /auth/register ------------------------------------------------------------------- */

static void h_register(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    static const char *const fields[] = {"username", "email", "password", NULL};
    const char *username, *email_in, *password;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "username", SVC_REQUIRED, USERNAME_MAX, &username) ||
        svc_json_str(rq, res, "email", SVC_REQUIRED, EMAIL_MAX, &email_in) ||
        svc_json_str(rq, res, "password", SVC_REQUIRED, PASSWORD_MAX, &password))
        return;
    if (!username_valid(username)) {
        ew_http_reply_error(res, 400, "username",
                            "username must be %d to %d characters of a-z, A-Z, 0-9, '.', '_' and "
                            "'-'",
                            USERNAME_MIN, USERNAME_MAX);
        return;
    }
    if (svc_require_email(res, "email", email_in)) return;
    if (password_ok(res, "password", password)) return;
    /* registrations per client address: every well-formed request counts, taken or not */
    char by_addr[80];
    snprintf(by_addr, sizeof by_addr, "register-ip:%s", ew_http_client_addr(rq));
    int64_t wait = svc_limiter_take(a->limits, by_addr, a->registrations_address, a->window_s,
                                    ew_now_us() / 1000000);
    if (wait) {
        svc_reply_too_many(res, wait, "registrations");
        return;
    }
    char email[EMAIL_MAX + 1], key[USERNAME_MAX + 1];
    snprintf(email, sizeof email, "%s", email_in);
    snprintf(key, sizeof key, "%s", username);
    lower(email);
    lower(key);

    char hash[crypto_pwhash_STRBYTES];
    if (hash_begin(a)) {
        too_busy(res);
        return;
    }
    int hrc = crypto_pwhash_str(hash, password, strlen(password), a->opslimit, a->memlimit);
    hash_end(a);
    if (hrc) {
        ew_error e = {0};
        ew_error_set(&e, EW_ENOMEM, "crypto_pwhash_str failed (out of memory)");
        svc_reply_failure(a->s, res, "registering", &e);
        return;
    }
    char user_id[EW_UUID_LEN + 1], now[32];
    svc_time(0, now);
    static const char *const roles[] = {"user"};
    char *roles_json = json_strlist(roles, 1);

    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    /* The new user's id comes with its data key made (user_ids.c): made inside the transaction,
     * the key store's durable commit would hold the database while it syncs, one registration at
     * a time. A registration refused below (a name taken) leaves a key that nothing uses. */
    int rc = auth_ids_take(a->ids, svc_db(a->s), user_id, &e);
    if (rc) goto failed;
    if ((rc = svc_begin(a->s, &t, &e))) goto failed;
    const char *q[] = {key, email};
    rc = svc_query_row(t,
                       "SELECT username_key, email FROM event_store.auth_users "
                       "WHERE username_key = $1 OR email = $2",
                       q, 2, &row, &e);
    if (!rc && row.found) {
        ew_txn_rollback(t);
        if (row.v[0] && !strcmp(row.v[0], key))
            ew_http_reply_error(res, 409, "username", "the username %s is taken", username);
        else
            ew_http_reply_error(res, 409, "email", "a user with this email address exists already");
        svc_row_free(&row);
        free(roles_json);
        return;
    }
    const char *ins[] = {user_id, username, key, email, hash, roles_json, now};
    if (!rc)
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.auth_users (user_id, username, username_key, "
                         "email, password_hash, roles, status, profile_created, created_at, "
                         "updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'active', 0, $7, $7)",
                         ins, 7, NULL, &e);
    ew_user_registered ev = {
        .user_id = user_id, .email = email, .username = username, .roles = {roles, 1}};
    if (!rc) rc = svc_emit(a->s, rq, t, EW_T_USER_REGISTERED, &ev, user_id, &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    free(roles_json);
    sodium_memzero(hash, sizeof hash);
    if (rc && unique_violation(&e)) {
        ew_http_reply_error(res, 409, NULL, "the username or email address is taken");
        return;
    }
    if (rc) {
        svc_reply_failure(a->s, res, "registering", &e);
        return;
    }
    char loc[64];
    snprintf(loc, sizeof loc, "/auth/users/%s", user_id);
    ew_http_header_add(res, "Location", loc);
    ew_http_obj_begin(res, 201);
    ew_http_obj_str(res, "user_id", user_id);
    ew_http_obj_end(res);
}

/* ---- POST /auth/login ---------------------------------------------------------------------- */

static void h_login(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    static const char *const fields[] = {"username", "email", "password", NULL};
    const char *username, *email_in, *password;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "username", SVC_OPTIONAL, USERNAME_MAX, &username) ||
        svc_json_str(rq, res, "email", SVC_OPTIONAL, EMAIL_MAX, &email_in) ||
        svc_json_str(rq, res, "password", SVC_REQUIRED, PASSWORD_MAX, &password))
        return;
    if (!username && !email_in) {
        ew_http_reply_error(res, 400, "username", "username or email is required");
        return;
    }
    if (username && email_in) {
        ew_http_reply_error(res, 400, "email", "give username or email, not both");
        return;
    }
    char key[EMAIL_MAX + 1];
    snprintf(key, sizeof key, "%s", username ? username : email_in);
    lower(key);
    /* failed logins per account (existing or not) and per address: past the limit, no password
     * is checked at all, the right one neither */
    char acct[EMAIL_MAX + 16], addr[80];
    snprintf(acct, sizeof acct, "login:%s", key);
    snprintf(addr, sizeof addr, "login-ip:%s", ew_http_client_addr(rq));
    int64_t now_s = ew_now_us() / 1000000;
    int64_t wait = svc_limiter_check(a->limits, acct, a->fail_account, a->window_s, now_s);
    int64_t wait2 = svc_limiter_check(a->limits, addr, a->fail_address, a->window_s, now_s);
    if (wait || wait2) {
        svc_reply_too_many(res, wait > wait2 ? wait : wait2, "failed logins");
        return;
    }

    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    const char *p[] = {key};
    /* the token is issued as of this read (its roles are the row's now): a revocation after it
     * (a role change while the password is checked) refuses it */
    int64_t read_ms = ew_now_us() / 1000;
    int rc = svc_begin(a->s, &t, &e);
    if (!rc) {
        rc = svc_query_row(t,
                           username ? "SELECT u.user_id, u.password_hash, u.status, u.roles, "
                                      "COALESCE(e.not_before_ms, e.not_before * 1000) FROM "
                                      "event_store.auth_users u LEFT JOIN "
                                      "event_store.auth_token_epochs e ON e.user_id = u.user_id "
                                      "WHERE u.username_key = $1"
                                    : "SELECT u.user_id, u.password_hash, u.status, u.roles, "
                                      "COALESCE(e.not_before_ms, e.not_before * 1000) FROM "
                                      "event_store.auth_users u LEFT JOIN "
                                      "event_store.auth_token_epochs e ON e.user_id = u.user_id "
                                      "WHERE u.email = $1",
                           p, 1, &row, &e);
        ew_txn_rollback(t);
    }
    if (rc) {
        svc_reply_failure(a->s, res, "logging in", &e);
        return;
    }
    /* the password is checked outside any transaction: it takes a while on purpose */
    const char *stored = row.found && row.v[1] ? row.v[1] : a->dummy_hash;
    if (hash_begin(a)) {
        svc_row_free(&row);
        too_busy(res);
        return;
    }
    int good = crypto_pwhash_str_verify(stored, password, strlen(password)) == 0 && row.found;
    hash_end(a);
    if (!good) {
        svc_limiter_hit(a->limits, acct, a->window_s, now_s);
        svc_limiter_hit(a->limits, addr, a->window_s, now_s);
        /* the account by id when it exists; never the name or address that was tried */
        svc_audit(a->s, rq, "anonymous", "auth.login_failed", row.found ? row.v[0] : NULL,
                  "{\"reason\":\"wrong password or no such account\"}");
        svc_row_free(&row);
        ew_http_reply_error(res, 401, NULL, "wrong %s or password",
                            username ? "username" : "email");
        return;
    }
    if (!row.v[2] || strcmp(row.v[2], "active")) {
        svc_audit(a->s, rq, "anonymous", "auth.login_failed", row.v[0],
                  "{\"reason\":\"account deactivated\"}");
        svc_row_free(&row);
        ew_http_reply_error(res, 403, NULL, "this account is deactivated");
        return;
    }
    svc_limiter_clear(a->limits, acct);
    char user_id[EW_UUID_LEN + 1];
    snprintf(user_id, sizeof user_id, "%s", row.v[0]);
    /* a token is issued after the user's last revocation (auth_revoke), else it is refused */
    int64_t iat_ms = read_ms, not_before = row.v[4] ? strtoll(row.v[4], NULL, 10) : 0;
    if (iat_ms < not_before) iat_ms = not_before;
    int64_t exp = iat_ms / 1000 + a->token_ttl_s;
    ew_arena ar;
    ew_arena_init(&ar, NULL, 0);
    const char *roles[ROLES_MAX * 2];
    size_t nroles = parse_roles(row.v[3], &ar, roles, ROLES_MAX * 2);
    svc_row_free(&row);

    char token[SVC_TOKEN_MAX + 1], hash[SVC_SECRET_HASH_LEN + 1], session_id[EW_UUID_LEN + 1];
    char now[EW_TIME_LEN + 1], expires[EW_TIME_LEN + 1], agent[USER_AGENT_MAX + 1];
    ew_uuid7(session_id);
    rc = svc_token_sign_ms(&a->keys, user_id, session_id, roles, nroles, iat_ms, exp, token,
                           sizeof token);
    ew_arena_release(&ar);
    if (rc) {
        ew_error_set(&e, rc, "cannot sign a token");
        svc_reply_failure(a->s, res, "logging in", &e);
        return;
    }
    svc_secret_hash(token, hash);
    svc_time(0, now);
    ew_time_format(exp * 1000000, expires);
    const char *ip = ew_http_client_addr(rq);
    const char *ua = ew_http_header(rq, "User-Agent");
    /* kept as the client sent it, as far as events and JSON can carry it (a header may hold
     * any byte, and USER_AGENT_MAX may fall inside a character) */
    svc_text_utf8(agent, sizeof agent, ua ? ua : "");
    const char *ins[] = {session_id,        user_id, hash,   *ip ? ip : NULL,
                         ua ? agent : NULL, now,     expires};
    if ((rc = svc_begin(a->s, &t, &e))) goto failed;
    rc = ew_txn_exec(t,
                     "INSERT INTO event_store.auth_sessions (session_id, user_id, token_hash, "
                     "ip_address, user_agent, created_at, expires_at) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                     ins, 7, NULL, &e);
    ew_user_logged_in ev = {.user_id = user_id,
                            .session_id = session_id,
                            .ip_address = *ip ? ip : NULL,
                            .user_agent = ua ? agent : NULL};
    if (!rc) rc = svc_emit(a->s, rq, t, EW_T_USER_LOGGED_IN, &ev, user_id, &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(a->s, res, "logging in", &e);
        return;
    }
    char who[EW_UUID_LEN + 8], details[80];
    snprintf(who, sizeof who, "user:%s", user_id);
    snprintf(details, sizeof details, "{\"session_id\":\"%s\"}", session_id);
    svc_audit(a->s, rq, who, "auth.login", user_id, details);
    ew_http_header_add(res, "Cache-Control", "no-store");
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "token", token);
    ew_http_obj_str(res, "token_type", "Bearer");
    ew_http_obj_int(res, "expires_in", exp - ew_now_us() / 1000000);
    ew_http_obj_str(res, "user_id", user_id);
    ew_http_obj_str(res, "session_id", session_id);
    ew_http_obj_str(res, "expires_at", expires);
    ew_http_obj_end(res);
    sodium_memzero(token, sizeof token);
}

/* ---- POST /auth/logout --------------------------------------------------------------------- */

static void h_logout(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    (void)rq;
    auth *a = ud;
    const svc_claims *c = svc_caller(rq);
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    ew_txn *t;
    ew_error e = {0};
    int rc = svc_begin(a->s, &t, &e);
    if (rc) goto failed;
    const char *u[] = {c->sid, now, c->sub};
    rc = ew_txn_exec(t,
                     "UPDATE event_store.auth_sessions SET ended_at = $2 "
                     "WHERE session_id = $1 AND user_id = $3 AND ended_at IS NULL",
                     u, 3, NULL, &e);
    ew_user_logged_out ev = {.user_id = c->sub, .session_id = c->sid};
    if (!rc) rc = svc_emit(a->s, rq, t, EW_T_USER_LOGGED_OUT, &ev, c->sub, &e);
    if (!rc) rc = auth_revoke(a, t, NULL, c->sub, c->sid, "logout", &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(a->s, res, "logging out", &e);
        return;
    }
    svc_audit(a->s, rq, NULL, "auth.logout", c->sub, NULL);
    ew_http_status(res, 204);
}

/* ---- PUT /auth/users/{id}/roles ------------------------------------------------------------ */

static void h_roles(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    if (svc_require_admin(rq, res)) return;
    const char *user_id = svc_path_user(rq, res, "id", "user");
    if (!user_id) return;
    static const char *const fields[] = {"roles", NULL};
    const char *roles[ROLES_MAX];
    size_t n = 0;
    if (svc_json_only(rq, res, fields) ||
        svc_json_strlist(rq, res, "roles", SVC_REQUIRED, ROLES_MAX, ROLE_MAX, roles, &n))
        return;
    if (n == 0) {
        ew_http_reply_error(res, 400, "roles", "roles must hold at least one role");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (!role_valid(roles[i])) {
            ew_http_reply_error(res, 400, "roles",
                                "roles[%zu] '%.32s' may hold only a-z, 0-9, '_' and '-'", i,
                                roles[i]);
            return;
        }
    const char *by = svc_caller(rq)->sub;
    char *roles_json = json_strlist(roles, n), now[32];
    svc_time(0, now);
    ew_arena ar;
    ew_arena_init(&ar, NULL, 0);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    const char *prev[ROLES_MAX * 2];
    size_t nprev = 0;
    int rc =
        begin_on_user(a, res, user_id,
                      "SELECT roles FROM event_store.auth_users WHERE user_id = $1", &t, &row, &e);
    if (rc == 0) goto out;
    if (rc < 0) goto failed;
    nprev = parse_roles(row.v[0], &ar, prev, ROLES_MAX * 2);
    /* the next version of the user's roles, carried in the event (handlers.c orders by it) */
    const char *u[] = {user_id, roles_json, now};
    rc = ew_txn_exec(t,
                     "UPDATE event_store.auth_users SET roles = $2, "
                     "roles_version = roles_version + 1, updated_at = $3 WHERE user_id = $1",
                     u, 3, NULL, &e);
    svc_row_free(&row);
    if (!rc)
        rc = svc_query_row(t, "SELECT roles_version FROM event_store.auth_users WHERE user_id = $1",
                           u, 1, &row, &e);
    ew_user_role_changed ev = {.user_id = user_id,
                               .roles = {roles, n},
                               .previous_roles = {prev, nprev},
                               .changed_by = by,
                               .roles_version =
                                   !rc && row.found && row.v[0] ? strtoll(row.v[0], NULL, 10) : 0};
    if (!rc) rc = svc_emit(a->s, rq, t, EW_T_USER_ROLE_CHANGED, &ev, user_id, &e);
    if (!rc) rc = auth_revoke(a, t, NULL, user_id, NULL, "role_change", &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(a->s, res, "changing roles", &e);
        goto out;
    }
    ew_buf d;
    ew_buf_init(&d);
    ew_buf_printf(&d, "{\"roles\":%s}", roles_json ? roles_json : "null");
    svc_audit(a->s, rq, NULL, "user.role_changed", user_id, d.oom ? NULL : d.data);
    ew_buf_release(&d);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", user_id);
    ew_http_obj_strlist(res, "roles", roles, n);
    ew_http_obj_strlist(res, "previous_roles", prev, nprev);
    ew_http_obj_end(res);
out:
    svc_row_free(&row);
    ew_arena_release(&ar);
    free(roles_json);
}

/* ---- POST /auth/password-reset -------------------------------------------------------------- */

/* The least time a reset request's 202 takes, whether the address has an account (a row and two
 * events written) or not (nothing written): the answer's timing tells nothing either. */
#define RESET_ANSWER_MIN_NS 100000000LL

static void sleep_until(int64_t mono_ns)
{
    for (int64_t left; (left = mono_ns - ew_mono_ns()) > 0;) {
        struct timespec ts = {(time_t)(left / 1000000000LL), (long)(left % 1000000000LL)};
        nanosleep(&ts, NULL);
    }
}

static void h_reset_request(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    int64_t started = ew_mono_ns();
    static const char *const fields[] = {"email", NULL};
    const char *email_in;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "email", SVC_REQUIRED, EMAIL_MAX, &email_in))
        return;
    if (svc_require_email(res, "email", email_in)) return;
    char email[EMAIL_MAX + 1];
    snprintf(email, sizeof email, "%s", email_in);
    lower(email);
    /* requests per address and per email, counted whether the address has an account or not */
    char by_addr[80], by_email[EMAIL_MAX + 16];
    snprintf(by_addr, sizeof by_addr, "reset-ip:%s", ew_http_client_addr(rq));
    snprintf(by_email, sizeof by_email, "reset:%s", email);
    int64_t now_s = ew_now_us() / 1000000;
    int64_t wait = svc_limiter_take(a->limits, by_addr, a->resets_address, a->window_s, now_s);
    if (!wait) wait = svc_limiter_take(a->limits, by_email, a->resets_email, a->window_s, now_s);
    if (wait) {
        svc_reply_too_many(res, wait, "password reset requests");
        return;
    }
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(a->s, &t, &e);
    if (rc) goto failed;
    const char *p[] = {email};
    rc = svc_query_row(t,
                       "SELECT user_id FROM event_store.auth_users "
                       "WHERE email = $1 AND status = 'active'",
                       p, 1, &row, &e);
    if (!rc && !row.found) {
        /* nobody to send it to; the answer is the same, so that it tells nothing */
        ew_txn_rollback(t);
        goto accepted;
    }
    char request_id[EW_UUID_LEN + 1], token[SVC_SECRET_LEN + 1], hash[SVC_SECRET_HASH_LEN + 1];
    char now[EW_TIME_LEN + 1], expires[EW_TIME_LEN + 1];
    ew_uuid7(request_id);
    svc_secret_new(token);
    svc_secret_hash(token, hash);
    svc_time(0, now);
    svc_time(a->reset_ttl_s, expires);
    const char *ins[] = {request_id, rc ? "" : row.v[0], hash, now, expires};
    if (!rc)
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.auth_password_resets (request_id, user_id, "
                         "token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                         ins, 5, NULL, &e);
    ew_password_reset_requested req = {.request_id = request_id, .user_id = ins[1], .email = email};
    ew_password_reset_token_issued iss = {.request_id = request_id,
                                          .user_id = ins[1],
                                          .email = email,
                                          .token = token,
                                          .expires_at = expires};
    /* One conversation: the token's event follows from the request's (its correlation id, and
     * the request as its cause), so what answers the token (the email) is part of it too and
     * the PasswordReset saga finds it. */
    ew_event *evs[2] = {NULL, NULL};
    ew_event_attrs at = {
        .source = svc_name(a->s), .subject = ins[1], .traceparent = ew_http_traceparent(rq)};
    if (!rc) rc = ew_password_reset_requested_new(&evs[0], &req, &at, &e);
    if (!rc) {
        at.correlation_id = ew_event_correlation_id(evs[0]);
        at.causation_id = ew_event_id(evs[0]);
        rc = ew_password_reset_token_issued_new(&evs[1], &iss, &at, &e);
    }
    for (int i = 0; i < 2 && !rc; i++)
        rc = ew_outbox_add(t, evs[i], &e);
    ew_event_unref(evs[0]);
    ew_event_unref(evs[1]);
    rc = svc_finish(a->s, t, rc, &e);
    sodium_memzero(token, sizeof token);
    if (!rc) { /* the account by id, never the address asked for */
        char details[80];
        snprintf(details, sizeof details, "{\"request_id\":\"%s\"}", request_id);
        svc_audit(a->s, rq, "anonymous", "auth.password_reset_requested", row.v[0], details);
    }
failed:
    if (rc) {
        svc_row_free(&row);
        svc_reply_failure(a->s, res, "requesting a password reset", &e);
        return;
    }
accepted:
    svc_row_free(&row);
    sleep_until(started + RESET_ANSWER_MIN_NS);
    ew_http_obj_begin(res, 202);
    ew_http_obj_str(res, "status", "accepted");
    ew_http_obj_str(res, "message",
                    "if an account has this address, a reset link is on its way to it");
    ew_http_obj_end(res);
}

/* ---- POST /auth/password-reset/confirm ------------------------------------------------------ */

/* A reset token of the user's that was shown again once used or expired (a leaked mail?): by
 * the ids of the user and the request. A token that matches nothing names nobody and is not
 * recorded. */
static void reset_refused(auth *a, const char *request_id, const char *user_id, const char *why)
{
    char details[120];
    snprintf(details, sizeof details, "{\"request_id\":\"%s\",\"reason\":\"%s\"}", request_id, why);
    svc_audit(a->s, NULL, "anonymous", "auth.password_reset_refused", user_id, details);
}

/* The reset of token's hash: 0 and its request and user when it can be used, 1 after answering
 * 400 when it cannot, < 0 for a failure (in e). */
static int reset_lookup(auth *a, ew_http_response *res, const char *hash, const char *now,
                        svc_row *row, ew_error *e)
{
    ew_txn *t;
    int rc = svc_begin(a->s, &t, e);
    if (rc) return rc;
    const char *p[] = {hash};
    rc = svc_query_row(t,
                       "SELECT request_id, user_id, expires_at, used_at FROM "
                       "event_store.auth_password_resets WHERE token_hash = $1",
                       p, 1, row, e);
    ew_txn_rollback(t);
    if (rc) return rc;
    const char *why = NULL;
    if (!row->found)
        why = "the reset token is not valid";
    else if (row->v[3])
        why = "the reset token was used already";
    else if (!row->v[2] || strcmp(row->v[2], now) <= 0)
        why = "the reset token has expired";
    if (!why) return 0;
    if (row->found) reset_refused(a, row->v[0], row->v[1], row->v[3] ? "used" : "expired");
    svc_row_free(row);
    ew_http_reply_error(res, 400, "token", "%s", why);
    return 1;
}

static void h_reset_confirm(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    static const char *const fields[] = {"token", "password", NULL};
    const char *token, *password;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "token", SVC_REQUIRED, 256, &token) ||
        svc_json_str(rq, res, "password", SVC_REQUIRED, PASSWORD_MAX, &password) ||
        password_ok(res, "password", password))
        return;
    char hash[SVC_SECRET_HASH_LEN + 1], now[EW_TIME_LEN + 1], pwhash[crypto_pwhash_STRBYTES];
    svc_secret_hash(token, hash);
    svc_time(0, now);
    ew_error e = {0};
    svc_row row = {0};
    /* the token first: a wrong one costs no password hash */
    int rc = reset_lookup(a, res, hash, now, &row, &e);
    if (rc > 0) return;
    if (rc) {
        svc_reply_failure(a->s, res, "resetting the password", &e);
        return;
    }
    /* hashed outside any transaction: it takes a while on purpose */
    if (hash_begin(a)) {
        svc_row_free(&row);
        too_busy(res);
        return;
    }
    int hrc = crypto_pwhash_str(pwhash, password, strlen(password), a->opslimit, a->memlimit);
    hash_end(a);
    if (hrc) {
        svc_row_free(&row);
        ew_error_set(&e, EW_ENOMEM, "crypto_pwhash_str failed (out of memory)");
        svc_reply_failure(a->s, res, "resetting the password", &e);
        return;
    }
    const char *request_id = row.v[0], *user_id = row.v[1];
    ew_txn *t;
    if ((rc = svc_begin(a->s, &t, &e))) goto failed;
    /* the token is spent here, once: of two confirmations at once, one changes the row and
     * the other finds it used (and writes nothing) */
    int64_t spent = 0;
    const char *u0[] = {request_id, now};
    rc = ew_txn_exec(t,
                     "UPDATE event_store.auth_password_resets SET used_at = $2 "
                     "WHERE request_id = $1 AND used_at IS NULL AND expires_at > $2",
                     u0, 2, &spent, &e);
    if (!rc && spent != 1) {
        ew_txn_rollback(t);
        reset_refused(a, request_id, user_id, "used");
        svc_row_free(&row);
        sodium_memzero(pwhash, sizeof pwhash);
        ew_http_reply_error(res, 400, "token", "the reset token was used already");
        return;
    }
    const char *u1[] = {user_id, pwhash, now};
    if (!rc)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.auth_users SET password_hash = $2, updated_at = $3 "
                         "WHERE user_id = $1",
                         u1, 3, NULL, &e);
    /* every token of the user is spent, and every session ends */
    const char *u2[] = {user_id, now};
    if (!rc)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.auth_password_resets SET used_at = $2 "
                         "WHERE user_id = $1 AND used_at IS NULL",
                         u2, 2, NULL, &e);
    if (!rc)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.auth_sessions SET ended_at = $2 "
                         "WHERE user_id = $1 AND ended_at IS NULL",
                         u2, 2, NULL, &e);
    ew_password_reset_completed ev = {.request_id = request_id, .user_id = user_id};
    if (!rc) rc = svc_emit(a->s, rq, t, EW_T_PASSWORD_RESET_COMPLETED, &ev, user_id, &e);
    if (!rc) rc = auth_revoke(a, t, NULL, user_id, NULL, "password_reset", &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    sodium_memzero(pwhash, sizeof pwhash);
    if (rc) {
        svc_row_free(&row);
        svc_reply_failure(a->s, res, "resetting the password", &e);
        return;
    }
    svc_audit(a->s, rq, "anonymous", "auth.password_reset", row.v[1], NULL);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", row.v[1]);
    ew_http_obj_str(res, "status", "password changed");
    ew_http_obj_end(res);
    svc_row_free(&row);
}

/* ---- GET /auth/users/{id} ------------------------------------------------------------------ */

static void h_user(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    const char *user_id = svc_path_user(rq, res, "id", "user");
    if (!user_id) return;
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = begin_on_user(a, res, user_id,
                           "SELECT user_id, status, profile_created, roles, created_at, "
                           "updated_at FROM event_store.auth_users WHERE user_id = $1",
                           &t, &row, &e);
    if (rc == 0) return;
    if (rc < 0) {
        svc_reply_failure(a->s, res, "reading the user", &e);
        return;
    }
    ew_txn_rollback(t);
    ew_arena ar;
    ew_arena_init(&ar, NULL, 0);
    const char *roles[ROLES_MAX * 2];
    size_t n = parse_roles(row.v[3], &ar, roles, ROLES_MAX * 2);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", row.v[0]);
    ew_http_obj_str(res, "status", row.v[1]);
    ew_http_obj_bool(res, "profile_created", row.v[2] && strcmp(row.v[2], "0") != 0);
    ew_http_obj_strlist(res, "roles", roles, n);
    ew_http_obj_str(res, "created_at", row.v[4]);
    ew_http_obj_str(res, "updated_at", row.v[5]);
    ew_http_obj_end(res);
    ew_arena_release(&ar);
    svc_row_free(&row);
}

/* ---- DELETE /auth/users/{id} --------------------------------------------------------------- */

static void h_delete(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    auth *a = ud;
    const char *user_id = svc_path_user(rq, res, "id", "user");
    if (!user_id) return;
    const char *reason = ew_http_query(rq, "reason");
    if (reason && strlen(reason) > 500) {
        ew_http_reply_error(res, 400, "reason", "reason is longer than 500 bytes");
        return;
    }
    if (reason && !ew_utf8_valid(reason, strlen(reason))) {
        ew_http_reply_error(res, 400, "reason", "reason is not valid UTF-8");
        return;
    }
    const char *by = svc_caller(rq)->sub;
    char request_id[EW_UUID_LEN + 1];
    ew_uuid7(request_id);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = begin_on_user(a, res, user_id,
                           "SELECT user_id FROM event_store.auth_users WHERE user_id = $1", &t,
                           &row, &e);
    if (rc == 0) return;
    if (rc < 0) goto failed;
    svc_row_free(&row);
    ew_user_deletion_requested ev = {.request_id = request_id,
                                     .user_id = user_id,
                                     .reason = reason && *reason ? reason : NULL,
                                     .requested_by = by};
    rc = svc_emit(a->s, rq, t, EW_T_USER_DELETION_REQUESTED, &ev, user_id, &e);
    if (!rc) rc = auth_revoke(a, t, NULL, user_id, NULL, "deletion", &e);
    rc = svc_finish(a->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(a->s, res, "requesting the deletion", &e);
        return;
    }
    char details[80];
    snprintf(details, sizeof details, "{\"request_id\":\"%s\"}", request_id);
    svc_audit(a->s, rq, NULL, "user.deletion_requested", user_id, details);
    ew_http_obj_begin(res, 202);
    ew_http_obj_str(res, "request_id", request_id);
    ew_http_obj_str(res, "user_id", user_id);
    ew_http_obj_end(res);
}

const svc_http_route auth_routes[] = {
    {"POST /auth/register", EW_HTTP_JSON | SVC_PUBLIC, h_register},
    {"POST /auth/login", EW_HTTP_JSON | SVC_PUBLIC, h_login},
    {"POST /auth/logout", 0, h_logout},
    {"PUT /auth/users/{id}/roles", EW_HTTP_JSON, h_roles},
    {"POST /auth/password-reset", EW_HTTP_JSON | SVC_PUBLIC, h_reset_request},
    {"POST /auth/password-reset/confirm", EW_HTTP_JSON | SVC_PUBLIC, h_reset_confirm},
    {"GET /auth/users/{id}", 0, h_user},
    {"DELETE /auth/users/{id}", 0, h_delete},
    {0},
};
