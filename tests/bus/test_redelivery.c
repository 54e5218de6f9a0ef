/* Redeliveries (ew_bus_redeliver, ew_bus_replay): an event handed back to one group or handler,
 * the dead letter it came from marked resolved when the handler then handles it. Memory bus, with
 * the store's dead letter queue on an in-memory SQLite store. The same path through a durable
 * bus and another process is tested by ewctl's tests (dlq retry, store replay). */
#include "bus/bus_test_util.h"
#include "eventwire/store.h"

typedef struct fixture {
    ew_store *st;
    ew_bus *bus;
} fixture;

/* A handler that fails (for good) while *fail is set and counts what it handles. */
typedef struct flaky {
    atomic_int fail;
    atomic_int handled;
} flaky;

static ew_handler_result flaky_handle(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    flaky *f = ud;
    if (atomic_load(&f->fail)) {
        ew_ctx_set_error(ctx, "the profile database is down");
        return EW_HANDLER_FAIL;
    }
    atomic_fetch_add(&f->handled, 1);
    return EW_HANDLER_OK;
}

static void open_fixture(fixture *fx)
{
    ew_error err = {0};
    if (ew_store_open(&fx->st, &(ew_store_options){.url = "sqlite::memory:"}, &err))
        fail_msg("%s", err.msg);
    ew_bus_options o = {.dlq = ew_store_dlq_sink(fx->st)};
    fx->bus = tb_open(&o);
}

static void close_fixture(fixture *fx)
{
    tb_close(fx->bus);
    ew_store_close(fx->st);
}

static int keep_row(void *ud, const ew_dlq_row *r)
{
    ew_dlq_row *out = ud;
    if (out->id == 0) {
        *out = *r;
        out->event_id = strdup(r->event_id ? r->event_id : "");
        out->event_name = strdup(r->event_name ? r->event_name : "");
        out->handler = strdup(r->handler);
        out->subscriber_group = strdup(r->subscriber_group);
        out->event = strdup(r->event);
        out->error = strdup(r->error);
    }
    return 0;
}

/* The newest dead letter of handler (there must be one). */
static ew_dlq_row newest(ew_store *st, const char *handler)
{
    ew_dlq_row r = {0};
    ew_error err = {0};
    ew_dlq_filter f = {.handler = handler, .status = -1};
    assert_int_equal(ew_store_dlq_list(st, &f, keep_row, &r, &err), 0);
    if (r.id == 0) fail_msg("no dead letter for %s", handler);
    return r;
}

static ew_dlq_status status_of(ew_store *st, int64_t id)
{
    ew_dlq_row r;
    ew_error err = {0};
    assert_int_equal(ew_store_dlq_get(st, id, &r, &err), 0);
    ew_dlq_status s = r.status;
    ew_dlq_row_release(&r);
    return s;
}

static void test_retried_dead_letter_is_resolved_when_handled(void **state)
{
    fixture fx;
    open_fixture(&fx);
    flaky f = {.fail = 1};
    ew_subscribe_opts so = {.group = "user-service", .name = "create-profile", .max_attempts = 1};
    tb_subscribe(fx.bus, "user.registered", flaky_handle, &f, &so);
    tb_start(fx.bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(fx.bus, ev, &err), 0);
    tb_wait(fx.bus);
    ew_dlq_row r = newest(fx.st, "create-profile");
    assert_string_equal(r.event_id, ew_event_id(ev));
    assert_int_equal(r.status, EW_DLQ_PENDING);

    /* Retried while the cause persists: it fails again and is pending again. */
    assert_int_equal(ew_store_dlq_set_status(fx.st, r.id, EW_DLQ_RETRIED, &err), 0);
    assert_int_equal(ew_bus_redeliver(fx.bus, "user-service", "create-profile", ev, r.id, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&f.handled), 0);
    assert_int_equal(status_of(fx.st, r.id), EW_DLQ_PENDING);

    /* Retried after the cause is gone: handled once, and resolved. */
    atomic_store(&f.fail, 0);
    assert_int_equal(ew_store_dlq_set_status(fx.st, r.id, EW_DLQ_RETRIED, &err), 0);
    assert_int_equal(ew_bus_redeliver(fx.bus, "user-service", "create-profile", ev, r.id, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&f.handled), 1);
    assert_int_equal(status_of(fx.st, r.id), EW_DLQ_RESOLVED);
    ew_dlq_row_release(&r);
    ew_event_unref(ev);
    close_fixture(&fx);
}

static void test_redelivery_reaches_only_its_group_and_handler(void **state)
{
    fixture fx;
    open_fixture(&fx);
    atomic_int a = 0, b = 0, other = 0;
    tb_subscribe(fx.bus, "user.registered", tb_count, &a,
                 &(ew_subscribe_opts){.group = "g1", .name = "a"});
    tb_subscribe(fx.bus, "user.*", tb_count, &b, &(ew_subscribe_opts){.group = "g1", .name = "b"});
    tb_subscribe(fx.bus, "#", tb_count, &other, &(ew_subscribe_opts){.group = "g2"});
    tb_start(fx.bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(fx.bus, "g1", "b", ev, 0, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&a), 0);
    assert_int_equal(atomic_load(&b), 1);
    assert_int_equal(atomic_load(&other), 0); /* not even as an eventwire.redelivery */
    /* To the whole group: every handler of g1 whose pattern matches. */
    const ew_event *evs[] = {ev};
    assert_int_equal(ew_bus_replay(fx.bus, "g1", evs, 1, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&a), 1);
    assert_int_equal(atomic_load(&b), 2);
    assert_int_equal(atomic_load(&other), 0);
    /* A group this process does not have: nothing happens here. */
    assert_int_equal(ew_bus_redeliver(fx.bus, "g3", NULL, ev, 0, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&a) + atomic_load(&b) + atomic_load(&other), 3);
    /* Names that no subscription could have are refused at once. */
    assert_int_equal(ew_bus_redeliver(fx.bus, "bad group!", NULL, ev, 0, &err), EW_EINVAL);
    assert_int_equal(ew_bus_redeliver(fx.bus, NULL, NULL, ev, 0, &err), EW_EINVAL);
    ew_event_unref(ev);
    close_fixture(&fx);
}

static void test_replay_skips_types_the_group_does_not_take(void **state)
{
    fixture fx;
    open_fixture(&fx);
    atomic_int n = 0;
    tb_subscribe(fx.bus, "user.registered", tb_count, &n, &(ew_subscribe_opts){.group = "g"});
    tb_start(fx.bus);
    ew_event *evs[3] = {tb_user_registered(), tb_event(EW_T_USER_LOGGED_IN, NULL),
                        tb_user_registered()};
    ew_error err = {0};
    assert_int_equal(ew_bus_replay(fx.bus, "g", (const ew_event *const *)evs, 3, &err), 0);
    tb_wait(fx.bus);
    assert_int_equal(atomic_load(&n), 2);
    ew_dlq_row none = {0};
    ew_dlq_filter all = {.status = -1};
    assert_int_equal(ew_store_dlq_list(fx.st, &all, keep_row, &none, &err), 0);
    assert_int_equal(none.id, 0); /* the type g does not take is skipped, not dead-lettered */
    for (int i = 0; i < 3; i++)
        ew_event_unref(evs[i]);
    close_fixture(&fx);
}

static void test_redelivery_to_a_missing_handler_is_dead_lettered(void **state)
{
    fixture fx;
    open_fixture(&fx);
    atomic_int n = 0;
    tb_subscribe(fx.bus, "user.registered", tb_count, &n,
                 &(ew_subscribe_opts){.group = "g", .name = "h"});
    tb_start(fx.bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_redeliver(fx.bus, "g", "gone", ev, 0, &err), 0);
    tb_wait(fx.bus);
    ew_dlq_row r = newest(fx.st, "gone");
    assert_string_equal(r.event_id, ew_event_id(ev));
    assert_string_equal(r.subscriber_group, "g");
    assert_non_null(strstr(r.error, "no handler gone in group g"));
    ew_dlq_row_release(&r);
    /* A handler that does not take the type. */
    ew_event *other = tb_event(EW_T_USER_LOGGED_IN, NULL);
    assert_int_equal(ew_bus_redeliver(fx.bus, "g", "h", other, 0, &err), 0);
    tb_wait(fx.bus);
    r = newest(fx.st, "h");
    assert_string_equal(r.event_id, ew_event_id(other));
    assert_non_null(strstr(r.error, "does not take user.logged_in"));
    ew_dlq_row_release(&r);
    assert_int_equal(atomic_load(&n), 0);
    ew_event_unref(other);
    ew_event_unref(ev);
    close_fixture(&fx);
}

static void test_undecodable_redelivery_is_dead_lettered(void **state)
{
    fixture fx;
    open_fixture(&fx);
    atomic_int n = 0;
    tb_subscribe(fx.bus, "#", tb_count, &n, &(ew_subscribe_opts){.group = "g", .name = "h"});
    tb_start(fx.bus);
    /* A foreign producer's redelivery whose event is not a CloudEvent. */
    ew_bus_redelivery d = {.group = "g", .handler = "h", .event = "{\"hello\":\"world\"}"};
    ew_event *rd;
    ew_error err = {0};
    assert_int_equal(ew_bus_redelivery_new(&rd, &d, &(ew_event_attrs){.source = "x"}, &err), 0);
    assert_int_equal(ew_bus_publish(fx.bus, rd, &err), 0);
    tb_wait(fx.bus);
    ew_dlq_row r = newest(fx.st, "h");
    assert_non_null(strstr(r.error, "does not decode"));
    assert_string_equal(r.event, "{\"hello\":\"world\"}");
    ew_dlq_row_release(&r);
    assert_int_equal(atomic_load(&n), 0);
    ew_event_unref(rd);
    close_fixture(&fx);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_retried_dead_letter_is_resolved_when_handled),
    cmocka_unit_test(test_redelivery_reaches_only_its_group_and_handler),
    cmocka_unit_test(test_replay_skips_types_the_group_does_not_take),
    cmocka_unit_test(test_redelivery_to_a_missing_handler_is_dead_lettered),
    cmocka_unit_test(test_undecodable_redelivery_is_dead_lettered),
};

EW_TEST_MAIN(tests)
