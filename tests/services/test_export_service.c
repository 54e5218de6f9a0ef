/* Tests of export-service as a process (set-up: services/svc_env.h): the test asks for exports over
 * HTTP (or with an event), plays the other services by publishing their user.data_collected
 * answers, and checks the events the service published, the status and download endpoints, the
 * document in EXPORT_DIR, the deadline, the link's expiry, and deletion. One case keeps the
 * service's database in PostgreSQL.
 * ew-fixture: postgres */
#include <sys/stat.h>
#include "support/ew_test.h"
#define SVC_UNDER_TEST "export-service"
#include "services/svc_env.h"
#include "core/json.h"
#include "eventwire/id.h"

/* The service with its documents in DIR/exports, fast retries and a fast relay, plus extra. */
static env *start(const char *const *extra)
{
    return up_fast("EXPORT_DIR", "exports", NULL, extra);
}

/* Plays `service` answering export_id. */
static void answer(env *e, const char *export_id, const char *user_id, const char *service,
                   const char *data)
{
    ew_user_data_collected c = {
        .export_id = export_id, .user_id = user_id, .service = service, .data = data};
    publish(e, EW_T_USER_DATA_COLLECTED, &c, user_id, NULL);
}

/* POST /exports for user_id; export_id gets the id. */
static void request_export(env *e, const char *user_id, char *export_id)
{
    char body[128];
    snprintf(body, sizeof body, "{\"user_id\":\"%s\"}", user_id);
    http_result r = api(e, "POST", "/exports", body, NULL);
    if (r.status != 202) fail_msg("POST /exports: %ld %s", r.status, r.body);
    const char *id = http_member(&r, "export_id");
    if (!id) fail_msg("POST /exports: no export_id in %s", r.body);
    snprintf(export_id, EW_UUID_LEN + 1, "%.36s", id ? id : "");
    assert_true(ew_uuid_valid(export_id));
    assert_string_equal(http_member(&r, "status"), "pending");
    char loc[128], want[128];
    snprintf(want, sizeof want, "/exports/%s", export_id);
    assert_string_equal(http_header_value(&r, "Location", loc, sizeof loc), want);
    http_result_free(&r);
}

/* The value at path ('/' between members) of the JSON text, as text (strings unquoted, other
 * values compact JSON), into a static buffer; NULL when absent. */
static const char *jget(const char *json, const char *path)
{
    static char out[4096];
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *j;
    const char *res = NULL;
    if (ew_json_parse(&j, json, strlen(json), NULL, &a, NULL) == 0) {
        const ew_json *m = j;
        char key[128];
        for (const char *p = path; m && *p;) {
            size_t l = strcspn(p, "/");
            snprintf(key, sizeof key, "%.*s", (int)l, p);
            if (m->kind == EW_JSON_ARRAY) {
                long i = atol(key);
                for (m = m->child; m && i > 0; i--)
                    m = m->next;
            } else {
                m = ew_json_get(m, key);
            }
            p += l + (p[l] == '/');
        }
        if (m && m->kind == EW_JSON_STRING) {
            snprintf(out, sizeof out, "%s", m->str);
            res = out;
        } else if (m) {
            ew_buf b;
            ew_buf_init(&b);
            ew_json_write(&b, m);
            snprintf(out, sizeof out, "%s", b.data ? b.data : "");
            ew_buf_release(&b);
            res = out;
        }
    }
    ew_arena_release(&a);
    return res;
}

/* GET prefix + id + suffix. */
static http_result get3(env *e, const char *prefix, const char *id, const char *suffix)
{
    char path[256];
    snprintf(path, sizeof path, "%s%s%s", prefix, id, suffix);
    return api(e, "GET", path, NULL, NULL);
}

/* GET of a download link (its path from /exports/ on: EXPORT_PUBLIC_URL may name another host),
 * with the case's admin token. */
static http_result fetch(env *e, const char *url)
{
    const char *path = strstr(url, "/exports/");
    if (!path) fail_msg("not a download link: %s", url);
    return api(e, "GET", path, NULL, NULL);
}

/* The download of a completed export, through the link its status shows. */
static http_result download(env *e, const char *export_id)
{
    http_result r = get3(e, "/exports/", export_id, "");
    const char *url = http_member(&r, "download_url");
    if (r.status != 200 || !url) fail_msg("no download link: %ld %s", r.status, r.body);
    char link[512];
    snprintf(link, sizeof link, "%.500s", url);
    http_result_free(&r);
    return fetch(e, link);
}

/* Is url the link of export_id at base, with a key of 256 bits? */
static void link_is(const char *url, const char *base, const char *export_id)
{
    char want[512];
    snprintf(want, sizeof want, "%s/exports/%s/download?key=", base, export_id);
    if (strncmp(url, want, strlen(want)) || strlen(url + strlen(want)) != 43)
        fail_msg("%s is not %s<43 characters>", url, want);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Waits until GET /exports/{id} lists service among those that answered. */
static void wait_answered(env *e, const char *export_id, const char *service)
{
    char quoted[80];
    snprintf(quoted, sizeof quoted, "\"%s\"", service);
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    for (;;) {
        http_result r = get3(e, "/exports/", export_id, "");
        const char *a = r.status == 200 ? http_member(&r, "services_answered") : NULL;
        bool done = a && strstr(a, quoted);
        http_result_free(&r);
        if (done) return;
        if (ew_mono_ns() > deadline) fail_msg("%s did not answer %s in 10 s", service, export_id);
        usleep(20000);
    }
}

/* ---- cases ----------------------------------------------------------------------------------- */

static void test_export_completes_when_every_service_answered(void **state)
{
    env *e = start(NULL); /* USER_DATA_SERVICES: the five services */
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    request_export(e, user_id, export_id);

    /* the request went out through the outbox, and export-service answered for itself */
    ew_event *ev = wait_event(e, "user.data_export_requested", user_id, 1);
    assert_string_equal(ew_user_data_export_requested_data(ev)->export_id, export_id);
    assert_string_equal(ew_event_source(ev), "export-service");
    ew_event_unref(ev);
    ev = wait_event(e, "user.data_collected", user_id, 1);
    assert_string_equal(ew_user_data_collected_data(ev)->service, "export-service");
    ew_event_unref(ev);

    /* two of the others answer (one twice, and once for an export that does not exist) */
    answer(e, export_id, user_id, "auth-service", "{\"username\":\"ada\",\"roles\":[\"user\"]}");
    answer(e, export_id, user_id, "auth-service", "{\"username\":\"someone else\"}");
    answer(e, export_id, user_id, "user-service", "{\"profile\":{\"display_name\":\"Ada\"}}");
    char stray[EW_UUID_LEN + 1];
    ew_uuid7(stray);
    answer(e, stray, user_id, "analytics-service", "{}");
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    http_result r;
    for (;;) {
        r = get3(e, "/exports/", export_id, "");
        assert_int_equal(r.status, 200);
        if (!strcmp(http_member(&r, "services_answered"),
                    "[\"auth-service\",\"export-service\",\"user-service\"]"))
            break;
        if (ew_mono_ns() > deadline) fail_msg("answers not recorded: %s", r.body);
        http_result_free(&r);
        usleep(20000);
    }
    assert_string_equal(http_member(&r, "status"), "pending");
    assert_string_equal(http_member(&r, "user_id"), user_id);
    assert_string_equal(http_member(&r, "services_missing"),
                        "[\"notification-service\",\"analytics-service\"]");
    assert_null(http_member(&r, "download_url"));
    http_result_free(&r);
    r = get3(e, "/exports/", export_id, "/download");
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(http_member(&r, "error"), "not ready"));
    http_result_free(&r);

    /* the last two */
    answer(e, export_id, user_id, "notification-service", "{\"address\":null,\"messages\":[]}");
    answer(e, export_id, user_id, "analytics-service", "{}");
    ev = wait_event(e, "user.data_export_completed", user_id, 1);
    const ew_user_data_export_completed *c = ew_user_data_export_completed_data(ev);
    char url[256];
    link_is(c->download_url, e->p.base, export_id);
    snprintf(url, sizeof url, "%s", c->download_url);
    assert_string_equal(c->export_id, export_id);
    static const char *const all[] = {"analytics-service", "auth-service", "export-service",
                                      "notification-service", "user-service"};
    strlist_is(c->services, all, 5);
    int64_t expires;
    assert_int_equal(ew_time_parse(c->expires_at, &expires), 0);
    assert_true(expires > ew_now_us() + 86000LL * 1000000); /* EXPORT_LINK_TTL_SECONDS 86400 */
    ew_event_unref(ev);

    r = get3(e, "/exports/", export_id, "");
    assert_string_equal(http_member(&r, "status"), "completed");
    assert_string_equal(http_member(&r, "download_url"), url);
    assert_string_equal(http_member(&r, "expired"), "false");
    assert_string_equal(http_member(&r, "services_missing"), "[]");
    http_result_free(&r);

    /* the document */
    http_result d = fetch(e, url);
    assert_int_equal(d.status, 200);
    assert_string_equal(jget(d.body, "export_id"), export_id);
    assert_string_equal(jget(d.body, "user_id"), user_id);
    assert_non_null(jget(d.body, "created_at"));
    assert_string_equal(jget(d.body, "services/auth-service/username"), "ada"); /* the first */
    assert_string_equal(jget(d.body, "services/user-service/profile/display_name"), "Ada");
    assert_string_equal(jget(d.body, "services/analytics-service"), "{}");
    assert_string_equal(jget(d.body, "services/export-service/exports/0/export_id"), export_id);
    char hdr[200];
    assert_non_null(http_header_value(&d, "Content-Disposition", hdr, sizeof hdr));
    char path[512];
    snprintf(path, sizeof path, "%s/exports/%s.json", e->dir, export_id);
    assert_true(exists(path));
    http_result_free(&d);
    /* the answers' copies are kept in the document only */
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.export_answers"
                              " WHERE export_id = $1 AND data <> '{}'",
                              export_id),
                     0);

    /* a late answer changes nothing */
    answer(e, export_id, user_id, "auth-service", "{\"late\":true}");
    usleep(200000);
    assert_int_equal(count_events(e, "user.data_export_completed", user_id, NULL), 1);
    d = fetch(e, url);
    assert_null(strstr(d.body, "late"));
    http_result_free(&d);

    /* the owner or an admin, with the link's key; anyone else finds nothing */
    char owner[SVC_TOKEN_MAX + 1], other[SVC_TOKEN_MAX + 1];
    mint(e, user_id, false, owner);
    mint(e, NULL, false, other);
    const char *link = strstr(url, "/exports/");
    struct {
        const char *path, *bearer;
        long status;
    } who[] = {
        {link, owner, 200},    {link, other, 404},
        {link, NO_TOKEN, 401}, {link, "eyJhbGciOiJub25lIn0.e30.", 401},
        {path, owner, 404},
    };
    snprintf(path, sizeof path, "/exports/%s/download?key=%s", export_id,
             "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for (size_t i = 0; i < sizeof who / sizeof who[0]; i++) {
        d = api(e, "GET", who[i].path, NULL, who[i].bearer);
        if (d.status != who[i].status)
            fail_msg("GET %s as #%zu: want %ld, got %ld %s", who[i].path, i, who[i].status,
                     d.status, d.body);
        http_result_free(&d);
    }
    snprintf(path, sizeof path, "/exports/%s", export_id);
    d = api(e, "GET", path, NULL, other);
    assert_int_equal(d.status, 404);
    http_result_free(&d);
    snprintf(path, sizeof path, "/exports?user_id=%s", user_id);
    d = api(e, "GET", path, NULL, other);
    assert_int_equal(d.status, 403);
    http_result_free(&d);
    d = api(e, "GET", path, NULL, owner);
    assert_int_equal(d.status, 200);
    http_result_free(&d);

    /* the user's exports */
    r = get3(e, "/exports?user_id=", user_id, "");
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(r.body, "exports/0/export_id"), export_id);
    assert_string_equal(jget(r.body, "exports/0/status"), "completed");
    http_result_free(&r);
    down(e);
}

static void test_export_fails_when_a_service_stays_silent(void **state)
{
    const char *extra[] = {"EXPORT_TIMEOUT_SECONDS=1",
                           "USER_DATA_SERVICES=export-service,analytics-service,user-service",
                           NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    request_export(e, user_id, export_id);
    answer(e, export_id, user_id, "analytics-service", "{}");
    ew_event *ev = wait_event(e, "user.data_export_failed", user_id, 1);
    const ew_user_data_export_failed *f = ew_user_data_export_failed_data(ev);
    assert_string_equal(f->export_id, export_id);
    static const char *const missing[] = {"user-service"};
    strlist_is(f->missing, missing, 1);
    assert_non_null(strstr(f->reason, "user-service"));
    /* correlated with the request */
    ew_event *rq;
    assert_int_equal(count_events(e, "user.data_export_requested", user_id, &rq), 1);
    assert_string_equal(ew_event_correlation_id(ev), ew_event_id(rq));
    ew_event_unref(rq);
    ew_event_unref(ev);

    http_result r = get3(e, "/exports/", export_id, "");
    assert_int_equal(r.status, 200);
    assert_string_equal(http_member(&r, "status"), "failed");
    assert_string_equal(http_member(&r, "services_missing"), "[\"user-service\"]");
    assert_non_null(strstr(http_member(&r, "reason"), "user-service"));
    http_result_free(&r);
    r = get3(e, "/exports/", export_id, "/download");
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(http_member(&r, "error"), "failed"));
    http_result_free(&r);
    /* an answer after the failure changes nothing */
    answer(e, export_id, user_id, "user-service", "{}");
    usleep(200000);
    assert_int_equal(count_events(e, "user.data_export_completed", user_id, NULL), 0);
    assert_int_equal(count_events(e, "user.data_export_failed", user_id, NULL), 1);
    down(e);
}

static void test_link_expires(void **state)
{
    const char *extra[] = {"USER_DATA_SERVICES=export-service", "EXPORT_LINK_TTL_SECONDS=1", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    request_export(e, user_id, export_id);
    /* export-service's own answer is the only one expected */
    ew_event *ev = wait_event(e, "user.data_export_completed", user_id, 1);
    char url[256];
    snprintf(url, sizeof url, "%s", ew_user_data_export_completed_data(ev)->download_url);
    ew_event_unref(ev);
    http_result d = fetch(e, url);
    assert_int_equal(d.status, 200);
    http_result_free(&d);
    char path[512];
    snprintf(path, sizeof path, "%s/exports/%s.json", e->dir, export_id);
    int64_t deadline = ew_mono_ns() + 10000000000LL;
    while (exists(path) && ew_mono_ns() < deadline)
        usleep(50000);
    assert_false(exists(path)); /* the sweeper deleted it */
    d = fetch(e, url);
    assert_int_equal(d.status, 410);
    assert_non_null(strstr(http_member(&d, "error"), "expired"));
    http_result_free(&d);
    http_result r = get3(e, "/exports/", export_id, "");
    assert_string_equal(http_member(&r, "expired"), "true");
    http_result_free(&r);
    down(e);
}

static void test_export_requested_by_an_event_and_public_url(void **state)
{
    const char *extra[] = {"USER_DATA_SERVICES=export-service,auth-service",
                           "EXPORT_PUBLIC_URL=https://exports.example.com/gdpr/", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], export_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(export_id);
    ew_user_data_export_requested rq = {
        .export_id = export_id, .user_id = user_id, .requested_by = "user-service"};
    publish(e, EW_T_USER_DATA_EXPORT_REQUESTED, &rq, user_id, NULL);
    ew_event_unref(wait_event(e, "user.data_collected", user_id, 1));
    answer(e, export_id, user_id, "auth-service", "{\"username\":\"grace\"}");
    ew_event *ev = wait_event(e, "user.data_export_completed", user_id, 1);
    link_is(ew_user_data_export_completed_data(ev)->download_url,
            "https://exports.example.com/gdpr", export_id);
    ew_event_unref(ev);
    http_result r = get3(e, "/exports/", export_id, "");
    assert_string_equal(http_member(&r, "requested_by"), "user-service");
    http_result_free(&r);
    r = download(e, export_id);
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(r.body, "services/auth-service/username"), "grace");
    http_result_free(&r);
    down(e);
}

static void test_deletion_removes_exports_and_documents(void **state)
{
    const char *extra[] = {"USER_DATA_SERVICES=export-service,auth-service", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], done_id[EW_UUID_LEN + 1], pending_id[EW_UUID_LEN + 1],
        other[EW_UUID_LEN + 1], other_id[EW_UUID_LEN + 1], request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    ew_uuid7(other);
    request_export(e, user_id, done_id);
    ew_event_unref(wait_event(e, "user.data_collected", user_id, 1));
    answer(e, done_id, user_id, "auth-service", "{\"username\":\"ada\"}");
    ew_event_unref(wait_event(e, "user.data_export_completed", user_id, 1));
    request_export(e, user_id, pending_id);
    request_export(e, other, other_id);
    wait_answered(e, pending_id, "export-service");
    wait_answered(e, other_id, "export-service");
    char path[512];
    snprintf(path, sizeof path, "%s/exports/%s.json", e->dir, done_id);
    assert_true(exists(path));

    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = user_id};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, user_id, NULL);
    ew_event *ev = wait_event(e, "user.data_deleted", user_id, 1);
    const ew_user_data_deleted *dd = ew_user_data_deleted_data(ev);
    assert_string_equal(dd->service, "export-service");
    assert_string_equal(dd->request_id, request_id);
    assert_int_equal(dd->records, 2 + 3); /* two exports; answers: two to one, one to the other */
    ew_event_unref(ev);
    assert_false(exists(path));
    http_result r = get3(e, "/exports/", done_id, "");
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    r = get3(e, "/exports?user_id=", user_id, "");
    assert_string_equal(http_member(&r, "exports"), "[]");
    http_result_free(&r);
    assert_int_equal(db_count(e,
                              "SELECT count(*) FROM event_store.export_requests"
                              " WHERE user_id = $1",
                              user_id),
                     0);
    /* the other user's export is untouched */
    r = get3(e, "/exports/", other_id, "");
    assert_int_equal(r.status, 200);
    http_result_free(&r);
    down(e);
}

static void test_bad_input(void **state)
{
    env *e = start(NULL);
    expect(e, "POST", "/exports", "{\"user_id\":", 400, NULL, NULL);
    expect(e, "POST", "/exports", "[]", 400, NULL, NULL);
    expect(e, "POST", "/exports", "{}", 400, "user_id", "required");
    expect(e, "POST", "/exports", "{\"user_id\":\"abc\"}", 400, "user_id", "UUID");
    expect(e, "POST", "/exports", "{\"user_id\":42}", 400, "user_id", "string");
    expect(e, "POST", "/exports",
           "{\"user_id\":\"0190a6b2-9a5e-7c3d-8e4f-0123456789ab\",\"format\":\"xml\"}", 400,
           "format", "unknown");
    expect(e, "GET", "/exports/nope", NULL, 400, "export_id", "UUID");
    expect(e, "GET", "/exports/0190a6b2-9a5e-7c3d-8e4f-0123456789ab", NULL, 404, "export_id",
           "no export");
    expect(e, "GET", "/exports/0190a6b2-9a5e-7c3d-8e4f-0123456789ab/download", NULL, 404,
           "export_id", "no export");
    expect(e, "GET", "/exports", NULL, 200, NULL, NULL); /* the caller's own: none */
    expect(e, "GET", "/exports?user_id=x", NULL, 400, "user_id", "UUID");
    /* nothing was half-written */
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.export_requests", NULL), 0);
    assert_int_equal(db_count(e, "SELECT count(*) FROM event_store.outbox", NULL), 0);
    down(e);

    const char *bad[] = {"USER_DATA_SERVICES=auth-service,,user-service", NULL};
    char *out = start_fails(NULL, bad);
    assert_non_null(strstr(out, "USER_DATA_SERVICES"));
    free(out);
}

static void test_on_postgresql(void **state)
{
    char db[600];
    char *url = pg_service_db(db);
    const char *extra[] = {db, "USER_DATA_SERVICES=export-service,auth-service",
                           "EXPORT_TIMEOUT_SECONDS=1", NULL};
    env *e = start(extra);
    char user_id[EW_UUID_LEN + 1], done_id[EW_UUID_LEN + 1], silent_id[EW_UUID_LEN + 1],
        request_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    request_export(e, user_id, done_id);
    answer(e, done_id, user_id, "auth-service", "{\"username\":\"pg\"}");
    ew_event_unref(wait_event(e, "user.data_export_completed", user_id, 1));
    http_result r = download(e, done_id);
    assert_int_equal(r.status, 200);
    assert_string_equal(jget(r.body, "services/auth-service/username"), "pg");
    http_result_free(&r);
    /* the sweeper, on a PostgreSQL handle of its own */
    request_export(e, user_id, silent_id);
    ew_event *ev = wait_event(e, "user.data_export_failed", user_id, 1);
    static const char *const missing[] = {"auth-service"};
    strlist_is(ew_user_data_export_failed_data(ev)->missing, missing, 1);
    ew_event_unref(ev);
    ew_uuid7(request_id);
    ew_user_deletion_requested dr = {.request_id = request_id, .user_id = user_id};
    publish(e, EW_T_USER_DELETION_REQUESTED, &dr, user_id, NULL);
    ev = wait_event(e, "user.data_deleted", user_id, 1);
    assert_int_equal(ew_user_data_deleted_data(ev)->records, 2 + 3);
    ew_event_unref(ev);
    r = get3(e, "/exports/", done_id, "");
    assert_int_equal(r.status, 404);
    http_result_free(&r);
    down(e);
    ew_test_pg_drop(url);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_export_completes_when_every_service_answered, reap),
    cmocka_unit_test_teardown(test_export_fails_when_a_service_stays_silent, reap),
    cmocka_unit_test_teardown(test_link_expires, reap),
    cmocka_unit_test_teardown(test_export_requested_by_an_event_and_public_url, reap),
    cmocka_unit_test_teardown(test_deletion_removes_exports_and_documents, reap),
    cmocka_unit_test_teardown(test_bad_input, reap),
    cmocka_unit_test_teardown(test_on_postgresql, reap),
};

EW_TEST_MAIN(tests)
