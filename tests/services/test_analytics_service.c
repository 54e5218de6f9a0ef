/* Tests of analytics-service as a process (set-up: services/svc_env.h): the test publishes events
 * through a bus of its own on the service's SQLite bus and checks GET /stats, the per-user rows,
 * analytics.user_tracked, and the GDPR answers. One case keeps the service's database in
 * PostgreSQL.
 * ew-fixture: postgres */
#include "support/ew_test.h"
#define SVC_UNDER_TEST "analytics-service"
#include "services/svc_env.h"
#include "core/json.h"
#include "eventwire/id.h"

/* The service with fast retries and a fast relay, plus extra. */
static env *start(const char *const *extra)
{
    return up_fast(NULL, NULL, NULL, extra);
}

static void registered(env *e, const char *user_id, const char *username)
{
    static const char *const roles[] = {"user"};
    char email[128];
    snprintf(email, sizeof email, "%s@example.com", username);
    ew_user_registered d = {
        .user_id = user_id, .email = email, .username = username, .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user_id, NULL);
}

static void logged_in(env *e, const char *user_id, const char *id)
{
    char session[EW_UUID_LEN + 1];
    ew_uuid7(session);
    ew_user_logged_in d = {.user_id = user_id, .session_id = session};
    publish(e, EW_T_USER_LOGGED_IN, &d, user_id, id);
}

static void logged_out(env *e, const char *user_id)
{
    ew_user_logged_out d = {.user_id = user_id, .session_id = "s"};
    publish(e, EW_T_USER_LOGGED_OUT, &d, user_id, NULL);
}

/* The number at path ("counters/logins", '/' between members) of the JSON text; -1 when there is
 * no number there. */
static long long jnum(const char *json, const char *path)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *j;
    long long v = -1;
    if (ew_json_parse(&j, json, strlen(json), NULL, &a, NULL) == 0) {
        const ew_json *m = j;
        char key[128];
        for (const char *p = path; m && *p;) {
            size_t l = strcspn(p, "/");
            snprintf(key, sizeof key, "%.*s", (int)l, p);
            m = ew_json_get(m, key);
            p += l + (p[l] == '/');
        }
        if (m && m->kind == EW_JSON_NUMBER && m->is_int) v = m->i64;
    }
    ew_arena_release(&a);
    return v;
}

static char *stats(env *e)
{
    http_result r = api(e, "GET", "/stats", NULL, NULL);
    if (r.status != 200) fail_msg("GET /stats: %ld %s", r.status, r.body);
    char *body = strdup(r.body);
    http_result_free(&r);
    return body;
}

/* ---- cases ----------------------------------------------------------------------------------- */

static void test_counts_events_and_serves_stats(void **state)
{
    env *e = start(NULL);
    char ada[EW_UUID_LEN + 1], bob[EW_UUID_LEN + 1];
    ew_uuid7(ada);
    ew_uuid7(bob);
    registered(e, ada, "ada");
    registered(e, bob, "bob");
    /* the registration saga waits for analytics.user_tracked */
    ew_event *ev = wait_event(e, "analytics.user_tracked", ada, 1);
    const ew_analytics_user_tracked *t = ew_analytics_user_tracked_data(ev);
    assert_string_equal(t->user_id, ada);
    assert_string_equal(t->event, "user.registered");
    assert_string_equal(ew_event_source(ev), "analytics-service");
    ew_event_unref(ev);
    ew_event_unref(wait_event(e, "analytics.user_tracked", bob, 1));

    logged_in(e, ada, NULL);
    logged_in(e, ada, NULL);
    logged_in(e, bob, NULL);
    usleep(2000); /* ada's logout is later than her logins */
    logged_out(e, ada);
    ew_user_profile_updated pu = {.user_id = ada, .changes = "{\"bio\":\"poet\"}"};
    publish(e, EW_T_USER_PROFILE_UPDATED, &pu, ada, NULL);
    ew_user_verified v = {.user_id = bob, .method = "email"};
    publish(e, EW_T_USER_VERIFIED, &v, bob, NULL);
    wait_handled(e);

    char *s = stats(e);
    assert_int_equal(jnum(s, "counters/registrations"), 2);
    assert_int_equal(jnum(s, "counters/logins"), 3);
    assert_int_equal(jnum(s, "counters/logouts"), 1);
    assert_int_equal(jnum(s, "counters/profile_updates"), 1);
    assert_int_equal(jnum(s, "counters/verifications"), 1);
    assert_int_equal(jnum(s, "counters/deletions_requested"), 0);
    assert_int_equal(jnum(s, "counters/users"), 2);
    assert_int_equal(jnum(s, "counters/active_users"), 2);
    assert_int_equal(jnum(s, "counters/logged_in_users"), 1); /* bob */
    assert_int_equal(jnum(s, "totals/user.registered"), 2);
    assert_int_equal(jnum(s, "totals/user.logged_in"), 3);
    /* every type it sees, its own analytics.user_tracked too */
    assert_int_equal(jnum(s, "totals/analytics.user_tracked"), 2);
    assert_int_equal(jnum(s, "events"), 2 + 3 + 1 + 1 + 1 + 2);
    free(s);

    /* which events each user caused */
    char path[128];
    snprintf(path, sizeof path, "/stats/users/%s", ada);
    http_result r = api(e, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "user_id"), ada);
    assert_non_null(strstr(r.body, "{\"event_type\":\"user.logged_in\",\"count\":2,"));
    assert_non_null(strstr(r.body, "{\"event_type\":\"user.logged_out\",\"count\":1,"));
    assert_non_null(strstr(r.body, "{\"event_type\":\"user.registered\",\"count\":1,"));
    assert_string_not_equal(http_member(&r, "registered_at"), "(null)");
    http_result_free(&r);
    down(e);
}

static void test_a_redelivered_event_is_counted_once(void **state)
{
    env *e = start(NULL);
    char ada[EW_UUID_LEN + 1], id[EW_UUID_LEN + 1];
    ew_uuid7(ada);
    ew_uuid7(id);
    registered(e, ada, "ada");
    logged_in(e, ada, id);
    wait_handled(e);
    /* the same id again: the log keeps one; handed again to the group: its inbox skips it */
    logged_in(e, ada, id);
    ew_event *ev;
    assert_int_equal(count_events(e, "user.logged_in", ada, &ev), 1);
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(bus(e), SVC_UNDER_TEST, NULL, ev, 0, &err), 0);
    ew_event_unref(ev);
    wait_handled(e);
    usleep(50000);
    char *s = stats(e);
    assert_int_equal(jnum(s, "counters/logins"), 1);
    assert_int_equal(jnum(s, "totals/user.logged_in"), 1);
    free(s);
    assert_int_equal(db_count(e,
                              "SELECT total FROM event_store.analytics_user_events"
                              " WHERE user_id = $1 AND event_type = 'user.logged_in'",
                              ada),
                     1);
    down(e);
}

static void consent(env *e, const char *user_id, const char *purpose, bool granted)
{
    ew_user_consent_changed d = {.user_id = user_id, .purpose = purpose, .granted = granted};
    publish(e, EW_T_USER_CONSENT_CHANGED, &d, user_id, NULL);
}

/* A user who withdrew consent for analytics is not counted — their rows go, their events are
 * not added — and /stats says how many did; consent given again counts them again. Consent for
 * another purpose changes nothing here. */
static void test_withdrawn_consent_is_honoured(void **state)
{
    env *e = start(NULL);
    char ada[EW_UUID_LEN + 1], bob[EW_UUID_LEN + 1];
    ew_uuid7(ada);
    ew_uuid7(bob);
    registered(e, ada, "ada");
    registered(e, bob, "bob");
    logged_in(e, ada, NULL);
    consent(e, bob, "marketing", false); /* not analytics' purpose */
    wait_handled(e);
    const char *rows = "SELECT count(*) FROM event_store.analytics_user_events WHERE user_id = $1";
    assert_true(db_count(e, rows, ada) >= 2); /* registered, logged in */

    consent(e, ada, "analytics", false);
    wait_handled(e);
    assert_int_equal(db_count(e, rows, ada), 0);
    assert_int_equal(
        db_count(e, "SELECT count(*) FROM event_store.analytics_users WHERE user_id = $1", ada), 0);
    logged_in(e, ada, NULL); /* counted as an event, not as ada's */
    logged_in(e, bob, NULL);
    wait_handled(e);
    assert_int_equal(db_count(e, rows, ada), 0);
    assert_true(db_count(e, rows, bob) >= 2);
    char *s = stats(e);
    assert_int_equal(jnum(s, "counters/users_opted_out"), 1);
    assert_int_equal(jnum(s, "counters/users"), 1);
    assert_int_equal(jnum(s, "counters/logins"), 3);
    free(s);

    consent(e, ada, "analytics", true);
    wait_handled(e);
    logged_in(e, ada, NULL);
    wait_handled(e);
    assert_int_equal(
        db_count(e,
                 "SELECT total FROM event_store.analytics_user_events WHERE user_id = $1"
                 " AND event_type = 'user.logged_in'",
                 ada),
        1);
    s = stats(e);
    assert_int_equal(jnum(s, "counters/users_opted_out"), 0);
    free(s);
    down(e);
}

static void test_gdpr_export_and_deletion(void **state)
{
    env *e = start(NULL);
    char ada[EW_UUID_LEN + 1], nobody[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1],
        request_id[EW_UUID_LEN + 1];
    ew_uuid7(ada);
    ew_uuid7(nobody);
    registered(e, ada, "ada");
    logged_in(e, ada, NULL);
    ew_event_unref(wait_event(e, "analytics.user_tracked", ada, 1));
    wait_handled(e);

    ew_uuid7(export_id);
    ew_user_data_export_requested rq = {.export_id = export_id, .user_id = ada};
    publish(e, EW_T_USER_DATA_EXPORT_REQUESTED, &rq, ada, NULL);
    ew_event *ev = wait_event(e, "user.data_collected", ada, 1);
    const ew_user_data_collected *c = ew_user_data_collected_data(ev);
    assert_string_equal(c->service, "analytics-service");
    assert_string_equal(c->export_id, export_id);
    assert_non_null(strstr(c->data, "\"registered_at\":\""));
    assert_non_null(strstr(c->data, "{\"event_type\":\"user.logged_in\",\"count\":1,"));
    ew_event_unref(ev);
    rq.user_id = nobody;
    publish(e, EW_T_USER_DATA_EXPORT_REQUESTED, &rq, nobody, NULL);
    ev = wait_event(e, "user.data_collected", nobody, 1);
    assert_string_equal(ew_user_data_collected_data(ev)->data, "{}");
    ew_event_unref(ev);
    wait_handled(e);

    /* deletion: ada's rows go: the user, and her registered and logged_in rows (the export's
     * events are not her activity) */
    long rows =
        db_count(e,
                 "SELECT count(*) FROM event_store.analytics_user_events"
                 " WHERE user_id = $1",
                 ada) +
        db_count(e, "SELECT count(*) FROM event_store.analytics_users WHERE user_id = $1", ada);
    assert_int_equal(rows, 3);
    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = ada};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, ada, NULL);
    ev = wait_event(e, "user.data_deleted", ada, 1);
    const ew_user_data_deleted *dd = ew_user_data_deleted_data(ev);
    assert_string_equal(dd->service, "analytics-service");
    assert_string_equal(dd->request_id, request_id);
    assert_int_equal(dd->records, 3);
    ew_event_unref(ev);
    /* events still arriving about her are counted, but not as hers */
    logged_in(e, ada, NULL);
    wait_handled(e);
    usleep(50000);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.analytics_user_events"
                              " WHERE user_id = $1",
                              ada),
                     0);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.analytics_users"
                              " WHERE user_id = $1",
                              ada),
                     0);
    /* the erasure is remembered by a hash, never the id */
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.analytics_erased", NULL), 1);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.analytics_erased"
                              " WHERE user_hash LIKE '%' || $1 || '%'",
                              ada),
                     0);
    char path[128];
    snprintf(path, sizeof path, "/stats/users/%s", ada);
    expect(e, "GET", path, NULL, 404, "user_id", "holds nothing");
    char *s = stats(e);
    assert_int_equal(jnum(s, "counters/logins"), 2);
    assert_int_equal(jnum(s, "counters/deletions_requested"), 1);
    assert_int_equal(jnum(s, "counters/users"), 0);
    free(s);
    down(e);
}

static void test_bad_requests(void **state)
{
    env *e = start(NULL);
    expect(e, "GET", "/stats/users/xyz", NULL, 400, "user_id", "UUID");
    expect(e, "GET", "/stats/users/0190a6b2-9a5e-7c3d-8e4f-0123456789ab", NULL, 404, "user_id",
           NULL);
    http_result r = api(e, "POST", "/stats", "{}", NULL);
    assert_int_equal(r.status, 405);
    http_result_free(&r);
    /* an empty service answers zeros */
    char *s = stats(e);
    assert_int_equal(jnum(s, "events"), 0);
    assert_int_equal(jnum(s, "counters/registrations"), 0);
    assert_non_null(strstr(s, "\"totals\":{}"));
    free(s);
    down(e);
}

static void test_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *extra[] = {db, NULL};
    env *e = start(extra);
    char ada[EW_UUID_LEN + 1], id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1];
    ew_uuid7(ada);
    ew_uuid7(id);
    registered(e, ada, "ada");
    logged_in(e, ada, id);
    logged_in(e, ada, NULL);
    usleep(2000);
    logged_out(e, ada);
    ew_event_unref(wait_event(e, "analytics.user_tracked", ada, 1));
    wait_handled(e);
    ew_event *ev;
    assert_int_equal(count_events(e, "user.logged_in", ada, NULL), 2);
    assert_int_equal(count_events(e, "user.registered", ada, &ev), 1);
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(bus(e), SVC_UNDER_TEST, NULL, ev, 0, &err), 0);
    ew_event_unref(ev);
    wait_handled(e);
    char *s = stats(e);
    assert_int_equal(jnum(s, "counters/registrations"), 1);
    assert_int_equal(jnum(s, "counters/logins"), 2);
    assert_int_equal(jnum(s, "counters/users"), 1);
    assert_int_equal(jnum(s, "counters/active_users"), 1);
    assert_int_equal(jnum(s, "counters/logged_in_users"), 0);
    free(s);
    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = ada};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, ada, NULL);
    ev = wait_event(e, "user.data_deleted", ada, 1);
    assert_int_equal(ew_user_data_deleted_data(ev)->records, 4);
    ew_event_unref(ev);
    char path[128];
    snprintf(path, sizeof path, "/stats/users/%s", ada);
    expect(e, "GET", path, NULL, 404, "user_id", NULL);
    down(e);
    ew_test_pg_drop(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_counts_events_and_serves_stats, reap),
    cmocka_unit_test_teardown(test_a_redelivered_event_is_counted_once, reap),
    cmocka_unit_test_teardown(test_withdrawn_consent_is_honoured, reap),
    cmocka_unit_test_teardown(test_gdpr_export_and_deletion, reap),
    cmocka_unit_test_teardown(test_bad_requests, reap),
    cmocka_unit_test_teardown(test_on_postgresql, reap),
};

EW_TEST_MAIN(tests)
