/* The service runtime in-process (services/common/svc.h: svc_open, svc_http, svc_settle,
 * svc_close), on user-service's own definition (services/user-service/service.c): a memory bus,
 * the databases in a temporary folder. What the fuzz harnesses of tests/fuzz stand on. */
#include <ftw.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "core/json.h"
#include "core/mono.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "http/http_internal.h"
#include "user.h"

typedef struct rig {
    char dir[64];
    usvc u;
    svc_def def;
    char db[128], store[128], keys[128];
    const char *settings[10];
} rig;

static void rig_init(rig *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "/tmp/ew-svc-runtime-XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    snprintf(r->db, sizeof r->db, "SERVICE_DB_URL=sqlite:%s/{SERVICE_NAME}.db", r->dir);
    snprintf(r->store, sizeof r->store, "EVENT_STORE_URL=sqlite:%s/events.db", r->dir);
    snprintf(r->keys, sizeof r->keys, "AUTH_KEY_DIR=%s/keys", r->dir);
    const char *set[] = {"EVENT_BUS_TYPE=memory", "EVENT_AUTH=off", r->db, r->store, r->keys,
                         "LOG_LEVEL=error",       "SMTP_URL=x",     NULL};
    memcpy(r->settings, set, sizeof set);
    r->def = user_service(&r->u);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rig_release(rig *r)
{
    nftw(r->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* GET path with a token of keys for user_id; the answer's status, its body in *body. */
static int get(svc *s, const svc_token_keys *k, const char *path, const char *user_id, ew_buf *body)
{
    char tok[SVC_TOKEN_MAX], sid[37], auth[SVC_TOKEN_MAX + 16];
    svc_random_uuid(sid);
    const char *roles[] = {"user"};
    int64_t now = ew_now_us() / 1000000;
    assert_int_equal(svc_token_sign(k, user_id, sid, roles, 1, now, now + 60, tok, sizeof tok), 0);
    snprintf(auth, sizeof auth, "Bearer %s", tok);
    const char *headers[] = {"Authorization", auth};
    ew__http_input in = {.method = "GET", .path = path, .headers = headers, .nheaders = 1};
    ew__http_output out;
    assert_int_equal(ew__http_handle(svc_http(s), &in, &out), 0);
    *body = out.body;
    return out.status;
}

static int count_unsent(void *ud, const ew_row *row)
{
    *(long *)ud = strtol(row->values[0], NULL, 10);
    return 1;
}

/* An event handled by the service's handler, a request answered by its route, and a settle that
 * leaves nothing in the outbox: user.registered makes a profile, whose user.profile_created the
 * relay has published when svc_settle returns. */
static void test_a_service_runs_in_process(void **state)
{
    rig r;
    rig_init(&r);
    svc *s;
    ew_error e = {0};
    if (svc_open(&s, &r.def, r.settings, &e)) fail_msg("%s", e.msg);
    assert_string_equal(svc_name(s), "user-service");
    /* the settings are the given ones, not the environment's; notification-service's SMTP_URL
     * is none of user-service's and was left out */
    assert_string_equal(ew_config_get(svc_config(s), "EVENT_BUS_TYPE"), "memory");
    assert_null(ew_config_get(svc_config(s), "SMTP_URL"));
    svc_token_keys k;
    char keys[128];
    snprintf(keys, sizeof keys, "%s/keys", r.dir);
    assert_int_equal(svc_token_keys_open(&k, keys, &e), 0);

    char id[EW_UUID_LEN + 1], data[256];
    ew_uuid7(id);
    snprintf(data, sizeof data,
             "{\"user_id\":\"%s\",\"username\":\"runtime\",\"email\":\"rt@example.com\","
             "\"roles\":[\"user\"]}",
             id);
    ew_event *ev;
    ew_event_attrs a = {.source = "test"};
    assert_int_equal(ew_event_from_json(&ev, "user.registered", data, strlen(data), &a, &e), 0);
    assert_int_equal(ew_bus_publish(svc_bus(s), ev, &e), 0);
    ew_event_unref(ev);
    if (svc_settle(s, 10000, &e)) fail_msg("%s", e.msg);

    /* the handler made the profile, and the relay published what it emitted */
    ew_txn *t;
    long unsent = -1;
    assert_int_equal(ew_store_begin(svc_db(s), &t, &e), 0);
    assert_int_equal(ew_txn_query(t,
                                  "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL",
                                  NULL, 0, count_unsent, &unsent, &e),
                     0);
    long sent = -1;
    assert_int_equal(ew_txn_query(t,
                                  "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NOT "
                                  "NULL",
                                  NULL, 0, count_unsent, &sent, &e),
                     0);
    ew_txn_rollback(t);
    assert_int_equal(unsent, 0);
    assert_true(sent >= 1); /* user.profile_created */

    char path[128];
    snprintf(path, sizeof path, "/users/%s/profile", id);
    ew_buf body;
    int status = get(s, &k, path, id, &body);
    if (status != 200) fail_msg("%d %.*s", status, (int)body.len, body.data);
    assert_non_null(strstr(body.data, "\"username\":\"runtime\""));
    ew_buf_release(&body);
    /* the route's token check is the runtime's: another user is refused */
    char other[EW_UUID_LEN + 1];
    ew_uuid7(other);
    assert_int_equal(get(s, &k, path, other, &body), 403);
    ew_buf_release(&body);

    svc_close(s);
    sodium_memzero(&k, sizeof k);
    rig_release(&r);
}

/* A database that cannot be opened (its folder would be inside a file), or a bad value: svc_open
 * fails naming the setting, and returns nothing. */
static void test_open_fails_cleanly(void **state)
{
    rig r;
    rig_init(&r);
    char file[128], url[200];
    snprintf(file, sizeof file, "%s/a-file", r.dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(url, sizeof url, "SERVICE_DB_URL=sqlite:%s/user.db", file);
    r.settings[2] = url;
    svc *s = (svc *)&r; /* must be reset */
    ew_error e = {0};
    assert_int_not_equal(svc_open(&s, &r.def, r.settings, &e), 0);
    assert_null(s);
    assert_non_null(strstr(e.msg, "SERVICE_DB_URL"));
    const char *bad[] = {"USER_VERIFICATION_TTL_SECONDS=soon", NULL};
    assert_int_equal(svc_open(&s, &r.def, bad, &e), EW_ECONFIG);
    assert_non_null(strstr(e.msg, "USER_VERIFICATION_TTL_SECONDS"));
    const char *malformed[] = {"EVENT_BUS_TYPE", NULL};
    assert_int_equal(svc_open(&s, &r.def, malformed, &e), EW_EINVAL);
    assert_int_equal(svc_open(&s, &r.def, NULL, &e), EW_EINVAL);
    assert_null(s);
    rig_release(&r);
}

static long count_of(svc *s, const char *sql)
{
    ew_txn *t;
    ew_error e = {0};
    long n = -1;
    assert_int_equal(ew_store_begin(svc_db(s), &t, &e), 0);
    assert_int_equal(ew_txn_query(t, sql, NULL, 0, count_unsent, &n, &e), 0);
    ew_txn_rollback(t);
    return n;
}

/* The relay looks at the outbox once every OUTBOX_POLL_MS -- here a minute -- and besides after
 * every commit that added to it: a handler's events (svc_ctx_emit, noted against its inbox
 * transaction) are published within moments of its commit, also when the worker committed a
 * batch of deliveries at its release (ew_inbox_ops.hold). 40 registrations at once: 80 events
 * emitted (user.profile_created, user.preferences_updated), every one published in 10 s. */
static void test_a_handler_commit_that_emitted_wakes_the_relay(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.settings[7] = "OUTBOX_POLL_MS=60000"; /* after the others, before the NULL */
    svc *s;
    ew_error e = {0};
    if (svc_open(&s, &r.def, r.settings, &e)) fail_msg("%s", e.msg);
    enum { N = 40 };
    for (int i = 0; i < N; i++) {
        char id[EW_UUID_LEN + 1], data[256];
        ew_uuid7(id);
        snprintf(data, sizeof data,
                 "{\"user_id\":\"%s\",\"username\":\"wake%d\",\"email\":\"w%d@example.com\","
                 "\"roles\":[\"user\"]}",
                 id, i, i);
        ew_event *ev;
        ew_event_attrs a = {.source = "test"};
        assert_int_equal(ew_event_from_json(&ev, "user.registered", data, strlen(data), &a, &e), 0);
        assert_int_equal(ew_bus_publish(svc_bus(s), ev, &e), 0);
        ew_event_unref(ev);
    }
    /* every handler has run (this does not touch the relay, unlike svc_settle) */
    if (ew_bus_wait_for_events(svc_bus(s), 20000, &e)) fail_msg("%s", e.msg);
    long sent = 0, unsent = -1;
    for (int64_t end = ew_mono_ns() + 10 * 1000000000LL; ew_mono_ns() < end; usleep(20000)) {
        sent = count_of(s, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NOT NULL");
        unsent = count_of(s, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL");
        if (sent == 2 * N && unsent == 0) break;
    }
    if (sent != 2 * N || unsent != 0)
        fail_msg("the relay published %ld of %d events in 10 s (%ld waiting)", sent, 2 * N, unsent);
    svc_close(s);
    rig_release(&r);
}

/* A token of k's with these claims (JSON text), signed as auth-service signs, into out. */
static void sign_claims(const svc_token_keys *k, const char *claims, char *out, size_t cap)
{
    const char *roles[] = {"user"};
    char sub[EW_UUID_LEN + 1];
    ew_uuid7(sub);
    assert_int_equal(svc_token_sign(k, sub, sub, roles, 1, 1, 2, out, cap), 0);
    size_t hl = (size_t)(strchr(out, '.') - out), cl = strlen(claims);
    out[hl] = '.';
    sodium_bin2base64(out + hl + 1, cap - hl - 1, (const unsigned char *)claims, cl,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    size_t signed_len = strlen(out);
    unsigned char sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, k->sk);
    out[signed_len] = '.';
    sodium_bin2base64(out + signed_len + 1, cap - signed_len - 1, sig, sizeof sig,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* iat_ms must name a time within iat's second; otherwise the token is not one of ours. */
static void test_a_token_whose_iat_ms_is_not_in_its_iat_is_refused(void **state)
{
    (void)state;
    svc_token_keys k;
    crypto_sign_keypair(k.pk, k.sk);
    int64_t now = ew_now_us() / 1000000;
    char id[EW_UUID_LEN + 1], claims[512], tok[SVC_TOKEN_MAX], ms[32];
    ew_uuid7(id);
    struct {
        long long iat_ms;
        const char *text; /* instead of iat_ms when not NULL */
        svc_token_status want;
    } cases[] = {
        {now * 1000, NULL, SVC_TOKEN_OK},
        {now * 1000 + 999, NULL, SVC_TOKEN_OK},
        {now * 1000 + 1000, NULL, SVC_TOKEN_MALFORMED},
        {now * 1000 - 1, NULL, SVC_TOKEN_MALFORMED},
        {0, "-5", SVC_TOKEN_MALFORMED},
        {0, "1.5e3", SVC_TOKEN_MALFORMED},
        {0, "\"1\"", SVC_TOKEN_MALFORMED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(ms, sizeof ms, "%lld", cases[i].iat_ms);
        snprintf(claims, sizeof claims,
                 "{\"iss\":\"auth-service\",\"sub\":\"%s\",\"sid\":\"%s\","
                 "\"roles\":[\"user\"],\"iat\":%lld,\"iat_ms\":%s,\"exp\":%lld}",
                 id, id, (long long)now, cases[i].text ? cases[i].text : ms, (long long)now + 60);
        sign_claims(&k, claims, tok, sizeof tok);
        svc_claims c;
        if (svc_token_verify(k.pk, tok, now, &c) != cases[i].want)
            fail_msg("case %zu (%s): want %s", i, claims, svc_token_status_text(cases[i].want));
    }
    sodium_memzero(&k, sizeof k);
}

/* Issue times and revocations in milliseconds (svc_auth.h): a token issued after a revocation
 * within the same second is valid, one issued before it is not, a token without iat_ms counts as
 * issued at the start of its second, and an earlier revocation never undoes a later one. Both
 * the first check and the cached one answer so. */
static void test_token_issue_times_are_milliseconds(void **state)
{
    (void)state;
    svc_token_keys k;
    crypto_sign_keypair(k.pk, k.sk);
    svc_authn *a;
    ew_error e = {0};
    assert_int_equal(svc_authn_new(&a, "/nonexistent", 64, &e), 0);
    svc_authn_set_key(a, k.pk);
    char user[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1];
    ew_uuid7(user);
    const char *roles[] = {"user"};
    int64_t now = ew_now_us() / 1000000, sec = (now - 10) * 1000; /* a second 10 s ago */
    char before[SVC_TOKEN_MAX], after[SVC_TOKEN_MAX], whole[SVC_TOKEN_MAX], later[SVC_TOKEN_MAX];
    ew_uuid7(sid);
    assert_int_equal(
        svc_token_sign_ms(&k, user, sid, roles, 1, sec + 100, now + 60, before, sizeof before), 0);
    assert_int_equal(
        svc_token_sign_ms(&k, user, sid, roles, 1, sec + 300, now + 60, after, sizeof after), 0);
    assert_int_equal(
        svc_token_sign(&k, user, sid, roles, 1, sec / 1000, now + 60, whole, sizeof whole), 0);
    assert_int_equal(
        svc_token_sign_ms(&k, user, sid, roles, 1, sec + 900, now + 60, later, sizeof later), 0);
    svc_claims c;
    for (int pass = 0; pass < 2; pass++) { /* the first check, then the cached one */
        assert_int_equal(svc_authn_check(a, after, now, &c), SVC_TOKEN_OK);
        assert_int_equal(c.iat, sec / 1000);
        assert_int_equal(c.iat_ms, sec + 300);
        assert_int_equal(svc_authn_check(a, whole, now, &c), SVC_TOKEN_OK);
        assert_int_equal(c.iat_ms, sec);
    }
    /* eight revocations within the second, a millisecond apart from 200 ms into it */
    for (int i = 0; i < 8; i++)
        svc_authn_revoke(a, user, NULL, sec + 200 + i, 3600);
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(svc_authn_check(a, before, now, &c), SVC_TOKEN_REVOKED);
        assert_int_equal(svc_authn_check(a, whole, now, &c), SVC_TOKEN_REVOKED);
        assert_int_equal(svc_authn_check(a, after, now, &c), SVC_TOKEN_OK);
    }
    /* a later revocation ends after too; an earlier one arriving next changes nothing */
    svc_authn_revoke(a, user, NULL, sec + 301, 3600);
    svc_authn_revoke(a, user, NULL, sec + 50, 3600);
    assert_int_equal(svc_authn_check(a, after, now, &c), SVC_TOKEN_REVOKED);
    assert_int_equal(svc_authn_check(a, later, now, &c), SVC_TOKEN_OK);
    svc_authn_free(a);
    sodium_memzero(&k, sizeof k);
}

/* GET path with bearer tok: the status. */
static int get_with(svc *s, const char *path, const char *tok)
{
    char auth[SVC_TOKEN_MAX + 16];
    snprintf(auth, sizeof auth, "Bearer %s", tok);
    const char *headers[] = {"Authorization", auth};
    ew__http_input in = {.method = "GET", .path = path, .headers = headers, .nheaders = 1};
    ew__http_output out;
    assert_int_equal(ew__http_handle(svc_http(s), &in, &out), 0);
    ew_buf_release(&out.body);
    return out.status;
}

static void publish_revocation(svc *s, const char *user, int64_t not_before_ms)
{
    ew_user_tokens_revoked d = {.user_id = user, .not_before_ms = not_before_ms, .reason = "test"};
    ew_event *ev;
    ew_error e = {0};
    if (ew_event_new(&ev, EW_T_USER_TOKENS_REVOKED, &d, &(ew_event_attrs){.source = "test"}, &e) ||
        ew_bus_publish(svc_bus(s), ev, &e))
        fail_msg("%s", e.msg);
    ew_event_unref(ev);
}

/* user.tokens_revoked as a service keeps it, across a restart: an older revocation of a user
 * that arrives after a newer one (a redelivery, a retried dead letter) leaves the newer one in
 * force, in memory and in the database that a restart reads back. A v1 event (Unix seconds)
 * reads as the same instant in milliseconds. */
static void test_an_older_revocation_never_replaces_a_newer_one(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    svc *s;
    ew_error e = {0};
    if (svc_open(&s, &r.def, r.settings, &e)) fail_msg("%s", e.msg);
    svc_token_keys k;
    char keys[128], user[EW_UUID_LEN + 1], sid[EW_UUID_LEN + 1], path[128];
    snprintf(keys, sizeof keys, "%s/keys", r.dir);
    assert_int_equal(svc_token_keys_open(&k, keys, &e), 0);
    ew_uuid7(user);
    ew_uuid7(sid);
    snprintf(path, sizeof path, "/users/%s/profile", user);
    const char *roles[] = {"user"};
    int64_t now_ms = ew_now_us() / 1000, iat_ms = now_ms - 2000;
    char tok[SVC_TOKEN_MAX];
    assert_int_equal(
        svc_token_sign_ms(&k, user, sid, roles, 1, iat_ms, now_ms / 1000 + 600, tok, sizeof tok),
        0);
    assert_int_not_equal(get_with(s, path, tok), 401);
    publish_revocation(s, user, iat_ms + 1);
    publish_revocation(s, user, iat_ms - 5000);
    if (ew_bus_wait_for_events(svc_bus(s), 10000, &e)) fail_msg("%s", e.msg);
    assert_int_equal(get_with(s, path, tok), 401);
    svc_close(s);
    if (svc_open(&s, &r.def, r.settings, &e)) fail_msg("%s", e.msg);
    assert_int_equal(get_with(s, path, tok), 401); /* read back from the database */

    /* v1: not_before in seconds, tokens with iat < not_before refused */
    char other[EW_UUID_LEN + 1];
    ew_uuid7(other);
    snprintf(path, sizeof path, "/users/%s/profile", other);
    assert_int_equal(
        svc_token_sign_ms(&k, other, sid, roles, 1, iat_ms, now_ms / 1000 + 600, tok, sizeof tok),
        0);
    for (int later = 0; later < 2; later++) {
        ew_user_tokens_revoked_v1 d = {
            .user_id = other, .not_before = iat_ms / 1000 + later, .reason = "logout"};
        ew_event *v1, *ev;
        char *json;
        size_t len;
        assert_int_equal(ew_event_new(&v1, EW_T_USER_TOKENS_REVOKED_V1, &d,
                                      &(ew_event_attrs){.source = "test"}, &e),
                         0);
        assert_int_equal(ew_event_encode(v1, &json, &len, &e), 0);
        assert_int_equal(ew_event_decode(&ev, json, len, NULL, &e), 0);
        assert_int_equal(ew_event_version(ev), 2);
        assert_int_equal(ew_user_tokens_revoked_data(ev)->not_before_ms, d.not_before * 1000);
        assert_int_equal(ew_bus_publish(svc_bus(s), ev, &e), 0);
        free(json);
        ew_event_unref(v1);
        ew_event_unref(ev);
        if (ew_bus_wait_for_events(svc_bus(s), 10000, &e)) fail_msg("%s", e.msg);
        /* issued in the second not_before names: good; refused from the second after */
        if (later)
            assert_int_equal(get_with(s, path, tok), 401);
        else
            assert_int_not_equal(get_with(s, path, tok), 401);
    }
    svc_close(s);
    sodium_memzero(&k, sizeof k);
    rig_release(&r);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_token_issue_times_are_milliseconds),
    cmocka_unit_test(test_a_token_whose_iat_ms_is_not_in_its_iat_is_refused),
    cmocka_unit_test(test_an_older_revocation_never_replaces_a_newer_one),
    cmocka_unit_test(test_a_service_runs_in_process),
    cmocka_unit_test(test_open_fails_cleanly),
    cmocka_unit_test(test_a_handler_commit_that_emitted_wakes_the_relay),
};

EW_TEST_MAIN(tests)
