/* Tests of the memory dead letter sink: copies in and out, order and seq numbers, taking
 * entries out, undecodable messages, and puts from many threads. */
#include <stdlib.h>
#include "bus_test_util.h"

static int put(ew_memdlq *q, const ew_dead_letter *dl)
{
    ew_dlq_sink s = ew_memdlq_sink(q);
    assert_int_equal(s.ops->version, 1);
    return s.ops->put(s.self, dl, NULL);
}

static void test_put_keeps_its_own_copy(void **state)
{
    ew_memdlq *q;
    assert_int_equal(ew_memdlq_new(&q, NULL), 0);
    ew_event *ev = tb_user_registered();
    char group[] = "billing", handler[] = "charge", error[] = "card declined";
    ew_dead_letter dl = {.event = ev,
                         .group = group,
                         .handler = handler,
                         .error = error,
                         .attempts = 3,
                         .first_failed_us = 10,
                         .last_failed_us = 20};
    assert_int_equal(put(q, &dl), 0);
    group[0] = handler[0] = error[0] = 'X'; /* the caller's buffers change afterwards */
    ew_event_unref(ev);                     /* and the caller lets go of the event */

    assert_int_equal(ew_memdlq_count(q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_int_equal(e.seq, 1);
    assert_string_equal(e.group, "billing");
    assert_string_equal(e.handler, "charge");
    assert_string_equal(e.error, "card declined");
    assert_string_equal(e.event_type, "user.registered"); /* taken from the event */
    assert_string_equal(e.event_id, ew_event_id(e.event));
    assert_int_equal(e.attempts, 3);
    assert_int_equal(e.first_failed_us, 10);
    assert_int_equal(e.last_failed_us, 20);
    assert_null(e.payload);
    ew_memdlq_entry_release(&e);
    assert_null(e.event);
    assert_int_equal(ew_memdlq_get(q, 1, &e), EW_ENOTFOUND);
    ew_memdlq_free(q);
}

static void test_undecodable_payload(void **state)
{
    ew_memdlq *q;
    assert_int_equal(ew_memdlq_new(&q, NULL), 0);
    const char raw[] = {'{', '"', 'x', 0, 'y'}; /* with a NUL inside */
    ew_dead_letter dl = {.payload = raw,
                         .payload_len = sizeof raw,
                         .group = "g",
                         .handler = "h",
                         .error = "malformed JSON",
                         .attempts = 1};
    assert_int_equal(put(q, &dl), 0);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_null(e.event);
    assert_null(e.event_id);
    assert_int_equal(e.payload_len, sizeof raw);
    assert_memory_equal(e.payload, raw, sizeof raw);
    ew_memdlq_entry_release(&e);
    ew_memdlq_free(q);
}

static void test_take_by_seq(void **state)
{
    ew_memdlq *q;
    assert_int_equal(ew_memdlq_new(&q, NULL), 0);
    for (int i = 0; i < 5; i++) {
        char err[16];
        snprintf(err, sizeof err, "e%d", i);
        ew_dead_letter dl = {.event_id = "id", .group = "g", .handler = "h", .error = err};
        assert_int_equal(put(q, &dl), 0);
    }
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_take(q, 3, &e), 0);
    assert_int_equal(e.seq, 3);
    assert_string_equal(e.error, "e2");
    ew_memdlq_entry_release(&e);
    assert_int_equal(ew_memdlq_take(q, 3, &e), EW_ENOTFOUND);
    assert_int_equal(ew_memdlq_take(q, 1, NULL), 0);
    assert_int_equal(ew_memdlq_take(q, 99, NULL), EW_ENOTFOUND);
    assert_int_equal(ew_memdlq_count(q), 3);
    uint64_t want[] = {2, 4, 5};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(ew_memdlq_get(q, i, &e), 0);
        assert_int_equal(e.seq, want[i]);
        ew_memdlq_entry_release(&e);
    }
    /* seq numbers are never reused */
    ew_dead_letter dl = {.group = "g", .handler = "h", .error = "later"};
    assert_int_equal(put(q, &dl), 0);
    assert_int_equal(ew_memdlq_get(q, 3, &e), 0);
    assert_int_equal(e.seq, 6);
    ew_memdlq_entry_release(&e);
    ew_memdlq_free(q);
}

#define THREADS 4
#define PER_THREAD 500

static void *putter(void *arg)
{
    ew_memdlq *q = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        ew_dead_letter dl = {.group = "g", .handler = "h", .error = "x", .attempts = i};
        if (put(q, &dl)) return arg;
    }
    return NULL;
}

static void test_concurrent_puts(void **state)
{
    ew_memdlq *q;
    assert_int_equal(ew_memdlq_new(&q, NULL), 0);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, putter, q), 0);
    for (int i = 0; i < THREADS; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(ew_memdlq_count(q), THREADS * PER_THREAD);
    for (size_t i = 0; i < THREADS * PER_THREAD; i++) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(q, i, &e), 0);
        assert_int_equal(e.seq, i + 1);
        ew_memdlq_entry_release(&e);
    }
    ew_memdlq_free(q);
    ew_memdlq_free(NULL);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_put_keeps_its_own_copy),
    cmocka_unit_test(test_undecodable_payload),
    cmocka_unit_test(test_take_by_seq),
    cmocka_unit_test(test_concurrent_puts),
};

EW_TEST_MAIN(tests)
