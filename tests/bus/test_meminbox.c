/* Tests of the memory inbox: begin/commit per (handler, event id), keys that must not collide,
 * growth past many entries, and commits from many threads. */
#include <stdlib.h>
#include "bus_test_util.h"

static int begin(ew_inbox ib, const char *handler, const char *id)
{
    void *txn = &ib;
    int rc = ib.ops->begin(ib.self, handler, id, &txn, NULL);
    assert_null(txn);
    return rc;
}

static int commit(ew_inbox ib, const char *handler, const char *id)
{
    return ib.ops->commit(ib.self, handler, id, NULL, NULL);
}

static void test_begin_commit(void **state)
{
    ew_meminbox *m;
    assert_int_equal(ew_meminbox_new(&m, NULL), 0);
    ew_inbox ib = ew_meminbox_inbox(m);
    assert_int_equal(ib.ops->version, 1);
    assert_int_equal(begin(ib, "g/h", "id-1"), 0);
    ib.ops->rollback(ib.self, NULL); /* nothing to undo */
    assert_int_equal(begin(ib, "g/h", "id-1"), 0);
    assert_int_equal(commit(ib, "g/h", "id-1"), 0);
    assert_int_equal(begin(ib, "g/h", "id-1"), 1);
    assert_int_equal(begin(ib, "g/other", "id-1"), 0); /* per handler */
    assert_int_equal(begin(ib, "g/h", "id-2"), 0);
    assert_int_equal(commit(ib, "g/h", "id-1"), 0); /* again: still one */
    assert_int_equal(ew_meminbox_count(m), 1);
    ew_meminbox_free(m);
    ew_meminbox_free(NULL);
}

static void test_keys_do_not_collide(void **state)
{
    ew_meminbox *m;
    assert_int_equal(ew_meminbox_new(&m, NULL), 0);
    ew_inbox ib = ew_meminbox_inbox(m);
    assert_int_equal(commit(ib, "ab", "c"), 0);
    assert_int_equal(begin(ib, "a", "bc"), 0);
    assert_int_equal(begin(ib, "abc", ""), 0);
    char longh[600];
    memset(longh, 'h', sizeof longh - 1);
    longh[sizeof longh - 1] = '\0';
    assert_int_equal(begin(ib, longh, "id"), 0);
    assert_int_equal(commit(ib, longh, "id"), 0);
    assert_int_equal(begin(ib, longh, "id"), 1);
    longh[300] = 'x';
    assert_int_equal(begin(ib, longh, "id"), 0);
    ew_meminbox_free(m);
}

static void test_many_entries(void **state)
{
    ew_meminbox *m;
    assert_int_equal(ew_meminbox_new(&m, NULL), 0);
    ew_inbox ib = ew_meminbox_inbox(m);
    enum { N = 20000 };
    char(*ids)[EW_UUID_LEN + 1] = malloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) {
        ew_uuid7(ids[i]);
        assert_int_equal(commit(ib, "svc/h", ids[i]), 0);
    }
    assert_int_equal(ew_meminbox_count(m), N);
    for (int i = 0; i < N; i++)
        assert_int_equal(begin(ib, "svc/h", ids[i]), 1);
    char fresh[EW_UUID_LEN + 1];
    ew_uuid7(fresh);
    assert_int_equal(begin(ib, "svc/h", fresh), 0);
    free(ids);
    ew_meminbox_free(m);
}

#define THREADS 4
#define PER_THREAD 2000

static void *committer(void *arg)
{
    ew_inbox *ib = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        if (ib->ops->commit(ib->self, "g/h", id, NULL, NULL)) return arg;
        if (ib->ops->commit(ib->self, "g/shared", "same", NULL, NULL)) return arg;
    }
    return NULL;
}

static void test_concurrent_commits(void **state)
{
    ew_meminbox *m;
    assert_int_equal(ew_meminbox_new(&m, NULL), 0);
    ew_inbox ib = ew_meminbox_inbox(m);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, committer, &ib), 0);
    for (int i = 0; i < THREADS; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(ew_meminbox_count(m), THREADS * PER_THREAD + 1);
    ew_meminbox_free(m);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_begin_commit),
    cmocka_unit_test(test_keys_do_not_collide),
    cmocka_unit_test(test_many_entries),
    cmocka_unit_test(test_concurrent_commits),
};

EW_TEST_MAIN(tests)
