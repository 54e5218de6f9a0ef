/* Helpers shared by the transport-security tests (test_redis_tls.c, test_rabbitmq_tls.c): a
 * broker bus opened from name/value settings that reports how opening failed, the fixture's TLS
 * files, and one event through a bus. */
#ifndef EW_TESTS_BUS_TLS_TEST_UTIL_H
#define EW_TESTS_BUS_TLS_TEST_UTIL_H

#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include "bus/bus_test_util.h"
#include "eventwire/clock.h"

/* A password that must never show, in any message or log line of these tests. */
#define TLS_SECRET "Sup3rS3cretPw"

/* A file of the fixture's TLS folder (DIR/redis-tls/ca.pem ...), in a static buffer of its own
 * per slot (0..3), so that several may be used in one call. Skips when no fixture runs. */
static inline const char *tls_file(int slot, const char *folder, const char *name)
{
    static char paths[4][1024];
    const char *dir = getenv("EW_SERVERS_DIR");
    if (!dir) skip();
    snprintf(paths[slot], sizeof paths[slot], "%s/%s/%s", dir, folder, name);
    if (access(paths[slot], R_OK) != 0)
        fail_msg("%s is missing: the fixture did not start", paths[slot]);
    return paths[slot];
}

/* The URL of fixture server `name` (scheme://[userinfo@]127.0.0.1:PORT[/path]), with its user
 * info replaced by `userinfo` and its host by `host` where those are not NULL. Skips when the
 * server is not running. */
static inline const char *tls_url(char *buf, size_t n, const char *name, const char *userinfo,
                                  const char *host)
{
    const char *url = ew_test_server_url(name);
    if (!url) skip();
    const char *hp = strstr(url, "://");
    assert_non_null(hp);
    hp += 3;
    const char *at = strchr(hp, '@');
    char own[128] = "";
    if (at) {
        snprintf(own, sizeof own, "%.*s", (int)(at - hp), hp);
        hp = at + 1;
    }
    const char *port = strchr(hp, ':'); /* the fixtures' hosts are IPv4 literals */
    assert_non_null(port);
    const char *ui = userinfo ? userinfo : own;
    int scheme = (int)(strstr(url, "://") + 3 - url);
    snprintf(buf, n, "%.*s%s%s%.*s%s", scheme, url, ui, *ui ? "@" : "",
             host ? (int)strlen(host) : (int)(port - hp), host ? host : hp, port);
    return buf;
}

/* Opens a bus of `type` with the settings kv (name, value, ..., NULL); the bus's log lines go to
 * log. Returns ew_bus_open()'s code, with its message in *err. */
static inline int tls_open(ew_bus **out, tb_log *log, const char *type, const char *const *kv,
                           ew_error *err)
{
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_TYPE", type, err), 0);
    assert_int_equal(ew_config_set(cfg, "SERVICE_NAME", TB_SERVICE, err), 0);
    assert_int_equal(ew_config_set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "5000", err), 0);
    for (size_t i = 0; kv[i]; i += 2)
        if (ew_config_set(cfg, kv[i], kv[i + 1], err)) fail_msg("%s", err->msg);
    ew_bus_options o = {.config = cfg, .log = tb_log_fn, .log_ud = log};
    *out = NULL;
    int rc = ew_bus_open(out, &o, err);
    ew_config_free(cfg);
    return rc;
}

/* One user.registered event published and handled on bus (a group of its own, subscribed
 * before the publish), within 30 s. */
static inline void tls_roundtrip(ew_bus *bus)
{
    static atomic_int seen;
    atomic_store(&seen, 0);
    char group[64], id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(group, sizeof group, "tls-%.12s", id + 24);
    ew_subscribe_opts so = {.group = group};
    tb_subscribe(bus, "user.registered", tb_count, &seen, &so);
    tb_start(bus);
    tb_publish_owned(bus, tb_user_registered());
    int64_t end = ew_mono_ns() + 30000000000LL;
    while (atomic_load(&seen) < 1 && ew_mono_ns() < end)
        usleep(2000);
    assert_int_equal(atomic_load(&seen), 1);
}

/* Fails when s holds the test password. */
static inline void tls_no_secret(const char *what, const char *s)
{
    if (strstr(s, TLS_SECRET)) fail_msg("%s shows the password: %s", what, s);
}

#endif
