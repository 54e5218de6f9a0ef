/* Tests of user-service as a process (see test_auth_service.c for the set-up): profiles made on
 * user.registered, the profile, preferences and verification endpoints, the GDPR handlers, and
 * the registration flow across two processes: auth-service registers, user-service creates the
 * profile, auth-service marks it. One case takes a profile through its whole life with the
 * service's database in PostgreSQL.
 *
 * ew-fixture: postgres */
#include <pthread.h>
#include "support/ew_test.h"
#define SVC_UNDER_TEST "user-service"
#include "services/svc_env.h"
#include "eventwire/id.h"

/* Publishes user.registered for a new user and waits for its profile; user_id gets the id. */
static void new_user(env *e, const char *username, char *user_id)
{
    ew_uuid7(user_id);
    char email[128];
    snprintf(email, sizeof email, "%s@example.com", username);
    static const char *const roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user_id, .email = email, .username = username, .roles = {roles, 1}};
    ew_error err = {0};
    if (ew_bus_publish_new(bus(e), EW_T_USER_REGISTERED, &d, user_id, &err))
        fail_msg("%s", err.msg);
    ew_event_unref(wait_event(e, "user.profile_created", user_id, 1));
}

static void test_profile_is_created_on_registration(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], path[128];
    new_user(e, "margaret", user_id);
    ew_event *ev = wait_event(e, "user.profile_created", user_id, 1);
    assert_string_equal(ew_user_profile_created_data(ev)->display_name, "margaret");
    assert_string_equal(ew_event_source(ev), "user-service");
    ew_event *reg;
    assert_int_equal(count_events(e, "user.registered", user_id, &reg), 1);
    assert_string_equal(ew_event_causation_id(ev), ew_event_id(reg));
    ew_event_unref(reg);
    ew_event_unref(ev);
    ev = wait_event(e, "user.preferences_updated", user_id, 1);
    assert_non_null(
        strstr(ew_user_preferences_updated_data(ev)->preferences, "\"language\":\"en\""));
    ew_event_unref(ev);

    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    http_result r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), user_id);
    assert_string_equal(http_member(&r, "display_name"), "margaret");
    assert_string_equal(http_member(&r, "email"), "margaret@example.com");
    assert_string_equal(http_member(&r, "verified"), "false");
    assert_string_equal(http_member(&r, "bio"), "(null)");
    http_result_free(&r);
    snprintf(path, sizeof path, "/users/%s/preferences", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "preferences"),
                        "{\"language\":\"en\",\"timezone\":\"UTC\",\"newsletter\":false,"
                        "\"notifications\":true}");
    http_result_free(&r);

    /* the same event again (a redelivery the inbox did not see: another id) changes nothing */
    static const char *const roles[] = {"user"};
    ew_user_registered d = {.user_id = user_id,
                            .email = "other@example.com",
                            .username = "margaret",
                            .roles = {roles, 1}};
    ew_error err = {0};
    if (ew_bus_publish_new(bus(e), EW_T_USER_REGISTERED, &d, user_id, &err))
        fail_msg("%s", err.msg);
    char other[EW_UUID_LEN + 1];
    new_user(e, "katherine", other); /* handled after it, in order */
    assert_int_equal(count_events(e, "user.profile_created", user_id, NULL), 1);
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_string_equal(http_member(&r, "email"), "margaret@example.com");
    http_result_free(&r);
    down(e);
}

static void test_profile_preferences_and_verification(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], path[128];
    new_user(e, "hedy", user_id);
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    http_result r = api(e, "PUT", path,
                        "{\"display_name\":\"Hedy L.\",\"bio\":\"inventor\","
                        "\"website\":\"https://example.com/hedy\"}",
                        NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "display_name"), "Hedy L.");
    assert_string_equal(http_member(&r, "bio"), "inventor");
    assert_string_equal(http_member(&r, "website"), "https://example.com/hedy");
    http_result_free(&r);
    ew_event *ev = wait_event(e, "user.profile_updated", user_id, 1);
    assert_string_equal(ew_user_profile_updated_data(ev)->changes,
                        "{\"display_name\":\"Hedy L.\",\"bio\":\"inventor\","
                        "\"website\":\"https://example.com/hedy\"}");
    ew_event_unref(ev);
    /* null clears an optional member */
    r = api(e, "PUT", path, "{\"bio\":null}", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "bio"), "(null)");
    assert_string_equal(http_member(&r, "display_name"), "Hedy L.");
    http_result_free(&r);

    struct {
        const char *body, *field, *needle;
    } bad[] = {
        {"{}", "(null)", "nothing to change"},
        {"{\"display_name\":\"\"}", "display_name", "must not be empty"},
        {"{\"display_name\":null}", "display_name", "must not be empty"},
        {"{\"display_name\":5}", "display_name", "must be a string"},
        {"{\"website\":\"ftp://x\"}", "website", "http:// or https://"},
        {"{\"nickname\":\"x\"}", "nickname", "unknown field"},
        {"{\"bio\":\"a\\u0001b\"}", "bio", "control characters"},
        {"{\"display_name\":\"x\",", "(null)", "malformed JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect(e, "PUT", path, bad[i].body, 400, bad[i].field, bad[i].needle);
    /* the two changes reach the store through the outbox relay, in its own time; the refused
     * requests added nothing */
    ew_event_unref(wait_event(e, "user.profile_updated", user_id, 2));
    assert_int_equal(count_events(e, "user.profile_updated", user_id, NULL), 2);

    /* preferences */
    snprintf(path, sizeof path, "/users/%s/preferences", user_id);
    r = api(e, "PUT", path,
            "{\"preferences\":{\"language\":\"de\",\"newsletter\":true,\"volume\":7}}", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "preferences"),
                        "{\"language\":\"de\",\"newsletter\":true,\"volume\":7}");
    http_result_free(&r);
    ev = wait_event(e, "user.preferences_updated", user_id, 2);
    assert_string_equal(ew_user_preferences_updated_data(ev)->preferences,
                        "{\"language\":\"de\",\"newsletter\":true,\"volume\":7}");
    ew_event_unref(ev);
    struct {
        const char *body, *needle;
    } badp[] = {
        {"{}", "preferences is required"},
        {"{\"preferences\":[]}", "must be an object"},
        {"{\"preferences\":{\"Language\":\"de\"}}", "preference names"},
        {"{\"preferences\":{\"tags\":[1]}}", "must be a string, number"},
    };
    for (size_t i = 0; i < sizeof badp / sizeof badp[0]; i++)
        expect(e, "PUT", path, badp[i].body, 400, "preferences", badp[i].needle);

    /* verification: a single-use token by mail (user.verification_requested, for
     * notification-service), confirmed without a bearer token, once */
    snprintf(path, sizeof path, "/users/%s/verify", user_id);
    expect(e, "POST", path, "{\"method\":\"email\"}", 400, "method", "unknown field");
    r = api(e, "POST", path, NULL, NULL);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    ev = wait_event(e, "user.verification_requested", user_id, 1);
    const ew_user_verification_requested *vr = ew_user_verification_requested_data(ev);
    assert_string_equal(vr->email, "hedy@example.com");
    char confirm[256];
    snprintf(confirm, sizeof confirm, "{\"token\":\"%s\"}", vr->token);
    ew_event_unref(ev);
    r = api(e, "POST", "/users/verify/confirm", "{\"token\":\"not-the-token\"}", NO_TOKEN);
    assert_int_equal(r.status, 400);
    http_result_free(&r);
    assert_int_equal(count_events(e, "user.verified", user_id, NULL), 0);
    r = api(e, "POST", "/users/verify/confirm", confirm, NO_TOKEN);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), user_id);
    assert_string_equal(http_member(&r, "method"), "email");
    http_result_free(&r);
    ev = wait_event(e, "user.verified", user_id, 1);
    assert_string_equal(ew_user_verified_data(ev)->method, "email");
    ew_event_unref(ev);
    r = api(e, "POST", "/users/verify/confirm", confirm, NO_TOKEN);
    assert_int_equal(r.status, 400); /* used */
    http_result_free(&r);
    expect(e, "POST", path, NULL, 409, NULL, "verified already");
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_string_equal(http_member(&r, "verified"), "true");
    assert_string_equal(http_member(&r, "verification_method"), "email");
    http_result_free(&r);

    /* unknown users */
    expect(e, "GET", "/users/01a21b84-0000-7000-8000-000000000000/profile", NULL, 404, NULL,
           "no profile");
    expect(e, "PUT", "/users/01a21b84-0000-7000-8000-000000000000/profile", "{\"bio\":\"x\"}", 404,
           NULL, "no profile");
    expect(e, "POST", "/users/01a21b84-0000-7000-8000-000000000000/verify", NULL, 404, NULL,
           "no profile");
    expect(e, "GET", "/users/nope/profile", NULL, 404, NULL, "no profile");
    expect(e, "DELETE", path, NULL, 405, NULL, "not allowed");
    down(e);
}

static void test_export_and_deletion(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], path[128], id[EW_UUID_LEN + 1];
    new_user(e, "frances", user_id);
    ew_error err = {0};
    ew_uuid7(id);
    ew_user_data_export_requested x = {.export_id = id, .user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DATA_EXPORT_REQUESTED, &x, user_id, &err))
        fail_msg("%s", err.msg);
    ew_event *ev = wait_event(e, "user.data_collected", user_id, 1);
    const ew_user_data_collected *dc = ew_user_data_collected_data(ev);
    assert_string_equal(dc->service, "user-service");
    assert_string_equal(dc->export_id, id);
    assert_non_null(strstr(dc->data, "\"display_name\":\"frances\""));
    assert_non_null(strstr(dc->data, "\"preferences\":{\"preferences\":{\"language\":\"en\""));
    ew_event_unref(ev);

    ew_uuid7(id);
    ew_user_deletion_requested del = {.request_id = id, .user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DELETION_REQUESTED, &del, user_id, &err))
        fail_msg("%s", err.msg);
    ev = wait_event(e, "user.data_deleted", user_id, 1);
    assert_string_equal(ew_user_data_deleted_data(ev)->service, "user-service");
    assert_string_equal(ew_user_data_deleted_data(ev)->request_id, id);
    assert_int_equal(ew_user_data_deleted_data(ev)->records, 2);
    ew_event_unref(ev);
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    expect(e, "GET", path, NULL, 404, NULL, "no profile");
    assert_int_equal(
        db_count(e, "SELECT count(*) FROM event_store.user_preferences WHERE user_id = $1",
                 user_id),
        0);
    down(e);
}

/* The registration flow across processes: auth-service → user.registered → user-service →
 * user.profile_created → auth-service marks the profile created. */
static void test_registration_flow_across_two_services(void **state)
{
    env *e = up(NULL); /* user-service */
    svc_proc auth;
    static const char *const none[] = {NULL};
    if (svc_proc_start(&auth, "auth-service", e->dir, none)) fail_msg("auth-service did not start");
    http_result r = api_on(&auth, "POST", "/auth/register",
                           "{\"username\":\"annie\",\"email\":\"annie@example.com\","
                           "\"password\":\"easley1933\"}",
                           NULL);
    assert_int_equal(r.status, 201);
    char user_id[EW_UUID_LEN + 1], path[128];
    snprintf(user_id, sizeof user_id, "%.36s", http_member(&r, "user_id"));
    http_result_free(&r);
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    int64_t deadline = ew_mono_ns() + 15000000000LL;
    for (;;) {
        r = api_on(&auth, "GET", path, NULL, admin_token(e));
        int done = r.status == 200 && !strcmp(http_member(&r, "profile_created"), "true");
        http_result_free(&r);
        if (done) break;
        if (ew_mono_ns() > deadline) {
            svc_proc_dump(&auth);
            svc_proc_dump(&e->p);
            fail_msg("the profile was not marked created within 15 s");
        }
        usleep(20000);
    }
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "display_name"), "annie");
    http_result_free(&r);
    /* the deletion reaches both */
    snprintf(path, sizeof path, "/auth/users/%s", user_id);
    r = api_on(&auth, "DELETE", path, NULL, admin_token(e));
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    ew_event *ev = wait_event(e, "user.data_deleted", user_id, 2);
    ew_event_unref(ev);
    svc_proc_stop(&auth);
    down(e);
}

static void test_consent_is_published(void **state)
{
    env *e = up(NULL);
    char user_id[EW_UUID_LEN + 1], path[128];
    new_user(e, "grace", user_id);
    snprintf(path, sizeof path, "/users/%s/consent", user_id);
    http_result r = api(e, "PUT", path, "{\"purpose\":\"analytics\",\"granted\":false}", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "granted"), "false");
    http_result_free(&r);
    ew_event *ev = wait_event(e, "user.consent_changed", user_id, 1);
    const ew_user_consent_changed *c = ew_user_consent_changed_data(ev);
    assert_string_equal(c->purpose, "analytics");
    assert_false(c->granted);
    ew_event_unref(ev);
    expect(e, "PUT", path, "{\"purpose\":\"Ads!\",\"granted\":true}", 400, "purpose", "a-z");
    expect(e, "PUT", path, "{\"purpose\":\"analytics\"}", 400, "granted", "granted");
    char other[EW_UUID_LEN + 1], opath[128];
    ew_uuid7(other);
    snprintf(opath, sizeof opath, "/users/%s/consent", other);
    expect(e, "PUT", opath, "{\"purpose\":\"analytics\",\"granted\":true}", 404, "(null)",
           "no profile");
    assert_int_equal(count_events(e, "user.consent_changed", NULL, NULL), 1);
    /* the consent withdrawn is in user-service's chain, by the user's id; the refused ones not */
    char url[400], want[200], *out;
    snprintf(url, sizeof url, "sqlite:%s/{SERVICE_NAME}.db", e->dir);
    setenv("SERVICE_DB_URL", url, 1);
    assert_int_equal(ew_test_ewctl("audit list --service user-service", NULL, &out, NULL), 0);
    snprintf(want, sizeof want,
             "\"action\":\"user.consent_changed\",\"subject\":\"%s\","
             "\"details\":{\"purpose\":\"analytics\",\"granted\":false}",
             user_id);
    if (!strstr(out, want)) fail_msg("no %s in\n%s", want, out);
    assert_null(strstr(strstr(out, want) + strlen(want), "user.consent_changed"));
    free(out);
    unsetenv("SERVICE_DB_URL");
    down(e);
}

/* ---- two confirmations of one verification token at once: exactly one succeeds ------------- */

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
    http_result r = api(c->e, "POST", "/users/verify/confirm", c->body, NO_TOKEN);
    c->status = r.status;
    http_result_free(&r);
    return NULL;
}

static void race_confirmations(env *e)
{
    for (int round = 0; round < 4; round++) {
        char user_id[EW_UUID_LEN + 1], name[32], path[128], body[256];
        snprintf(name, sizeof name, "racer%d", round);
        new_user(e, name, user_id);
        snprintf(path, sizeof path, "/users/%s/verify", user_id);
        http_result r = api(e, "POST", path, NULL, NULL);
        assert_int_equal(r.status, 202);
        http_result_free(&r);
        ew_event *ev = wait_event(e, "user.verification_requested", user_id, 1);
        snprintf(body, sizeof body, "{\"token\":\"%s\"}",
                 ew_user_verification_requested_data(ev)->token);
        ew_event_unref(ev);
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
        ew_event_unref(wait_event(e, "user.verified", user_id, 1));
        usleep(100000);
        assert_int_equal(count_events(e, "user.verified", user_id, NULL), 1);
    }
}

static void test_concurrent_verification_confirmations_one_wins(void **state)
{
    env *e = up(NULL);
    race_confirmations(e);
    down(e);
}

static void test_concurrent_verification_confirmations_one_wins_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *const extra[] = {db, NULL};
    env *e = up(extra);
    race_confirmations(e);
    down(e);
    ew_test_pg_drop(url);
}

/* The number the query answers on the PostgreSQL database at url ($1 = param). */
static long pg_count(const char *url, const char *sql, const char *param)
{
    ew_store *db;
    ew_error err = {0};
    if (ew_store_open(&db, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    ew_txn *t;
    long n = -1;
    const char *p[] = {param};
    assert_int_equal(ew_store_begin(db, &t, &err), 0);
    if (ew_txn_query(t, sql, p, 1, first_value, &n, &err)) fail_msg("%s: %s", sql, err.msg);
    ew_txn_rollback(t);
    ew_store_close(db);
    return n;
}

/* The whole life of a profile with the service's database in PostgreSQL: created on
 * registration (once, whatever is delivered again), changed, verified, exported, deleted; and
 * the rows are where the service says, then gone. */
static void test_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *extra[] = {db, NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], path[128], id[EW_UUID_LEN + 1];
    new_user(e, "grace", user_id);
    ew_event *reg;
    assert_int_equal(count_events(e, "user.registered", user_id, &reg), 1);
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(bus(e), SVC_UNDER_TEST, NULL, reg, 0, &err), 0);
    ew_event_unref(reg);
    wait_handled(e);
    assert_int_equal(count_events(e, "user.profile_created", user_id, NULL), 1);
    assert_int_equal(
        pg_count(url, "SELECT count(*) FROM event_store.user_profiles WHERE user_id = $1", user_id),
        1);
    assert_int_equal(
        pg_count(url, "SELECT count(*) FROM event_store.user_preferences WHERE user_id = $1",
                 user_id),
        1);
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    http_result r = api(e, "PUT", path, "{\"display_name\":\"Grace H.\",\"bio\":\"COBOL\"}", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "display_name"), "Grace H.");
    http_result_free(&r);
    ew_event_unref(wait_event(e, "user.profile_updated", user_id, 1));
    snprintf(path, sizeof path, "/users/%s/preferences", user_id);
    r = api(e, "PUT", path, "{\"preferences\":{\"language\":\"fr\"}}", NULL);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    snprintf(path, sizeof path, "/users/%s/verify", user_id);
    r = api(e, "POST", path, NULL, NULL);
    assert_int_equal(r.status, 202);
    http_result_free(&r);
    ew_event *vev = wait_event(e, "user.verification_requested", user_id, 1);
    char body[256];
    snprintf(body, sizeof body, "{\"token\":\"%s\"}",
             ew_user_verification_requested_data(vev)->token);
    ew_event_unref(vev);
    r = api(e, "POST", "/users/verify/confirm", body, NO_TOKEN);
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    expect(e, "POST", path, NULL, 409, NULL, "verified already");
    snprintf(path, sizeof path, "/users/%s/profile", user_id);
    r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "display_name"), "Grace H.");
    assert_string_equal(http_member(&r, "verified"), "true");
    http_result_free(&r);

    ew_uuid7(id);
    ew_user_data_export_requested x = {.export_id = id, .user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DATA_EXPORT_REQUESTED, &x, user_id, &err))
        fail_msg("%s", err.msg);
    ew_event *ev = wait_event(e, "user.data_collected", user_id, 1);
    assert_non_null(strstr(ew_user_data_collected_data(ev)->data, "\"display_name\":\"Grace H.\""));
    assert_non_null(strstr(ew_user_data_collected_data(ev)->data, "\"language\":\"fr\""));
    ew_event_unref(ev);
    ew_uuid7(id);
    ew_user_deletion_requested del = {.request_id = id, .user_id = user_id};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DELETION_REQUESTED, &del, user_id, &err))
        fail_msg("%s", err.msg);
    ev = wait_event(e, "user.data_deleted", user_id, 1);
    assert_int_equal(ew_user_data_deleted_data(ev)->records, 3); /* profile, preferences, token */
    ew_event_unref(ev);
    expect(e, "GET", path, NULL, 404, NULL, "no profile");
    assert_int_equal(
        pg_count(url, "SELECT count(*) FROM event_store.user_profiles WHERE user_id = $1", user_id),
        0);
    assert_int_equal(
        pg_count(url, "SELECT count(*) FROM event_store.user_preferences WHERE user_id = $1",
                 user_id),
        0);
    assert_int_equal(
        pg_count(url, "SELECT count(*) FROM event_store.user_verifications WHERE user_id = $1",
                 user_id),
        0);
    down(e);
    ew_test_pg_drop(url);
}

/* ---- the erasure in PostgreSQL's files ------------------------------------------------------ */

/* An erasure leaves nothing of the user in the service's PostgreSQL files: the deleted rows,
 * which PostgreSQL keeps in the tables' and indexes' pages, are gone once the housekeeping
 * compacted the tables the erasure deleted from (VACUUM FULL). Found there before the deletion,
 * so that the search could fail. */
static void test_erasure_leaves_nothing_in_postgresql_files(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *const extra[] = {db, "HOUSEKEEPING_INTERVAL_MS=200", NULL};
    env *e = up(extra);
    char user_id[EW_UUID_LEN + 1], name[32], email[64], where[1400];
    snprintf(name, sizeof name, "ursula%06lld", (long long)(ew_now_us() % 1000000));
    snprintf(email, sizeof email, "%s@example.com", name);
    new_user(e, name, user_id);
    if (pg_files_holding(url, email, where, sizeof where) < 1)
        fail_msg("the profile's email is in no file of the database: the search sees nothing");
    char *before = pg_text(url, "SELECT pg_relation_filepath('event_store.user_profiles')");

    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_deletion_requested del = {.request_id = id, .user_id = user_id};
    ew_error err = {0};
    if (ew_bus_publish_new(bus(e), EW_T_USER_DELETION_REQUESTED, &del, user_id, &err))
        fail_msg("%s", err.msg);
    ew_event_unref(wait_event(e, "user.data_deleted", user_id, 1));
    int64_t end = ew_mono_ns() + 20000000000LL;
    int left;
    while ((left = pg_files_holding(url, email, where, sizeof where)) > 0 && ew_mono_ns() < end)
        usleep(200000);
    if (left) {
        char sql[1600];
        const char *node = strrchr(where, '/');
        snprintf(sql, sizeof sql,
                 "SELECT relname FROM pg_class WHERE pg_relation_filenode(oid) = %ld",
                 strtol(node ? node + 1 : where, NULL, 10));
        char *rel = pg_text(url, sql);
        fail_msg("after the erasure, %d file(s) still hold the email, %s (%s) first", left, where,
                 rel);
    }
    /* the table was rewritten into a new file */
    char *after = pg_text(url, "SELECT pg_relation_filepath('event_store.user_profiles')");
    assert_string_not_equal(before, after);
    free(before);
    free(after);
    down(e);
    ew_test_pg_drop(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_erasure_leaves_nothing_in_postgresql_files, reap),
    cmocka_unit_test(test_concurrent_verification_confirmations_one_wins),
    cmocka_unit_test(test_concurrent_verification_confirmations_one_wins_on_postgresql),
    cmocka_unit_test(test_profile_is_created_on_registration),
    cmocka_unit_test(test_profile_preferences_and_verification),
    cmocka_unit_test(test_export_and_deletion),
    cmocka_unit_test(test_registration_flow_across_two_services),
    cmocka_unit_test(test_consent_is_published),
    cmocka_unit_test_teardown(test_on_postgresql, reap),
};

EW_TEST_MAIN(tests)
