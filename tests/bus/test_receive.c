/* Tests of the receive path (src/bus/receive.c) on its own: an event decoded and handed back,
 * a message that cannot be decoded or is too large dead-lettered once with its bytes, where it
 * came from and the reason, a result the transport decoded itself, and a dead letter sink that
 * refuses: tried again with back-off until the backend stops. The conformance suite holds every
 * backend to the same through the brokers. */
#include <stdlib.h>
#include "bus/receive.h"
#include "bus_test_util.h"
#include "eventwire/clock.h"

/* A sink that refuses every put and counts them. */
typedef struct refusing {
    atomic_int puts;
    atomic_int stop_asked;
    int stop_after; /* stop() says so once asked this many times */
} refusing;

static int refuse_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    (void)dl;
    atomic_fetch_add(&((refusing *)self)->puts, 1);
    return ew_error_set(err, EW_EIO, "the dead letter database is down");
}

static bool stop_later(void *ud)
{
    refusing *r = ud;
    return atomic_fetch_add(&r->stop_asked, 1) + 1 >= r->stop_after;
}

static ew__recv_msg msg(const char *body, size_t len, const char *transport)
{
    return (ew__recv_msg){
        .wire = {.binding = EW__BINDING_STRUCTURED, .body = body, .body_len = len},
        .group = "g1",
        .type_hint = "user.registered",
        .transport = transport,
    };
}

static void test_an_event_is_handed_back(void **state)
{
    ew_bus *bus = tb_open(NULL);
    ew_event *ev = tb_user_registered();
    char *json;
    size_t n;
    assert_int_equal(ew_event_encode(ev, &json, &n, NULL), 0);
    ew__recv_msg m = msg(json, n, "test position=1");
    ew_event *got = NULL;
    assert_int_equal(ew__receive(bus, &m, 1 << 20, NULL, NULL, &got), EW__RECV_EVENT);
    assert_non_null(got);
    assert_string_equal(ew_event_id(got), ew_event_id(ev));
    assert_int_equal(ew_memdlq_count(ew_bus_dead_letters(bus)), 0);
    ew_event_unref(got);
    free(json);
    ew_event_unref(ev);
    tb_close(bus);
}

static void test_undecodable_and_too_large_are_dead_lettered(void **state)
{
    ew_bus *bus = tb_open(NULL);
    const char *garbage = "{\"id\":\"x-1\",\"type\":\"user.registered\",\"data\":";
    ew__recv_msg m = msg(garbage, strlen(garbage), "test stream=s entry=1-0");
    m.id_hint = "mid-1"; /* an AMQP message-id, say */
    ew_event *got = NULL;
    assert_int_equal(ew__receive(bus, &m, 1 << 20, NULL, NULL, &got), EW__RECV_DEAD);
    assert_null(got);
    char big[2048];
    memset(big, 'x', sizeof big);
    ew__recv_msg b = msg(big, sizeof big, "test stream=s entry=2-0");
    b.id_hint = "big-1";
    assert_int_equal(ew__receive(bus, &b, 1024, NULL, NULL, &got), EW__RECV_DEAD);

    ew_memdlq *q = ew_bus_dead_letters(bus);
    assert_int_equal(ew_memdlq_count(q), 2);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_null(e.event);
    assert_int_equal(e.payload_len, strlen(garbage));
    assert_memory_equal(e.payload, garbage, strlen(garbage));
    assert_string_equal(e.group, "g1");
    assert_string_equal(e.handler, "<decode>");
    assert_string_equal(e.event_type, "user.registered");
    assert_string_equal(e.event_id, "mid-1"); /* the JSON is cut short: the transport's id */
    assert_string_equal(e.transport, "test stream=s entry=1-0");
    assert_non_null(strstr(e.error, "EW_EJSON: "));
    assert_int_equal(e.attempts, 1);
    ew_memdlq_entry_release(&e);
    assert_int_equal(ew_memdlq_get(q, 1, &e), 0);
    assert_int_equal(e.payload_len, sizeof big);
    assert_string_equal(e.event_id, "big-1");
    assert_non_null(strstr(e.error, "EW_ETOOBIG: "));
    assert_string_equal(e.transport, "test stream=s entry=2-0");
    ew_memdlq_entry_release(&e);
    tb_close(bus);
}

/* The SQLite bus's store decodes as it reads: its result goes through as it is. */
static void test_a_transport_may_decode_itself(void **state)
{
    ew_bus *bus = tb_open(NULL);
    ew_event *ev = tb_user_registered();
    ew__recv_msg m = msg("", 0, "sqlite position=3");
    m.predecoded = true;
    m.event = ev;
    ew_event *got = NULL;
    assert_int_equal(ew__receive(bus, &m, 0, NULL, NULL, &got), EW__RECV_EVENT);
    assert_ptr_equal(got, ev); /* a reference of its own */
    ew_event_unref(got);
    ew__recv_msg bad = msg("{\"id\":\"r-1\"}", 12, "sqlite position=4");
    bad.predecoded = true;
    bad.error = EW_EDATA;
    bad.error_msg = "event at position 4: data.user_id must be a string";
    assert_int_equal(ew__receive(bus, &bad, 0, NULL, NULL, &got), EW__RECV_DEAD);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(ew_bus_dead_letters(bus), 0, &e), 0);
    assert_string_equal(e.event_id, "r-1");
    assert_string_equal(e.error, "EW_EDATA: event at position 4: data.user_id must be a string");
    ew_memdlq_entry_release(&e);
    ew_event_unref(ev);
    tb_close(bus);
}

/* A refusing sink: tried again with back-off, never given up on by the receive path itself;
 * only the backend's stop ends it, and then the message is not settled. */
static void test_a_refusing_sink_is_retried_until_stop(void **state)
{
    static const ew_dlq_sink_ops ops = {.version = 1, .put = refuse_put};
    refusing r = {.stop_after = 12}; /* asked every 50 ms at most: about half a second */
    ew_bus *bus = tb_open(&(ew_bus_options){.dlq = {&ops, &r}});
    ew__recv_msg m = msg("nope", 4, "test queue=q delivery-tag=1");
    ew_event *got = NULL;
    int64_t t0 = ew_mono_ns();
    assert_int_equal(ew__receive(bus, &m, 1 << 20, stop_later, &r, &got), EW__RECV_STOPPED);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    assert_null(got);
    /* 50, 100, 200 ms ... with ±25 %: a handful of attempts, not a busy loop */
    assert_true(atomic_load(&r.puts) >= 3);
    assert_true(atomic_load(&r.puts) <= 6);
    assert_true(ms >= 300);
    tb_close(bus);
}

/* The memory bus passes objects: the hook points see them, and today let them all through. */
static void test_the_memory_bus_passes_the_hook_points(void **state)
{
    ew_bus *bus = tb_open(NULL);
    ew_event *ev = tb_user_registered(), *repl = NULL;
    ew_error err = {0};
    assert_int_equal(ew__recv_accept(bus, ev, &repl, &err), 0);
    assert_null(repl);
    atomic_int n = 0;
    tb_subscribe(bus, "user.registered", tb_count, &n, NULL);
    tb_start(bus);
    tb_publish_owned(bus, ev);
    tb_wait(bus);
    assert_int_equal(atomic_load(&n), 1);
    tb_close(bus);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_an_event_is_handed_back),
    cmocka_unit_test(test_undecodable_and_too_large_are_dead_lettered),
    cmocka_unit_test(test_a_transport_may_decode_itself),
    cmocka_unit_test(test_a_refusing_sink_is_retried_until_stop),
    cmocka_unit_test(test_the_memory_bus_passes_the_hook_points),
};

EW_TEST_MAIN(tests)
