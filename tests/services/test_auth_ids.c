/* Tests of auth-service's new user ids (services/auth-service/user_ids.c): each comes with its
 * data key durable in the key store, so that the registration's transaction commits nothing to
 * the key store; under a burst the keys are made in batches (few commits for many ids), and an
 * id is never handed out long after it was made. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include "auth.h"
#include "security/keyring.h"
#include "store/handle.h"
#include "support/ew_test.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/id.h"
#include "eventwire/store.h"

typedef struct fx {
    char dir[64];
    ew_config *cfg;
    ew_store *st;
    auth_ids *ids;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-auth-ids-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char url[128];
    snprintf(url, sizeof url, "sqlite:%s/auth.db", f->dir);
    ew_error err = {0};
    assert_int_equal(ew_config_new(&f->cfg, &err), 0);
    assert_int_equal(ew_config_set(f->cfg, "EVENT_STORE_URL", url, &err), 0);
    if (ew_store_open(&f->st, &(ew_store_options){.config = f->cfg}, &err)) fail_msg("%s", err.msg);
    assert_non_null(ew__store_keyring(f->st)); /* encryption is on by default */
    assert_int_equal(ew__keyring_load(ew__store_keyring(f->st), &err), 0);
    assert_non_null(f->ids = auth_ids_new());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    auth_ids_free(f->ids);
    ew_store_close(f->st);
    ew_config_free(f->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Commits of the key store's SQLite file: its change counter (header bytes 24-27). */
static unsigned key_commits(fx *f)
{
    unsigned char h[28];
    int fd = open(ew__keyring_store_name(ew__store_keyring(f->st)), O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, h, sizeof h, 0), (ssize_t)sizeof h);
    close(fd);
    return (unsigned)h[24] << 24 | (unsigned)h[25] << 16 | (unsigned)h[26] << 8 | h[27];
}

static size_t live_keys(fx *f)
{
    size_t live = 0, erased = 0;
    ew_error err = {0};
    assert_int_equal(ew__keyring_count(ew__store_keyring(f->st), &live, &erased, &err), 0);
    return live;
}

/* An id comes with its key: the registration's events are sealed in the transaction without a
 * commit of the key store. */
static void test_an_id_comes_with_its_key(void **state)
{
    fx *f = *state;
    char id[EW_UUID_LEN + 1];
    ew_error err = {0};
    assert_int_equal(auth_ids_take(f->ids, f->st, id, &err), 0);
    assert_int_equal(strlen(id), EW_UUID_LEN);
    assert_true(live_keys(f) >= 1);
    unsigned before = key_commits(f);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "ida@example.com", .username = "ida", .roles = {roles, 1}};
    ew_event *ev;
    assert_int_equal(ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "t"}, &err), 0);
    ew_txn *t;
    assert_int_equal(ew_store_begin(f->st, &t, &err), 0);
    assert_int_equal(ew_outbox_add(t, ev, &err), 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    ew_event_unref(ev);
    assert_int_equal(key_commits(f), before);
}

/* A burst of ids makes their keys in batches: far fewer commits than ids, every id distinct and
 * with its key. */
static void test_a_burst_makes_keys_in_batches(void **state)
{
    enum { N = 1000 };
    fx *f = *state;
    static char ids[N][EW_UUID_LEN + 1];
    ew_error err = {0};
    unsigned before = key_commits(f);
    for (int i = 0; i < N; i++)
        assert_int_equal(auth_ids_take(f->ids, f->st, ids[i], &err), 0);
    unsigned commits = key_commits(f) - before;
    print_message("%d ids, %u commits of the key store\n", N, commits);
    assert_true(commits < N / 4);
    assert_true(live_keys(f) >= N);
    for (int i = 1; i < N; i++)
        assert_true(strcmp(ids[i - 1], ids[i]) < 0); /* UUIDv7, in the order they were made */
}

/* An id kept in the batch for longer than a second is not handed out: the next is made then. */
static void test_a_stale_id_is_not_handed_out(void **state)
{
    fx *f = *state;
    char id[EW_UUID_LEN + 1];
    ew_error err = {0};
    for (int i = 0; i < 500; i++) /* a burst: the batches grow */
        assert_int_equal(auth_ids_take(f->ids, f->st, id, &err), 0);
    usleep(1200000);
    int64_t after_us = ew_now_us();
    assert_int_equal(auth_ids_take(f->ids, f->st, id, &err), 0);
    /* a UUIDv7 starts with its creation time in ms: 12 hex digits over its first 13 chars */
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    int64_t made_ms = strtoll(hex, NULL, 16);
    assert_true(made_ms >= after_us / 1000 - 1);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_an_id_comes_with_its_key, setup, teardown),
    cmocka_unit_test_setup_teardown(test_a_burst_makes_keys_in_batches, setup, teardown),
    cmocka_unit_test_setup_teardown(test_a_stale_id_is_not_handed_out, setup, teardown),
};

EW_TEST_MAIN(tests)
