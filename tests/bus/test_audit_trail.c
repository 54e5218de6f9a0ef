/* ENABLE_EVENT_STORE: every event a bus publishes is recorded in the event store, whatever the
 * backend (here the memory bus, recording into a SQLite store). */
#include <stdlib.h>
#include "bus/bus_test_util.h"
#include "eventwire/store.h"

typedef struct got {
    int n;
    char ids[16][EW_UUID_LEN + 1];
    char streams[16][EW_UUID_LEN + 1];
} got;

static int collect(void *ud, const ew_stored_event *se)
{
    got *g = ud;
    if (g->n < 16) {
        snprintf(g->ids[g->n], sizeof g->ids[0], "%s", ew_event_id(se->event));
        snprintf(g->streams[g->n], sizeof g->streams[0], "%s", se->stream_id);
    }
    g->n++;
    return 0;
}

static void test_published_events_are_recorded(void **state)
{
    char dir[] = "/tmp/ew-audit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[128];
    snprintf(url, sizeof url, "sqlite:%s/audit.db", dir);
    ew_bus *bus = tb_open_with(NULL, "ENABLE_EVENT_STORE", "true", "EVENT_STORE_URL", url,
                               (const char *)NULL);
    atomic_int handled = 0;
    tb_subscribe(bus, "#", tb_count, &handled, NULL);
    tb_start(bus);
    ew_event *evs[3] = {tb_user_registered(), tb_user_registered(),
                        tb_event(EW_T_USER_LOGGED_OUT, "subject-1")};
    for (int i = 0; i < 3; i++) {
        ew_error err = {0};
        if (ew_bus_publish(bus, evs[i], &err)) fail_msg("%s", err.msg);
    }
    /* the same event again: recorded once */
    assert_int_equal(ew_bus_publish(bus, evs[0], NULL), 0);
    /* a batch is recorded as one, in order, with the ids already stored skipped */
    ew_event *more[3] = {tb_user_registered(), evs[1], tb_event(EW_T_USER_LOGGED_OUT, "subject-1")};
    assert_int_equal(ew_bus_publish_batch(bus, (const ew_event *const *)more, 3, NULL), 0);
    tb_wait(bus);
    tb_close(bus);
    assert_int_equal(atomic_load(&handled), 7);

    ew_store *st;
    ew_error err = {0};
    if (ew_store_open(&st, &(ew_store_options){.url = url}, &err)) fail_msg("%s", err.msg);
    got g = {0};
    assert_int_equal(ew_store_read_all(st, 0, NULL, 0, collect, &g, &err), 0);
    assert_int_equal(g.n, 5);
    for (int i = 0; i < 3; i++)
        assert_string_equal(g.ids[i], ew_event_id(evs[i]));
    assert_string_equal(g.ids[3], ew_event_id(more[0]));
    assert_string_equal(g.ids[4], ew_event_id(more[2]));
    /* the stream is the subject */
    assert_string_equal(g.streams[2], "subject-1");
    assert_string_equal(g.streams[4], "subject-1");
    ew_event_unref(more[0]);
    ew_event_unref(more[2]);
    assert_string_equal(g.streams[0], ew_event_subject(evs[0]));
    ew_store_close(st);
    for (int i = 0; i < 3; i++)
        ew_event_unref(evs[i]);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_unusable_store_fails_open(void **state)
{
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, NULL), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", NULL), 0);
    assert_int_equal(ew_config_set(cfg, "ENABLE_EVENT_STORE", "true", NULL), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_STORE_URL", "mysql://nope", NULL), 0);
    ew_bus *bus = NULL;
    ew_error err = {0};
    assert_int_equal(ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err), EW_ECONFIG);
    assert_null(bus);
    ew_config_free(cfg);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_published_events_are_recorded),
    cmocka_unit_test(test_unusable_store_fails_open),
};

EW_TEST_MAIN(tests)
