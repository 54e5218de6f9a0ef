/* eventwire — the Kafka backend (librdkafka): topic {KAFKA_TOPIC_PREFIX}.{type}, key = subject,
 * one idempotent producer (acks=all) per bus whose publish waits for the delivery reports of its
 * events, and one consumer group {KAFKA_CONSUMER_GROUP}.{group} per subscriber group, each polled
 * by a thread of its own, whose offsets are committed only once the dispatcher is done with the
 * messages below them. docs/bus-kafka.md says how it maps the bus for a Kafka user.
 *
 * This file: the groups and the ops; kafka.h lists the others. */
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

/* ---- groups -------------------------------------------------------------------------------- */

/* A pattern as what a Kafka consumer subscribes to: the topic of an exact type, or a regex
 * (librdkafka takes a subscription that starts with ^ as one) over the topics of the types it
 * matches: user.* → ^prefix\.user\.[^.]+$, user.# → ^prefix\.user(\.[^.]+)*$. */
static char *pattern_sub(const char *prefix, const char *pattern)
{
    if (!strchr(pattern, '*') && !strchr(pattern, '#')) return ew__kf_join(prefix, pattern);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '^');
    for (const char *c = prefix; *c; c++) {
        if (*c == '.') ew_buf_putc(&b, '\\');
        ew_buf_putc(&b, *c);
    }
    for (const char *s = pattern; *s;) {
        size_t len = strcspn(s, ".");
        if (len == 1 && *s == '#')
            ew_buf_puts(&b, "(\\.[^.]+)*");
        else if (len == 1 && *s == '*')
            ew_buf_puts(&b, "\\.[^.]+");
        else {
            ew_buf_puts(&b, "\\.");
            ew_buf_append(&b, s, len);
        }
        s += len;
        if (*s == '.') s++;
    }
    ew_buf_putc(&b, '$');
    return ew_buf_steal(&b, NULL);
}

static void group_free(kgroup *g)
{
    if (!g) return;
    /* A consumer that never ran closes without rebalance callbacks. */
    ew__consumer_free(g->core);
    if (g->rk) rd_kafka_destroy_flags(g->rk, g->closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (size_t i = 0; i < g->nparts; i++)
        ew__kf_part_free(g->parts[i]);
    free(g->parts);
    for (size_t i = 0; i < g->nsubs; i++)
        free(g->subs[i]);
    free(g->subs);
    for (size_t i = 0; i < g->nstarts; i++)
        free(g->starts[i].topic);
    free(g->starts);
    free(g->name);
    free(g->group_id);
    free(g->what);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static kgroup *group_new(kafka *k, const char *name)
{
    kgroup *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->k = k;
    pthread_mutex_init(&g->mu, NULL);
    g->name = strdup(name);
    g->group_id = ew__kf_join(k->group_prefix, name);
    snprintf(g->thread, sizeof g->thread, "ewk:%.11s", name); /* as ps and debuggers show it */
    if (!g->name || !g->group_id || asprintf(&g->what, "kafka group %s", g->group_id) < 0) {
        g->what = NULL;
        group_free(g);
        return NULL;
    }
    ew__consumer_conf conf = {
        .bus = k->bus,
        .group = g->name,
        .what = g->what,
        .thread = g->thread,
        .max_inflight = (size_t)k->max_inflight,
        .max_bytes = k->max_bytes,
        .ops = &ew__kf_transport,
        .t = g,
    };
    if (ew__consumer_new(&g->core, &conf, NULL)) {
        group_free(g);
        return NULL;
    }
    return g;
}

static int group_subscribe(kgroup *g, ew_error *err)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)g->nsubs);
    if (!l) return ew__kf_oom(err);
    for (size_t i = 0; i < g->nsubs; i++)
        rd_kafka_topic_partition_list_add(l, g->subs[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(g->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e)
        return ew_error_set(err, EW_EINVAL, "kafka group %s: cannot subscribe: %s", g->group_id,
                            rd_kafka_err2str(e));
    return 0;
}

/* Creates the group's consumer, subscribes it and starts its thread. */
static int group_start(kgroup *g, ew_error *err)
{
    kafka *k = g->k;
    rd_kafka_conf_t *conf = ew__kf_conf_common(k, err);
    if (!conf) return err ? err->code : EW_ECONFIG;
    char fetch[32];
    size_t fb = k->max_bytes + 65536;
    snprintf(fetch, sizeof fetch, "%zu", fb < 52428800 ? (size_t)52428800 : fb);
    int rc;
    if ((rc = ew__kf_conf_set(conf, "group.id", g->group_id, err)) ||
        (rc = ew__kf_conf_set(conf, "enable.auto.commit", "false", err)) ||
        (rc = ew__kf_conf_set(conf, "enable.auto.offset.store", "false", err)) ||
        (rc = ew__kf_conf_set(conf, "auto.offset.reset", "earliest", err)) ||
        (rc = ew__kf_conf_set(conf, "session.timeout.ms", SESSION_TIMEOUT, err)) ||
        (rc = ew__kf_conf_set(conf, "heartbeat.interval.ms", "1000", err)) ||
        (rc = ew__kf_conf_set(conf, "fetch.wait.max.ms", FETCH_WAIT_MAX, err)) ||
        (rc = ew__kf_conf_set(conf, "fetch.max.bytes", fetch, err))) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    /* receive.message.max.bytes must exceed fetch.max.bytes */
    char recv[32];
    snprintf(recv, sizeof recv, "%zu", (fb < 52428800 ? (size_t)52428800 : fb) + 1048576);
    if ((rc = ew__kf_conf_set(conf, "receive.message.max.bytes", recv, err)) ||
        (rc = ew__kf_conf_client(k, conf, err))) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_rebalance_cb(conf, ew__kf_rebalance_cb);
    rd_kafka_conf_set_opaque(conf, g);
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return ew_error_set(err, EW_ECONFIG, "kafka group %s: cannot create a consumer: %s",
                            g->group_id, errstr);
    }
    g->rk = rk;
    rd_kafka_poll_set_consumer(rk);
    g->cq = rd_kafka_queue_get_consumer(rk);
    if (!(g->commitq = rd_kafka_queue_new(rk)))
        return ew_error_set(err, EW_ENOMEM, "kafka group %s: out of memory", g->group_id);
    if ((rc = group_subscribe(g, err))) return rc;
    if ((rc = ew__consumer_start(g->core, err))) return rc;
    g->running = true;
    return 0;
}

/* ---- the ops ------------------------------------------------------------------------------- */

static void k_free(kafka *k)
{
    while (k->groups) {
        kgroup *g = k->groups;
        k->groups = g->next;
        if (g->cq) rd_kafka_queue_destroy(g->cq);
        if (g->commitq) rd_kafka_queue_destroy(g->commitq);
        group_free(g);
    }
    ew__kf_prod_free(k->prod);
    for (size_t i = 0; i < k->nclient_conf; i++)
        free(k->client_conf[i]);
    free(k->client_conf);
    free(k->bootstrap);
    free(k->prefix);
    free(k->group_prefix);
    free(k->service);
    pthread_rwlock_destroy(&k->plock);
    pthread_mutex_destroy(&k->pmu);
    pthread_cond_destroy(&k->pcv);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

static int k_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    const char *bootstrap = ew_config_get(cfg, "KAFKA_BOOTSTRAP_SERVERS");
    int rc = ew__kf_check_bootstrap(bootstrap, err);
    if (rc) return rc;
    kafka *k = calloc(1, sizeof *k);
    if (!k) return ew__kf_oom(err);
    /* Writers first: a producer that failed for good is replaced even under a stream of
     * publishes (which fail at once until it is). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&k->plock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&k->pmu, NULL);
    pthread_cond_init(&k->pcv, NULL);
    pthread_mutex_init(&k->mu, NULL);
    k->k = k;
    k->bus = bus;
    k->disp = ew__bus_dispatcher(bus);
    k->bootstrap = strdup(bootstrap);
    k->prefix = strdup(ew_config_get(cfg, "KAFKA_TOPIC_PREFIX"));
    k->group_prefix = strdup(ew_config_get(cfg, "KAFKA_CONSUMER_GROUP"));
    k->service = strdup(ew__bus_service(bus));
    if (!k->bootstrap || !k->prefix || !k->group_prefix || !k->service) {
        k_free(k);
        return ew__kf_oom(err);
    }
    const char *client = ew_config_get(cfg, "KAFKA_CLIENT_CONFIG");
    if ((rc = ew__kf_parse_client_conf(k, client ? client : "", err))) {
        k_free(k);
        return rc;
    }
    k->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    ew__content_mode_parse(ew_config_get(cfg, "EVENT_CONTENT_MODE"), &k->content_mode);
    k->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    k->drain_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_DRAIN_TIMEOUT_MS");
    k->max_inflight = (int)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    k->publish_timeout_ms =
        k->connect_ms > MIN_PUBLISH_TIMEOUT_MS ? k->connect_ms : MIN_PUBLISH_TIMEOUT_MS;
    if ((rc = ew__kf_prod_new(k, &k->prod, err))) {
        k_free(k);
        return rc;
    }
    /* Reach a broker now: a bus that cannot is refused at open, not at its first publish. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(k->prod->rk, 0, NULL, &md, k->connect_ms);
    if (e) {
        rc = ew_error_set(err, EW_ECONNECT,
                          "cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=%s within %d ms "
                          "(EVENT_BUS_CONNECT_TIMEOUT_MS): %s",
                          k->bootstrap, k->connect_ms, rd_kafka_err2str(e));
        k_free(k);
        return rc;
    }
    ew__bus_log(bus, EW_LOG_DEBUG, "kafka: connected to %s (%d brokers)", k->bootstrap,
                md->broker_cnt);
    rd_kafka_metadata_destroy(md);
    *self = k;
    return 0;
}

static int k_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    kafka *k = self;
    char *sub = pattern_sub(k->prefix, pattern);
    if (!sub) return ew__kf_oom(err);
    pthread_mutex_lock(&k->mu);
    kgroup *g = k->groups;
    while (g && strcmp(g->name, group) != 0)
        g = g->next;
    int rc = 0;
    if (!g) {
        if (!(g = group_new(k, group))) {
            pthread_mutex_unlock(&k->mu);
            free(sub);
            return ew__kf_oom(err);
        }
        g->next = k->groups;
        k->groups = g;
    }
    if (bsub->ephemeral) g->ephemeral = true;
    bool have = false;
    for (size_t i = 0; i < g->nsubs; i++)
        if (strcmp(g->subs[i], sub) == 0) have = true;
    if (have) {
        free(sub);
    } else {
        if (g->nsubs == g->capsubs) {
            size_t cap = g->capsubs ? 2 * g->capsubs : 4;
            char **ns = realloc(g->subs, cap * sizeof *ns);
            if (!ns) {
                pthread_mutex_unlock(&k->mu);
                free(sub);
                return ew__kf_oom(err);
            }
            g->subs = ns;
            g->capsubs = cap;
        }
        g->subs[g->nsubs++] = sub;
    }
    bool started = k->started;
    pthread_mutex_unlock(&k->mu);
    ew__kf_ensure_topics(k, pattern);
    /* Where the group starts on these topics if it is new, before anything is published after
     * this call returns. (Subscriptions are never made concurrently: g stays.) */
    if (!have && (rc = ew__kf_record_starts(k, g, pattern, bsub->from_beginning, err))) {
        pthread_mutex_lock(&k->mu);
        for (size_t i = 0; i < g->nsubs; i++) {
            if (strcmp(g->subs[i], sub) == 0) {
                free(g->subs[i]);
                g->subs[i] = g->subs[--g->nsubs];
                break;
            }
        }
        pthread_mutex_unlock(&k->mu);
        return rc;
    }
    if (started && !have) {
        if (!g->rk)
            rc = group_start(g, err);
        else
            rc = group_subscribe(g, err);
    }
    return rc;
}

static int k_start(void *self, ew_error *err)
{
    kafka *k = self;
    pthread_mutex_lock(&k->mu);
    k->started = true;
    int rc = 0;
    for (kgroup *g = k->groups; g && !rc; g = g->next)
        if (!g->rk && g->nsubs > 0) rc = group_start(g, err); /* none: its subscribe failed */
    pthread_mutex_unlock(&k->mu);
    return rc;
}

static void k_stop(void *self)
{
    kafka *k = self;
    pthread_mutex_lock(&k->mu);
    for (kgroup *g = k->groups; g; g = g->next)
        if (g->running) ew__consumer_stop(g->core);
    pthread_mutex_unlock(&k->mu);
}

static void k_close(void *self)
{
    kafka *k = self;
    /* The dispatcher drained: each group's core commits what finished and leaves the group. */
    for (kgroup *g = k->groups; g; g = g->next)
        if (g->running) ew__consumer_close(g->core);
    k_free(k);
}

const ew_bus_ops ew__bus_kafka_ops = {
    .name = "kafka",
    .open = k_open,
    .publish = ew__kf_k_publish,
    .subscribed = k_subscribed,
    .start = k_start,
    .stop = k_stop,
    .close = k_close,
    .lag = ew__kf_lag,
};

#else
typedef int ew__kafka_unused;
#endif
