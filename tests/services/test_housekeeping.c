/* The service runtime's housekeeping (services/common/keeper.c) as a service runs: published
 * outbox rows, expired events and old dead letters disappear without an operator's command,
 * with the interval and the outbox retention shortened for the test. */
#include <unistd.h>
#include "support/ew_test.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#define SVC_UNDER_TEST "user-service"
#include "services/svc_env.h"

static long events_count(env *e, const char *sql)
{
    ew_txn *t;
    ew_error err = {0};
    long n = -1;
    assert_int_equal(ew_store_begin(e->events, &t, &err), 0);
    if (ew_txn_query(t, sql, NULL, 0, first_value, &n, &err)) fail_msg("%s: %s", sql, err.msg);
    ew_txn_rollback(t);
    return n;
}

static void test_retention_runs_by_itself(void **state)
{
    static const char *const own[] = {"HOUSEKEEPING_INTERVAL_MS=100", "OUTBOX_RETENTION_SECONDS=1",
                                      NULL};
    env *e = up_fast(NULL, NULL, own, NULL);
    char user_id[EW_UUID_LEN + 1];
    ew_uuid7(user_id);
    static const char *const roles[] = {"user"};
    ew_user_registered d = {
        .user_id = user_id, .email = "k@example.com", .username = "k", .roles = {roles, 1}};
    publish(e, EW_T_USER_REGISTERED, &d, user_id, NULL);
    ew_event_unref(wait_event(e, "user.profile_created", user_id, 1));

    /* an event that expired long ago, and a dead letter older than DEAD_LETTER_RETENTION_DAYS */
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(e->events, &t, &err), 0);
    const char *p[] = {user_id};
    int64_t changed = 0;
    assert_int_equal(ew_txn_exec(t,
                                 "UPDATE event_store.events SET expires_at ="
                                 " '2020-01-01T00:00:00.000000Z' WHERE stream_id = $1"
                                 " AND event_type = 'user.registered'",
                                 p, 1, &changed, &err),
                     0);
    assert_int_equal(changed, 1);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    ew_dlq_sink sink = ew_store_dlq_sink(e->events);
    int64_t long_ago = ew_now_us() - 40LL * 86400 * 1000000;
    ew_dead_letter dl = {.payload = "{}",
                         .payload_len = 2,
                         .event_type = "user.registered",
                         .group = "user-service",
                         .handler = "h",
                         .error = "old",
                         .attempts = 1,
                         .first_failed_us = long_ago,
                         .last_failed_us = long_ago};
    assert_int_equal(sink.ops->put(sink.self, &dl, &err), 0);
    /* the relay marks its row sent just after the store has the event: a moment to see it */
    long sent = 0;
    for (int i = 0; i < 100 && sent < 1; i++) {
        sent =
            db_count(e, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NOT NULL", NULL);
        if (sent < 1) usleep(10000);
    }
    assert_true(sent >= 1);

    long outbox = -1, expired = -1, letters = -1;
    for (int i = 0; i < 200; i++) {
        outbox = db_count(e, "SELECT count(*) FROM event_store.outbox", NULL);
        expired = events_count(e, "SELECT count(*) FROM event_store.events WHERE expires_at <"
                                  " '2021-01-01T00:00:00.000000Z'");
        letters = events_count(e, "SELECT count(*) FROM event_store.dead_letter_queue");
        if (outbox == 0 && expired == 0 && letters == 0) break;
        usleep(50000);
    }
    if (outbox || expired || letters)
        fail_msg("after 10 s: %ld outbox rows, %ld expired events, %ld dead letters", outbox,
                 expired, letters);
    /* what was not due stays: the profile is still there */
    assert_int_equal(events_count(e, "SELECT count(*) FROM event_store.events WHERE event_type ="
                                     " 'user.profile_created'"),
                     1);
    down(e);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_teardown(test_retention_runs_by_itself, reap),
};

EW_TEST_MAIN(tests)
