/* eventwire — the Kafka backend, its configuration: librdkafka's settings as the bus owns them,
 * KAFKA_CLIENT_CONFIG, KAFKA_BOOTSTRAP_SERVERS, and the log and error callbacks. */
#ifdef EW_HAVE_KAFKA

#include <ctype.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/kafka.h"
#include "bus/receive.h"
#include "core/buf.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"

/* ---- small helpers ------------------------------------------------------------------------- */

int ew__kf_oom(ew_error *err)
{
    return ew_error_set(err, EW_ENOMEM, "out of memory");
}

char *ew__kf_join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 2);
    if (!s) return NULL;
    memcpy(s, a, na);
    s[na] = '.';
    memcpy(s + na + 1, b, nb + 1);
    return s;
}

/* The EW_E… code for a librdkafka error: what a caller can do about it. */
int ew__kf_map_err(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return EW_ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
        return EW_ECONNECT;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return EW_EAGAIN;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return EW_ETOOBIG;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        return EW_ECONFIG;
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return EW_EINVAL;
    default:
        return EW_EIO;
    }
}

/* librdkafka's log, into the bus's (the library never prints). Any librdkafka thread. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka *const *opaque = rd_kafka_opaque(rk);
    if (!opaque) return;
    kafka *k = *opaque;
    /* librdkafka's errors are mostly a broker it will reconnect to: warnings for the bus. What
     * cannot be recovered from comes through error_cb as a fatal error. */
    ew_log_level l = level <= 4 ? EW_LOG_WARN : level <= 6 ? EW_LOG_INFO : EW_LOG_DEBUG;
    ew__bus_log(k->bus, l, "kafka %s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void error_cb(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
    kafka *k = *(kafka *const *)opaque;
    /* Brokers going away is ordinary (librdkafka reconnects); a fatal error is not. */
    ew_log_level l = e == RD_KAFKA_RESP_ERR__FATAL ? EW_LOG_ERROR : EW_LOG_WARN;
    ew__bus_log(k->bus, l, "kafka %s: %s: %s", rd_kafka_name(rk),
                rd_kafka_err2name((rd_kafka_resp_err_t)e), reason);
}

int ew__kf_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, ew_error *err)
{
    char errstr[256];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return ew_error_set(err, EW_ECONFIG, "kafka: %s=%s: %s", name, value, errstr);
    return 0;
}

/* KAFKA_CLIENT_CONFIG, applied last to the producer's and every consumer's configuration, so
 * that TLS, SASL and tuning reach librdkafka as they are. Errors name the property, never its
 * value (a value may be a password). */
int ew__kf_conf_client(kafka *k, rd_kafka_conf_t *conf, ew_error *err)
{
    for (size_t i = 0; i + 1 < k->nclient_conf; i += 2) {
        const char *name = k->client_conf[i], *value = k->client_conf[i + 1];
        char errstr[256];
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr);
        if (r == RD_KAFKA_CONF_UNKNOWN)
            return ew_error_set(err, EW_ECONFIG,
                                "KAFKA_CLIENT_CONFIG: '%.100s' is not a librdkafka property", name);
        if (r != RD_KAFKA_CONF_OK)
            return ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: %.100s: %s", name, errstr);
    }
    return 0;
}

/* Properties the bus sets itself: what it relies on (its offsets, its groups, its producer's
 * guarantees) or what a setting of its own says. */
static const char *const owned_props[][2] = {
    {"bootstrap.servers", "KAFKA_BOOTSTRAP_SERVERS"},
    {"metadata.broker.list", "KAFKA_BOOTSTRAP_SERVERS"},
    {"group.id", "KAFKA_CONSUMER_GROUP"},
    {"enable.auto.commit", "the bus commits what its handlers finished"},
    {"enable.auto.offset.store", "the bus commits what its handlers finished"},
    {"auto.offset.reset", "ew_subscribe_opts.from_beginning"},
    {"enable.idempotence", "the bus's producer is idempotent"},
};

/* Splits KAFKA_CLIENT_CONFIG (key=value,key=value; spaces around items and around = ignored,
 * a backslash keeps the next character, a comma included) into k->client_conf. */
int ew__kf_parse_client_conf(kafka *k, const char *s, ew_error *err)
{
    size_t cap = 2;
    for (const char *p = s; *p; p++)
        if (*p == ',') cap += 2;
    if (!(k->client_conf = calloc(cap, sizeof *k->client_conf))) return ew__kf_oom(err);
    const char *p = s;
    while (*p == ' ')
        p++;
    for (int item = 1; *p; item++) {
        char *buf = malloc(strlen(p) + 1);
        if (!buf) return ew__kf_oom(err);
        size_t n = 0, eq = 0;
        bool have_eq = false;
        for (; *p && *p != ','; p++) {
            if (*p == '=' && !have_eq) {
                have_eq = true;
                while (n && buf[n - 1] == ' ')
                    n--; /* spaces before = */
                buf[n++] = '\0';
                eq = n;
                while (p[1] == ' ')
                    p++; /* and after it */
                continue;
            }
            if (*p == '\\' && p[1]) p++;
            buf[n++] = *p;
        }
        while (n > eq && buf[n - 1] == ' ')
            n--;
        buf[n] = '\0';
        if (!have_eq || !buf[0]) {
            free(buf);
            return ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: item %d is not key=value",
                                item);
        }
        for (size_t i = 0; i < sizeof owned_props / sizeof owned_props[0]; i++) {
            if (strcmp(buf, owned_props[i][0]) == 0) {
                int rc =
                    ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: %s is set by the bus (%s)",
                                 buf, owned_props[i][1]);
                free(buf);
                return rc;
            }
        }
        char *value = strdup(buf + eq);
        if (!value) {
            free(buf);
            return ew__kf_oom(err);
        }
        k->client_conf[k->nclient_conf++] = buf; /* the name, first in buf */
        k->client_conf[k->nclient_conf++] = value;
        if (*p == ',') p++;
        while (*p == ' ')
            p++;
    }
    return 0;
}

/* Settings both kinds of handle share. The opaque is the backend for the producer and the group
 * for a consumer; both begin with the backend's pointer, which is what log_cb and error_cb read. */
rd_kafka_conf_t *ew__kf_conf_common(kafka *k, ew_error *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        ew__kf_oom(err);
        return NULL;
    }
    char ms[32];
    snprintf(ms, sizeof ms, "%d", k->connect_ms < 1000 ? 1000 : k->connect_ms); /* its minimum */
    if (ew__kf_conf_set(conf, "bootstrap.servers", k->bootstrap, err) ||
        ew__kf_conf_set(conf, "client.id", k->service, err) ||
        ew__kf_conf_set(conf, "socket.connection.setup.timeout.ms", ms, err) ||
        ew__kf_conf_set(conf, "reconnect.backoff.max.ms", RECONNECT_MAX, err) ||
        ew__kf_conf_set(conf, "log.connection.close", "false",
                        err) || /* idle connections closing */
        /* a publish waits for its answer: no Nagle delay on requests (Java's client does so) */
        ew__kf_conf_set(conf, "socket.nagle.disable", "true", err) ||
        ew__kf_conf_set(conf, "topic.metadata.refresh.interval.ms", METADATA_REFRESH, err)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, k);
    return conf;
}

/* ---- settings ------------------------------------------------------------------------------ */

/* KAFKA_BOOTSTRAP_SERVERS: host:port[,host:port...], host a name, an IPv4 address or [IPv6]. */
int ew__kf_check_bootstrap(const char *s, ew_error *err)
{
    const char *p = s;
    int n = 0;
    for (;;) {
        n++;
        while (*p == ' ')
            p++;
        const char *host = p;
        if (*p == '[') {
            while (*p && *p != ']')
                p++;
            if (*p != ']' || p == host + 1) goto bad;
            p++;
        } else {
            while (*p && (isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_'))
                p++;
            if (p == host) goto bad;
        }
        if (*p != ':') goto bad;
        p++;
        long port = 0;
        const char *digits = p;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (*p++ - '0');
        if (p == digits || port < 1 || port > 65535) goto bad;
        while (*p == ' ')
            p++;
        if (*p == '\0') return 0;
        if (*p != ',') goto bad;
        p++;
    }
bad:
    return ew_error_set(err, EW_ECONFIG,
                        "KAFKA_BOOTSTRAP_SERVERS: '%.100s' is not host:port[,host:port...] "
                        "(entry %d is wrong at '%.20s')",
                        s, n, *p ? p : "(end)");
}

#else
typedef int ew__kafka_conf_unused;
#endif
