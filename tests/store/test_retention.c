/* Tests of retention in the store, on SQLite and PostgreSQL: published outbox rows and dead
 * letters older than a time go a batch at a time; newer ones and unsent rows stay.
 * ew-fixture: postgres */
#include <stdio.h>
#include <string.h>
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "store/store_env.h"

static int first_int(void *ud, const ew_row *row)
{
    *(long *)ud = row->ncols && row->values[0] ? atol(row->values[0]) : -1;
    return 0;
}

static long count(env *e, const char *sql)
{
    ew_txn *t;
    ew_error err = {0};
    long n = -1;
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    if (ew_txn_query(t, sql, NULL, 0, first_int, &n, &err)) fail_msg("%s: %s", sql, err.msg);
    ew_txn_rollback(t);
    return n;
}

static ew_event *an_event(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "r@example.com", .username = "r", .roles = {roles, 1}};
    ew_event *ev;
    assert_int_equal(
        ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "t", .subject = id}, NULL), 0);
    return ev;
}

static int publish_ok(void *ud, const ew_event *const *evs, size_t n, ew_error *err)
{
    return 0;
}

static void sent_outbox_rows_are_pruned(env *e)
{
    ew_error err = {0};
    /* 5 published, then 2 written and not published */
    for (int round = 0; round < 2; round++) {
        ew_txn *t;
        assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
        for (int i = 0; i < (round ? 2 : 5); i++) {
            ew_event *ev = an_event();
            assert_int_equal(ew_outbox_add(t, ev, &err), 0);
            ew_event_unref(ev);
        }
        assert_int_equal(ew_txn_commit(t, &err), 0);
        size_t sent = 0;
        if (!round) {
            assert_int_equal(ew_store_outbox_relay(e->s, 0, publish_ok, NULL, &sent, &err), 0);
            assert_int_equal(sent, 5);
        }
    }
    size_t n = 1;
    /* published before an hour ago: none */
    assert_int_equal(ew_store_outbox_prune(e->s, ew_now_us() - 3600000000LL, 0, &n, &err), 0);
    assert_int_equal(n, 0);
    /* before now: the 5 published, in batches of 2 */
    size_t total = 0;
    do {
        assert_int_equal(ew_store_outbox_prune(e->s, ew_now_us() + 1000000, 2, &n, &err), 0);
        assert_true(n <= 2);
        total += n;
    } while (n == 2);
    assert_int_equal(total, 5);
    assert_int_equal(count(e, "SELECT count(*) FROM event_store.outbox"), 2);
    assert_int_equal(count(e, "SELECT count(*) FROM event_store.outbox WHERE sent_at IS NULL"), 2);
}
BOTH(sent_outbox_rows_are_pruned)

static void old_dead_letters_are_purged(env *e)
{
    ew_dlq_sink sink = ew_store_dlq_sink(e->s);
    ew_error err = {0};
    int64_t now = ew_now_us(), long_ago = now - 40LL * 86400 * 1000000;
    for (int i = 0; i < 4; i++) {
        ew_event *ev = an_event();
        int64_t when = i < 3 ? long_ago : now;
        ew_dead_letter dl = {.event = ev,
                             .event_id = ew_event_id(ev),
                             .event_type = ew_event_type(ev),
                             .group = "g",
                             .handler = "h",
                             .error = "boom",
                             .attempts = 1,
                             .first_failed_us = when,
                             .last_failed_us = when};
        assert_int_equal(sink.ops->put(sink.self, &dl, &err), 0);
        ew_event_unref(ev);
    }
    size_t n = 0;
    assert_int_equal(ew_store_dlq_purge(e->s, now - 30LL * 86400 * 1000000, 0, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(count(e, "SELECT count(*) FROM event_store.dead_letter_queue"), 1);
}
BOTH(old_dead_letters_are_purged)

static const struct CMUnitTest tests[] = {
    CASES(sent_outbox_rows_are_pruned),
    CASES(old_dead_letters_are_purged),
};

EW_TEST_MAIN(tests)
