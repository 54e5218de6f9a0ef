/* The bus conformance suite against the SQLite backend. Each test's namespace is a database file
 * of its own, $TMPDIR/ew-cf-sqlite-UID/NS.db, named from the namespace alone so that the
 * consumer processes a case forks find the same file; the files go when the process exits.
 * There is no broker to restart: cf_broker_restart skips. */
#ifdef EW_HAVE_SQLITE_BUS
#include <sqlite3.h>
#include "bus/conformance.h"

/* ---- the namespace's file -------------------------------------------------------------------- */

static char cf_paths[16][256];
static int cf_npaths;
static pid_t cf_owner; /* the process that cleans up: forked consumers leave the files alone */

static void cf_cleanup(void)
{
    if (getpid() != cf_owner) return;
    static const char *const tails[] = {"", "-wal", "-shm"};
    for (int i = 0; i < cf_npaths; i++) {
        for (int k = 0; k < 3; k++) {
            char p[4200];
            snprintf(p, sizeof p, "%s%s", cf_paths[i], tails[k]);
            unlink(p);
        }
    }
}

static void cf_path(const char *ns, char *out, size_t n)
{
    const char *tmp = getenv("TMPDIR");
    char dir[200];
    snprintf(dir, sizeof dir, "%s/ew-cf-sqlite-%ld", tmp && *tmp ? tmp : "/tmp", (long)getuid());
    mkdir(dir, 0700);
    snprintf(out, n, "%s/%s.db", dir, ns);
}

static int sqlite_configure(ew_config *cfg, const char *ns)
{
    char path[256], url[300];
    cf_path(ns, path, sizeof path);
    if (!cf_owner) {
        cf_owner = getpid();
        atexit(cf_cleanup);
    }
    if (getpid() == cf_owner && cf_npaths < 16) {
        bool known = false;
        for (int i = 0; i < cf_npaths; i++)
            known = known || strcmp(cf_paths[i], path) == 0;
        if (!known) snprintf(cf_paths[cf_npaths++], sizeof cf_paths[0], "%s", path);
    }
    snprintf(url, sizeof url, "sqlite:%s", path);
    ew_error err = {0};
    if (ew_config_set(cfg, "EVENT_STORE_URL", url, &err)) fail_msg("%s", err.msg);
    return 0;
}

/* ---- a foreign writer ----------------------------------------------------------------------- */

/* Inserts a row into event_store.events as someone with SQL would, at the next position: the
 * bytes split into metadata and data where the store would split a CloudEvent (at its first
 * ,"data":), or all in metadata with data null when they are not one. */
static int sqlite_inject(const char *ns, const char *type, const void *bytes, size_t n)
{
    char path[256];
    cf_path(ns, path, sizeof path);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 10000);
    const char *s = bytes;
    size_t meta_len = n, data_off = n;
    const char *d = memmem(s, n, ",\"data\":", 8);
    if (d && n >= 2 && s[n - 1] == '}') {
        meta_len = (size_t)(d - s);
        data_off = meta_len + 8;
    }
    char *meta = malloc(meta_len + 2);
    memcpy(meta, s, meta_len);
    size_t ml = meta_len;
    if (data_off < n) meta[ml++] = '}';
    char id[EW_UUID_LEN + 1], now[EW_TIME_LEN + 1];
    ew_uuid7(id);
    ew_time_format(ew_now_us(), now);
    const char *sql =
        "INSERT INTO events (position, event_id, stream_id, version, event_type, event_version, "
        "data, metadata, recorded_at) VALUES ("
        "max(coalesce((SELECT max(position) FROM events), 0), "
        "    (SELECT position FROM positions WHERE id = 1)) + 1, "
        "?1, 'injected', coalesce((SELECT max(version) FROM events WHERE stream_id = "
        "'injected'), 0) + 1, ?2, 1, ?3, ?4, ?5)";
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
        if (data_off < n)
            sqlite3_bind_text(st, 3, s + data_off, (int)(n - 1 - data_off), SQLITE_STATIC);
        else
            sqlite3_bind_text(st, 3, "null", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, meta, (int)ml, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    if (rc != SQLITE_OK) print_error("inject: %s\n", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(meta);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Rows of the type past the group's position in event_store.bus_groups. */
static long sqlite_unsettled(const char *ns, const char *group, const char *type)
{
    char path[256];
    cf_path(ns, path, sizeof path);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    long n = -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM events WHERE event_type = ?1 AND position > "
                           "(SELECT position FROM bus_groups WHERE group_name = ?2)",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, group, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) n = (long)sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static const cf_backend sqlite_backend = {
    .name = "sqlite",
    .configure = sqlite_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = true,
    .restart_broker = NULL, /* no broker */
    .inject_raw = sqlite_inject,
    .unsettled = sqlite_unsettled,
};

static const cf_backend *cf_be(void)
{
    return &sqlite_backend;
}

/* ---- what replaces cf_inbox_absorbs_redelivery ---------------------------------------------- */

/* The suite's case publishes one event twice and expects the inbox to skip the second delivery.
 * Here the log itself keeps an id once (ew__store_record skips it), so a second publish delivers
 * nothing and the handler sees the event once without the inbox's help. A real redelivery — the
 * group's position moved back, as after a consumer died before writing it — is what the inbox
 * absorbs: both cases here. */
static int64_t cf_count_rows(const char *ns, const char *sql)
{
    char path[256];
    cf_path(ns, path, sizeof path);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void sqlite_inbox_absorbs_redelivery(void **state)
{
    cf_ns ns = cf_new_ns("inb");
    ew_meminbox *ib;
    assert_int_equal(ew_meminbox_new(&ib, NULL), 0);
    ew_bus_options o = {.inbox = ew_meminbox_inbox(ib)};
    ew_bus *bus;
    CF_OPEN(bus, &ns, "svc-a", &o);
    cf_seen seen;
    cf_seen_init(&seen, 100);
    tb_subscribe(bus, "user.registered", cf_record, &seen, NULL);
    tb_start(bus);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0); /* the same id: kept once */
    ew_event *after = tb_user_registered();
    assert_int_equal(ew_bus_publish(bus, after, &err), 0);
    cf_wait_count(&seen.distinct, 2, CF_TIMEOUT_MS, "events handled");
    assert_int_equal(cf_count_rows(ns.name, "SELECT count(*) FROM events"), 2);
    tb_close(bus);
    assert_int_equal(atomic_load(&seen.total), 2);

    /* Rewind the group (an operator's replay, or a consumer that died before writing its
     * position) and consume again with the same inbox: both are delivered, both skipped. */
    assert_int_equal(cf_count_rows(ns.name, "UPDATE bus_groups SET position = 0 "
                                            "WHERE group_name = 'svc-a' RETURNING 1"),
                     1);
    CF_OPEN(bus, &ns, "svc-a", &o);
    tb_subscribe(bus, "user.registered", cf_record, &seen, NULL);
    tb_start(bus);
    int64_t end = ew_mono_ns() + (int64_t)CF_TIMEOUT_MS * 1000000;
    while (tb_stats(bus, 0).duplicates < 2 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(tb_stats(bus, 0).duplicates, 2);
    tb_close(bus);
    assert_int_equal(cf_seen_times(&seen, ew_event_id(ev)), 1);
    assert_int_equal(atomic_load(&seen.total), 2);
    ew_event_unref(ev);
    ew_event_unref(after);
    ew_meminbox_free(ib);
    cf_seen_release(&seen);
}

/* CF_TESTS and CF_WIRE_TESTS, with cf_inbox_absorbs_redelivery replaced (above). */
static const struct CMUnitTest tests[] = {
    cmocka_unit_test(cf_publish_subscribe),
    cmocka_unit_test(cf_event_arrives_intact),
    cmocka_unit_test(cf_patterns),
    cmocka_unit_test(cf_groups),
    cmocka_unit_test(cf_batch_publish),
    cmocka_unit_test(cf_retry_then_dead_letter),
    cmocka_unit_test(sqlite_inbox_absorbs_redelivery),
    cmocka_unit_test(cf_order_per_subject),
    cmocka_unit_test(cf_graceful_close),
    cmocka_unit_test(cf_consumer_killed_and_restarted),
    cmocka_unit_test(cf_broker_restart),
    cmocka_unit_test(cf_bad_input_is_dead_lettered),
    cmocka_unit_test(cf_dead_letter_sink_refuses),
    cmocka_unit_test(cf_from_beginning),
    cmocka_unit_test(cf_dead_letter_retry),
    cmocka_unit_test(cf_ephemeral_group),
    cmocka_unit_test(cf_consumer_lag),
    CF_WIRE_TESTS,
};

EW_TEST_MAIN(tests)

#else /* a build without src/bus/sqlite.c */
#include "support/ew_test.h"

static void sqlite_bus_not_built(void **state)
{
    skip();
}

static const struct CMUnitTest tests[] = {cmocka_unit_test(sqlite_bus_not_built)};

EW_TEST_MAIN(tests)
#endif
