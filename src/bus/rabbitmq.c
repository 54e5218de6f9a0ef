/* eventwire — the RabbitMQ backend (rabbitmq-c): a durable topic exchange RABBITMQ_EXCHANGE with
 * the event type as routing key, one durable queue `{exchange}.{group}` per subscriber group bound
 * with the group's patterns, publisher confirms, manual acknowledgements under a prefetch window,
 * and a dead-letter exchange `{exchange}.dlx` for what the broker itself rejects.
 *
 * A rabbitmq-c connection is not thread-safe, so each has one owner: publishers share one
 * connection under a mutex (it also carries the declarations of subscribe), and every subscriber
 * group has a consumer thread with a connection of its own: the shared consumer core
 * (consumer.h) runs it, and this backend gives it the transport. Dispatcher workers never touch
 * that connection: the core queues what they finish and its thread sends the acknowledgements,
 * coalescing the oldest ones into one basic.ack with multiple=true.
 * docs/bus-rabbitmq.md describes the mapping for users of the broker.
 *
 * This file: the ops; rabbitmq.h lists the others. */
#ifdef EW_HAVE_RABBITMQ

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/url.h"
#include "bus/binding.h"
#include "bus/consumer.h"
#include "bus/rabbitmq.h"
#include "bus/receive.h"
#include "bus/wire.h"
#include "eventwire/clock.h"

/* ---- the ops ------------------------------------------------------------------------------ */

static void rmq_free(rmq *r)
{
    for (size_t i = 0; i < r->ngroups; i++)
        ew__mq_consumer_free(r->groups[i]);
    free(r->groups);
    pthread_mutex_destroy(&r->pmu);
    pthread_mutex_destroy(&r->mu);
    free(r->url_buf);
    free(r->exchange);
    free(r->dlx);
    ew__mq_mgmt_free(r);
    free(r);
}

/* Parses RABBITMQ_URL: amqp://[user[:password]@]host[:port][/vhost], or amqps:// (TLS, port
 * 5671 when left out). "/" or nothing after the address is the default vhost "/", as most
 * clients read it; "%2f" spells it too. Messages show the URL with its password as ***. */
int ew__amqp_url_parse(const char *url, char **buf, struct amqp_connection_info *ci, ew_error *err)
{
    if (!(*buf = strdup(url))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    amqp_default_connection_info(ci);
    char shown[160];
    ew_url_redact(url, shown, sizeof shown);
    if ((strncmp(url, "amqp://", 7) != 0 && strncmp(url, "amqps://", 8) != 0) ||
        amqp_parse_url(*buf, ci) != AMQP_STATUS_OK)
        return ew_error_set(err, EW_ECONFIG,
                            "RABBITMQ_URL: '%.100s' is not an AMQP URL "
                            "(amqp://user:password@host:port/vhost, or amqps://... for TLS)",
                            shown);
    if (!*ci->host)
        return ew_error_set(err, EW_ECONFIG, "RABBITMQ_URL: '%.100s' names no host", shown);
    if (ci->port < 1 || ci->port > 65535)
        return ew_error_set(err, EW_ECONFIG, "RABBITMQ_URL: port %d is outside 1..65535", ci->port);
    return 0;
}

static int parse_url(rmq *r, const char *url, ew_error *err)
{
    int rc = ew__amqp_url_parse(url, &r->url_buf, &r->ci, err);
    if (rc) return rc;
    r->vhost = *r->ci.vhost ? r->ci.vhost : "/";
    snprintf(r->addr, sizeof r->addr, "%s:%d vhost %s", r->ci.host, r->ci.port, r->vhost);
    return 0;
}

static int rmq_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    rmq *r = calloc(1, sizeof *r);
    if (!r) return ew_error_set(err, EW_ENOMEM, "out of memory");
    pthread_mutex_init(&r->pmu, NULL);
    pthread_mutex_init(&r->mu, NULL);
    r->bus = bus;
    r->disp = ew__bus_dispatcher(bus);
    r->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    r->max_in_flight = (int)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    r->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    ew__content_mode_parse(ew_config_get(cfg, "EVENT_CONTENT_MODE"), &r->content_mode);
    r->pbackoff_ms = BACKOFF_MIN_MS;
    const char *ex = ew_config_get(cfg, "RABBITMQ_EXCHANGE");
    int rc = parse_url(r, ew_config_get(cfg, "RABBITMQ_URL"), err);
    if (rc || (rc = ew__mq_tls_settings(r, cfg, err)) ||
        (rc = ew__mq_mgmt_settings(r, ew_config_get(cfg, "RABBITMQ_MANAGEMENT_URL"), err)))
        goto fail;
    if (strlen(ex) + 4 > AMQP_NAME_MAX) {
        rc = ew_error_set(err, EW_ECONFIG, "RABBITMQ_EXCHANGE: '%.64s...' is longer than %d bytes",
                          ex, AMQP_NAME_MAX - 4);
        goto fail;
    }
    r->exchange = strdup(ex);
    if (!r->exchange || asprintf(&r->dlx, "%s.dlx", ex) < 0) {
        r->dlx = NULL;
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    /* Connect now: an unreachable broker is an error at open, not at the first publish. */
    pthread_mutex_lock(&r->pmu);
    rc = ew__mq_pub_ensure(r, err);
    pthread_mutex_unlock(&r->pmu);
    if (rc) goto fail;
    ew__bus_log(bus, EW_LOG_DEBUG, "rabbitmq: connected to %s%s, exchange %s", r->addr,
                r->ci.ssl ? " over TLS" : "", r->exchange);
    *self = r;
    return 0;
fail:
    if (r->pst) amqp_destroy_connection(r->pst);
    rmq_free(r);
    return rc;
}

static consumer *find_group(rmq *r, const char *group)
{
    for (size_t i = 0; i < r->ngroups; i++)
        if (strcmp(r->groups[i]->group, group) == 0) return r->groups[i];
    return NULL;
}

static int rmq_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    rmq *r = self;
    char queue[2 * AMQP_NAME_MAX];
    int ql = snprintf(queue, sizeof queue, "%s.%s", r->exchange, group);
    if (ql < 0 || ql > AMQP_NAME_MAX)
        return ew_error_set(err, EW_EINVAL,
                            "the queue name %s.%.40s... of group %.40s... is longer than %d bytes",
                            r->exchange, group, group, AMQP_NAME_MAX);
    char *key = strdup(ew__mq_binding_key(pattern));
    if (!key) return ew_error_set(err, EW_ENOMEM, "out of memory");

    /* The binding exists before subscribe returns: what is published from now on is kept in
     * the group's queue, also before the bus starts. bsub->from_beginning changes nothing: a
     * queue holds only what was routed to it once bound, so there is no history to replay. */
    pthread_mutex_lock(&r->pmu);
    ew__mq_pub_check_idle(r);
    int rc = ew__mq_pub_ensure(r, err);
    if (!rc) {
        rc = ew__mq_declare_queue(r, r->pst, queue, &key, 1, bsub->ephemeral, err);
        if (rc) ew__mq_pub_down(r);
    }
    pthread_mutex_unlock(&r->pmu);
    if (rc) {
        free(key);
        return rc;
    }

    pthread_mutex_lock(&r->mu);
    consumer *c = find_group(r, group);
    bool created = false;
    if (!c) {
        if (r->ngroups == r->capgroups) {
            size_t cap = r->capgroups ? r->capgroups * 2 : 4;
            consumer **g = realloc(r->groups, cap * sizeof *g);
            if (!g) {
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                goto unlock;
            }
            r->groups = g;
            r->capgroups = cap;
        }
        if (!(c = ew__mq_consumer_new(r, group, queue))) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            goto unlock;
        }
        r->groups[r->ngroups++] = c;
        created = true;
    }
    if (bsub->ephemeral) c->ephemeral = true;
    bool have = false;
    for (size_t i = 0; i < c->npatterns; i++)
        have = have || strcmp(c->patterns[i], key) == 0;
    if (!have) {
        if (c->npatterns == c->cappatterns) {
            size_t cap = c->cappatterns ? c->cappatterns * 2 : 4;
            char **p = realloc(c->patterns, cap * sizeof *p);
            if (!p) {
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                goto unlock;
            }
            c->patterns = p;
            c->cappatterns = cap;
        }
        c->patterns[c->npatterns++] = key;
        key = NULL;
    }
    if (created && r->started) rc = ew__consumer_start(c->core, err);
unlock:
    pthread_mutex_unlock(&r->mu);
    free(key);
    return rc;
}

static int rmq_start(void *self, ew_error *err)
{
    rmq *r = self;
    pthread_mutex_lock(&r->mu);
    r->started = true;
    int rc = 0;
    for (size_t i = 0; i < r->ngroups && !rc; i++)
        rc = ew__consumer_start(r->groups[i]->core, err);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static void rmq_stop(void *self)
{
    rmq *r = self;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->ngroups; i++)
        ew__consumer_stop(r->groups[i]->core);
    pthread_mutex_unlock(&r->mu);
}

static void rmq_close(void *self)
{
    rmq *r = self;
    for (size_t i = 0; i < r->ngroups; i++)
        ew__consumer_close(r->groups[i]->core);
    ew__mq_conn_close(r->pst);
    r->pst = NULL;
    rmq_free(r);
}

const ew_bus_ops ew__bus_rabbitmq_ops = {
    .name = "rabbitmq",
    .open = rmq_open,
    .publish = ew__mq_rmq_publish,
    .subscribed = rmq_subscribed,
    .start = rmq_start,
    .stop = rmq_stop,
    .close = rmq_close,
    .lag = ew__mq_lag,
};

#else
typedef int ew__rabbitmq_unused;
#endif
