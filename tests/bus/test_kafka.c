/* Tests of what is particular to the Kafka backend: KAFKA_BOOTSTRAP_SERVERS forms, an
 * unreachable cluster, KAFKA_CLIENT_CONFIG, where events land (topic, key, header), both
 * CloudEvents modes on the way in, offsets committed only once handled and never past a message
 * still in flight, the in-flight bound, EVENT_MAX_BYTES, patterns picking up topics made later, and
 * publishing while the brokers are down (on a mock cluster of the test's own). The shared behaviour
 * is in test_conformance_kafka.c. ew-fixture: kafka */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>
#include "bus/bus_test_util.h"
#include "eventwire/clock.h"

#define WAIT_MS 60000

/* ---- helpers ------------------------------------------------------------------------------ */

static void read_line(const char *path, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(out, (int)cap, f)) out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
}

/* The fixture's bootstrap list; skips the test when there is none. */
static const char *bootstrap(void)
{
    const char *url = ew_test_server_url("kafka");
    if (!url) skip();
    return url;
}

typedef struct ns {
    char name[40];
} ns;

static ns new_ns(const char *tag)
{
    ns n;
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(n.name, sizeof n.name, "kt%s%.8s", tag, id + 24);
    return n;
}

static ew_config *kafka_config(const char *servers, const ns *n, const char *service)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    if (ew_config_set(cfg, "EVENT_BUS_TYPE", "kafka", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", service, &err) ||
        ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", servers, &err) ||
        (n && ew_config_set(cfg, "KAFKA_TOPIC_PREFIX", n->name, &err)) ||
        (n && ew_config_set(cfg, "KAFKA_CONSUMER_GROUP", n->name, &err)))
        fail_msg("%s", err.msg);
    return cfg;
}

static ew_bus *open_cfg(ew_config *cfg, ew_bus_options *opts)
{
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = cfg;
    ew_bus *bus = NULL;
    ew_error err = {0};
    if (ew_bus_open(&bus, &o, &err)) fail_msg("ew_bus_open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

static void set(ew_config *cfg, const char *name, const char *value)
{
    ew_error err = {0};
    if (ew_config_set(cfg, name, value, &err)) fail_msg("%s", err.msg);
}

static void wait_count(atomic_int *c, int n, const char *what)
{
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (atomic_load(c) < n) {
        if (ew_mono_ns() > end) fail_msg("%s: %d of %d", what, atomic_load(c), n);
        usleep(2000);
    }
}

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {}

static rd_kafka_conf_t *raw_conf(const char *servers)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", servers, errstr, sizeof errstr))
        fail_msg("%s", errstr);
    rd_kafka_conf_set_log_cb(conf, quiet_log);
    return conf;
}

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    if (m->err) (*(int *)opaque)++;
}

/* A message from a foreign producer: value, key and headers (name, value pairs, NULL-ended). */
static void raw_produce(const char *topic, const char *key, const char *value, ...)
{
    rd_kafka_conf_t *conf = raw_conf(bootstrap());
    int failures = 0;
    rd_kafka_conf_set_dr_msg_cb(conf, raw_dr);
    rd_kafka_conf_set_opaque(conf, &failures);
    char errstr[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    va_list ap;
    va_start(ap, value);
    for (const char *name; (name = va_arg(ap, const char *));)
        rd_kafka_header_add(h, name, -1, va_arg(ap, const char *), -1);
    va_end(ap);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)value, strlen(value)),
        RD_KAFKA_V_KEY(key, key ? strlen(key) : 0), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
    if (e) {
        rd_kafka_headers_destroy(h);
        fail_msg("produce: %s", rd_kafka_err2str(e));
    }
    assert_int_equal(rd_kafka_flush(rk, WAIT_MS), 0);
    assert_int_equal(failures, 0);
    rd_kafka_destroy(rk);
}

/* Reads the first message of a topic's partitions (no group), or fails. Caller destroys it and
 * the handle. */
static rd_kafka_message_t *raw_read_one(const char *topic, rd_kafka_t **out)
{
    rd_kafka_conf_t *conf = raw_conf(bootstrap());
    char errstr[256];
    rd_kafka_conf_set(conf, "group.id", "kt-raw-reader", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(rk, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    for (;;) {
        if (ew_mono_ns() > end) fail_msg("nothing to read in %s", topic);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) continue;
        if (!m->err) {
            *out = rk;
            return m;
        }
        rd_kafka_message_destroy(m);
    }
}

/* The high watermark of a topic: how many messages it holds (partitions 0..3). */
static int64_t raw_count(const char *topic)
{
    rd_kafka_conf_t *conf = raw_conf(bootstrap());
    char errstr[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    int64_t total = 0;
    for (int p = 0; p < 4; p++) {
        int64_t lo, hi;
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000) == 0) total += hi;
    }
    rd_kafka_destroy(rk);
    return total;
}

/* The offset group_id has committed for topic [partition]; RD_KAFKA_OFFSET_INVALID when none. */
static int64_t raw_committed(const char *group_id, const char *topic, int partition)
{
    rd_kafka_conf_t *conf = raw_conf(bootstrap());
    char errstr[256];
    rd_kafka_conf_set(conf, "group.id", group_id, errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    int64_t off = -2;
    if (rd_kafka_committed(rk, l, 10000) == 0) off = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return off;
}

/* Creates a topic with one partition through the mock cluster's control FIFO. */
static void create_topic(const char *topic, int partitions)
{
    const char *dir = getenv("EW_SERVERS_DIR");
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/kafka/kafka.ctl", dir ? dir : "servers");
    int fd = open(path, O_WRONLY | O_NONBLOCK);
    if (fd < 0) skip(); /* not the mock cluster */
    int n = snprintf(line, sizeof line, "topic %s %d\n", topic, partitions);
    assert_int_equal(write(fd, line, (size_t)n), n);
    close(fd);
    /* wait until the cluster says so */
    rd_kafka_conf_t *conf = raw_conf(bootstrap());
    char errstr[256];
    rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    int got = 0;
    while (got != partitions && ew_mono_ns() < end) {
        const struct rd_kafka_metadata *md;
        if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == 0) {
            if (md->topic_cnt == 1 && !md->topics[0].err) got = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
        }
        if (got != partitions) usleep(20000);
    }
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    assert_int_equal(got, partitions);
}

/* Keeps the events a handler gets (references) and counts them. */
typedef struct keep {
    pthread_mutex_t mu;
    ew_event *evs[64];
    atomic_int n;
} keep;

static ew_handler_result keep_fn(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    keep *k = ud;
    pthread_mutex_lock(&k->mu);
    int i = atomic_load(&k->n);
    if (i < 64) k->evs[i] = ew_event_ref(ev);
    atomic_fetch_add(&k->n, 1);
    pthread_mutex_unlock(&k->mu);
    return EW_HANDLER_OK;
}

static void keep_release(keep *k)
{
    int n = atomic_load(&k->n);
    for (int i = 0; i < n && i < 64; i++)
        ew_event_unref(k->evs[i]);
}

/* ---- settings ----------------------------------------------------------------------------- */

static void test_bootstrap_bad_forms(void **state)
{
    static const char *const bad[] = {
        "localhost", "localhost:", "localhost:0", "localhost:65536", "localhost:9092:1",
        ",",         "a:1,",       ",a:1",        "a:1,,b:2",        "kafka://a:9092",
        "[::1:9092", "[]:9092",    "a b:9092",    "a:92x",           "a;b:9092",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ew_config *cfg = kafka_config(bad[i], NULL, "kt");
        ew_bus *bus = NULL;
        ew_error err = {0};
        int64_t t0 = ew_mono_ns();
        int rc = ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err);
        ew_config_free(cfg);
        if (rc != EW_ECONFIG) fail_msg("'%s': %d (%s), expected EW_ECONFIG", bad[i], rc, err.msg);
        assert_null(bus);
        assert_non_null(strstr(err.msg, "KAFKA_BOOTSTRAP_SERVERS"));
        assert_true(ew_mono_ns() - t0 < 1000000000LL); /* refused without trying to connect */
    }
    /* empty is refused by the configuration itself */
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", "", &err), EW_ECONFIG);
    ew_config_free(cfg);
}

/* Good forms pass the check and go on to connect (nobody listens on port 1). */
static void test_bootstrap_good_forms(void **state)
{
    static const char *const good[] = {
        "127.0.0.1:1", "localhost:1",    "127.0.0.1:1,127.0.0.2:1", " 127.0.0.1:1 , localhost:1",
        "[::1]:1",     "my-host_1.lan:1"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ew_config *cfg = kafka_config(good[i], NULL, "kt");
        set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "300");
        ew_bus *bus = NULL;
        ew_error err = {0};
        int rc = ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err);
        ew_config_free(cfg);
        if (rc != EW_ECONNECT)
            fail_msg("'%s': %d (%s), expected EW_ECONNECT", good[i], rc, err.msg);
        assert_null(bus);
    }
}

/* Opening against nothing fails within EVENT_BUS_CONNECT_TIMEOUT_MS (and a little), saying
 * what it tried; the error is worth retrying. */
static void test_unreachable_broker(void **state)
{
    ew_config *cfg = kafka_config("127.0.0.1:1", NULL, "kt");
    set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "1000");
    tb_log log = TB_LOG_INIT;
    ew_bus *bus = NULL;
    ew_error err = {0};
    int64_t t0 = ew_mono_ns();
    int rc =
        ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .log = tb_log_fn, .log_ud = &log}, &err);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    ew_config_free(cfg);
    assert_int_equal(rc, EW_ECONNECT);
    assert_null(bus);
    assert_true(ew_err_retriable(rc));
    assert_non_null(strstr(err.msg, "127.0.0.1:1"));
    assert_non_null(strstr(err.msg, "KAFKA_BOOTSTRAP_SERVERS"));
    assert_non_null(strstr(err.msg, "1000 ms"));
    assert_true(ms >= 900);
    assert_true(ms < 10000);
    /* librdkafka's own complaints went to the bus's log, not to stderr */
    assert_true(tb_log_has(&log, "127.0.0.1:1"));
}

/* KAFKA_CLIENT_CONFIG: librdkafka properties pass through to the producer and the consumers; a
 * property librdkafka does not have, a bad value, or one the bus sets itself is EW_ECONFIG at
 * open, naming the property and never repeating a value (it may be a password). */
static void test_client_config(void **state)
{
    static const struct {
        const char *conf, *says;
    } bad[] = {
        {"socket.keepalive.enable=true,sasl.pasword=hunter2", "'sasl.pasword'"},
        {"no.such.thing=1", "'no.such.thing'"},
        {"acks=lots", "acks"},
        {"group.id=mine", "group.id"},
        {"auto.offset.reset=latest", "from_beginning"},
        {"bootstrap.servers=elsewhere:9092", "KAFKA_BOOTSTRAP_SERVERS"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ew_config *cfg = kafka_config(bootstrap(), NULL, "kt");
        set(cfg, "KAFKA_CLIENT_CONFIG", bad[i].conf);
        ew_bus *bus = NULL;
        ew_error err = {0};
        int rc = ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err);
        ew_config_free(cfg);
        if (rc != EW_ECONFIG)
            fail_msg("'%s': %d (%s), expected EW_ECONFIG", bad[i].conf, rc, err.msg);
        assert_null(bus);
        assert_non_null(strstr(err.msg, "KAFKA_CLIENT_CONFIG"));
        if (!strstr(err.msg, bad[i].says)) fail_msg("'%s': %s", bad[i].conf, err.msg);
        assert_null(strstr(err.msg, "hunter2"));
    }
    /* what is not key=value is refused by the configuration itself, by position only */
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    assert_int_equal(ew_config_set(cfg, "KAFKA_CLIENT_CONFIG", "a=1,sasl.password", &err),
                     EW_ECONFIG);
    assert_non_null(strstr(err.msg, "item 2"));
    assert_null(strstr(err.msg, "sasl.password"));
    assert_int_equal(ew_config_set(cfg, "KAFKA_CLIENT_CONFIG", "=1", &err), EW_ECONFIG);
    assert_int_equal(ew_config_set(cfg, "KAFKA_CLIENT_CONFIG", "", &err), 0);
    ew_config_free(cfg);

    /* Good properties, producer's and consumer's, spaces and an escaped comma: a working bus. */
    ns n = new_ns("cc");
    cfg = kafka_config(bootstrap(), &n, "kt");
    set(cfg, "KAFKA_CLIENT_CONFIG",
        " socket.keepalive.enable = true , fetch.min.bytes=1,client.rack=rack\\,1,"
        "security.protocol=plaintext");
    ew_bus *bus = open_cfg(cfg, NULL);
    atomic_int count = 0;
    tb_subscribe(bus, "user.verified", tb_count, &count, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_count(&count, 1, "the event");
    tb_close(bus);
}

/* ---- where events go ---------------------------------------------------------------------- */

/* Topic PREFIX.TYPE, key = subject, structured mode: the value is the event as CloudEvents JSON
 * and the content-type header says so. */
static void test_topic_key_and_header(void **state)
{
    ns n = new_ns("tk");
    ew_bus *bus = open_cfg(kafka_config(bootstrap(), &n, "kt"), NULL);
    ew_event *ev = tb_user_registered();
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, ev, &err), 0);

    char topic[128];
    snprintf(topic, sizeof topic, "%s.user.registered", n.name);
    rd_kafka_t *rk;
    rd_kafka_message_t *m = raw_read_one(topic, &rk);
    assert_int_equal(m->key_len, strlen(ew_event_subject(ev)));
    assert_memory_equal(m->key, ew_event_subject(ev), m->key_len);
    rd_kafka_headers_t *h;
    assert_int_equal(rd_kafka_message_headers(m, &h), 0);
    const void *v;
    size_t vn;
    assert_int_equal(rd_kafka_header_get_last(h, "content-type", &v, &vn), 0);
    assert_true(vn >= 28 && memcmp(v, "application/cloudevents+json", 28) == 0);
    ew_event *got;
    assert_int_equal(ew_event_decode(&got, m->payload, m->len, NULL, &err), 0);
    tb_check_sealed(bus, m->payload, m->len, got, ev);
    rd_kafka_message_destroy(m);
    tb_close(bus);
    rd_kafka_destroy(rk);
    ew_event_unref(ev);
}

/* EVENT_MAX_BYTES: an event larger is refused, and a batch holding one publishes nothing. */
static void test_event_max_bytes(void **state)
{
    ns n = new_ns("mb");
    ew_config *cfg = kafka_config(bootstrap(), &n, "kt");
    set(cfg, "EVENT_MAX_BYTES", "1024");
    ew_bus *bus = open_cfg(cfg, NULL);
    char reason[2048], uid[EW_UUID_LEN + 1];
    memset(reason, 'r', sizeof reason - 1);
    reason[sizeof reason - 1] = '\0';
    ew_uuid7(uid);
    ew_user_deactivated d = {.user_id = uid, .reason = reason};
    ew_event *big;
    assert_int_equal(ew_user_deactivated_new(&big, &d, &(ew_event_attrs){.source = "kt"}, NULL), 0);
    ew_event *small1 = tb_event(EW_T_USER_DEACTIVATED, NULL),
             *small2 = tb_event(EW_T_USER_DEACTIVATED, NULL);
    ew_error err = {0};
    assert_int_equal(ew_bus_publish(bus, big, &err), EW_ETOOBIG);
    assert_false(ew_err_retriable(err.code));
    assert_non_null(strstr(err.msg, "EVENT_MAX_BYTES"));
    const ew_event *batch[] = {small1, big, small2};
    assert_int_equal(ew_bus_publish_batch(bus, batch, 3, &err), EW_ETOOBIG);
    assert_non_null(strstr(err.msg, "event 1 of 3"));
    assert_non_null(strstr(err.msg, "nothing published"));
    assert_int_equal(ew_bus_publish(bus, small1, &err), 0);
    tb_close(bus);
    char topic[128];
    snprintf(topic, sizeof topic, "%s.user.deactivated", n.name);
    assert_int_equal(raw_count(topic), 1); /* only the last, lone small one */
    ew_event_unref(big);
    ew_event_unref(small1);
    ew_event_unref(small2);
}

/* The settings at their limits still make a working bus (librdkafka has ranges of its own that
 * the backend must stay inside: socket set-up time, fetch and message sizes). */
static void test_settings_at_their_limits(void **state)
{
    ns n = new_ns("lim");
    ew_config *cfg = kafka_config(bootstrap(), &n, "kt");
    set(cfg, "EVENT_MAX_BYTES", "67108864");
    set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "600000");
    set(cfg, "EVENT_BUS_MAX_IN_FLIGHT", "1");
    set(cfg, "EVENT_BUS_DRAIN_TIMEOUT_MS", "0");
    ew_bus *bus = open_cfg(cfg, NULL);
    atomic_int count = 0;
    tb_subscribe(bus, "user.verified", tb_count, &count, NULL);
    tb_start(bus);
    for (int i = 0; i < 5; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_count(&count, 5, "events handled");
    ew_bus_close(bus); /* may time out: no drain time at all */

    cfg = kafka_config(bootstrap(), &n, "kt");
    set(cfg, "EVENT_MAX_BYTES", "1024");
    set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "100");
    set(cfg, "EVENT_BUS_MAX_IN_FLIGHT", "1000000");
    bus = open_cfg(cfg, NULL);
    atomic_store(&count, 0);
    tb_subscribe(bus, "user.verified", tb_count, &count,
                 &(ew_subscribe_opts){.group = "other", .from_beginning = true});
    tb_start(bus);
    wait_count(&count, 5, "events handled by a second group");
    tb_close(bus);
}

/* ---- reading ------------------------------------------------------------------------------ */

/* The CloudEvents Kafka binding in both modes, as foreign producers write it: structured (with
 * and without the content-type header) and binary (ce_ headers, the value is the data). */
static void test_reads_binary_and_structured(void **state)
{
    ns n = new_ns("bs");
    ew_bus *bus = open_cfg(kafka_config(bootstrap(), &n, "kt"), NULL);
    keep k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    tb_subscribe(bus, "user.verified", keep_fn, &k, NULL);
    tb_start(bus);
    char topic[128];
    snprintf(topic, sizeof topic, "%s.user.verified", n.name);
    const char *uid = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    raw_produce(topic, uid,
                "{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"method\":\"binary\"}",
                "ce_specversion", "1.0", "ce_id", "bin-1", "ce_source", "python-service", "ce_type",
                "user.verified", "ce_subject", uid, "ce_time", "2026-11-27T10:00:00Z",
                "ce_eventversion", "1", "ce_correlationid", "corr-bin", "content-type",
                "application/json", (const char *)NULL);
    raw_produce(topic, uid,
                "{\"specversion\":\"1.0\",\"id\":\"str-1\",\"source\":\"go-service\","
                "\"type\":\"user.verified\",\"subject\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                "\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"method\":"
                "\"structured\"}}",
                "content-type", "application/cloudevents+json", (const char *)NULL);
    raw_produce(topic, NULL,
                "{\"specversion\":\"1.0\",\"id\":\"str-2\",\"source\":\"kcat\",\"type\":\"user."
                "verified\",\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                "\"method\":\"plain\"}}",
                (const char *)NULL);
    wait_count(&k.n, 3, "events handled");
    tb_close(bus);
    int seen = 0;
    for (int i = 0; i < 3; i++) {
        const ew_event *ev = k.evs[i];
        const ew_user_verified *d = ew_user_verified_data(ev);
        assert_non_null(d);
        assert_string_equal(d->user_id, uid);
        if (strcmp(ew_event_id(ev), "bin-1") == 0) {
            seen |= 1;
            assert_string_equal(d->method, "binary");
            assert_string_equal(ew_event_source(ev), "python-service");
            assert_string_equal(ew_event_subject(ev), uid);
            assert_string_equal(ew_event_correlation_id(ev), "corr-bin");
        } else if (strcmp(ew_event_id(ev), "str-1") == 0) {
            seen |= 2;
            assert_string_equal(d->method, "structured");
            assert_string_equal(ew_event_source(ev), "go-service");
        } else if (strcmp(ew_event_id(ev), "str-2") == 0) {
            seen |= 4;
            assert_string_equal(d->method, "plain");
        }
    }
    assert_int_equal(seen, 7);
    keep_release(&k);
}

/* A binary-mode message whose data is not JSON, or whose attributes are wrong, is dead-lettered
 * with what was readable of it. */
static void test_bad_binary_is_dead_lettered(void **state)
{
    ns n = new_ns("bb");
    ew_bus *bus = open_cfg(kafka_config(bootstrap(), &n, "kt"), NULL);
    atomic_int count = 0;
    tb_subscribe(bus, "user.verified", tb_count, &count, &(ew_subscribe_opts){.group = "g1"});
    tb_start(bus);
    char topic[128];
    snprintf(topic, sizeof topic, "%s.user.verified", n.name);
    raw_produce(topic, NULL, "not json", "ce_specversion", "1.0", "ce_id", "bad-1", "ce_source",
                "x", "ce_type", "user.verified", (const char *)NULL);
    raw_produce(topic, NULL, "{\"user_id\":\"nope\",\"method\":\"m\"}", "ce_specversion", "1.0",
                "ce_id", "bad-2", "ce_source", "x", "ce_type", "user.verified", (const char *)NULL);
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_memdlq_count(q) < 2 && ew_mono_ns() < end)
        usleep(5000);
    assert_int_equal(ew_memdlq_count(q), 2);
    for (size_t i = 0; i < 2; i++) {
        ew_memdlq_entry e;
        assert_int_equal(ew_memdlq_get(q, i, &e), 0);
        assert_null(e.event);
        assert_string_equal(e.group, "g1");
        assert_string_equal(e.handler, "<decode>");
        assert_string_equal(e.event_type, "user.verified");
        if (strcmp(e.event_id, "bad-1") == 0)
            assert_non_null(strstr(e.error, "EW_EJSON"));
        else
            assert_non_null(strstr(e.error, "EW_EDATA"));
        /* the payload is the message as structured JSON, attributes and all */
        assert_non_null(strstr(e.payload, "\"specversion\":\"1.0\""));
        assert_non_null(strstr(e.payload, "\"source\":\"x\""));
        /* where it came from: "kafka topic=T partition=P offset=O", exactly */
        char want[256];
        int part = -1;
        long long off = -1;
        snprintf(want, sizeof want, "kafka topic=%s partition=", topic);
        assert_int_equal(strncmp(e.transport, want, strlen(want)), 0);
        assert_int_equal(sscanf(e.transport + strlen(want), "%d offset=%lld", &part, &off), 2);
        assert_true(part >= 0 && off >= 0);
        snprintf(want, sizeof want, "kafka topic=%s partition=%d offset=%lld", topic, part, off);
        assert_string_equal(e.transport, want);
        ew_memdlq_entry_release(&e);
    }
    tb_close(bus);
    assert_int_equal(atomic_load(&count), 0);
}

/* ---- offsets ------------------------------------------------------------------------------ */

typedef struct blocker {
    tb_gate gate;
    atomic_int handled;
    char block_subject[EW_UUID_LEN + 1];
} blocker;

/* Blocks at the gate for one subject; the rest pass. */
static ew_handler_result block_one(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    blocker *b = ud;
    if (strcmp(ew_event_subject(ev), b->block_subject) == 0) tb_gate_pass(&b->gate);
    atomic_fetch_add(&b->handled, 1);
    return EW_HANDLER_OK;
}

/* The group commits offsets only for messages handled, and never past one still in flight:
 * with the first message of a partition held by its handler, messages after it are handled
 * (on other workers) and nothing is committed; once it returns, all ten are. */
static void test_commit_waits_for_the_oldest(void **state)
{
    ns n = new_ns("cm");
    char topic[128], group_id[128];
    snprintf(topic, sizeof topic, "%s.user.logged_in", n.name);
    snprintf(group_id, sizeof group_id, "%s.svc-c", n.name);
    create_topic(topic, 1);
    ew_bus *bus = open_cfg(kafka_config(bootstrap(), &n, "svc-c"), NULL);
    static blocker b = {.gate = TB_GATE_INIT};
    atomic_store(&b.handled, 0);
    ew_event *evs[10];
    for (int i = 0; i < 10; i++)
        evs[i] = tb_event(EW_T_USER_LOGGED_IN, NULL);
    strcpy(b.block_subject, ew_event_subject(evs[0]));
    /* Events go to the worker their subject hashes to: with 32 workers, most of the nine after
     * the held one run on other workers than the held one's, and finish before it. */
    tb_subscribe(bus, "user.logged_in", block_one, &b, &(ew_subscribe_opts){.concurrency = 32});
    tb_start(bus);
    ew_error err = {0};
    assert_int_equal(ew_bus_publish_batch(bus, (const ew_event *const *)evs, 10, &err), 0);
    tb_gate_wait_arrivals(&b.gate, 1);
    wait_count(&b.handled, 5, "events after the held one");
    /* a while for a wrong commit to happen */
    int64_t end = ew_mono_ns() + 1500000000LL;
    while (ew_mono_ns() < end) {
        int64_t off = raw_committed(group_id, topic, 0);
        if (off >= 1) fail_msg("committed %lld while offset 0 is in flight", (long long)off);
        usleep(100000);
    }
    tb_gate_open(&b.gate);
    wait_count(&b.handled, 10, "all ten");
    end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    int64_t off;
    while ((off = raw_committed(group_id, topic, 0)) != 10 && ew_mono_ns() < end)
        usleep(20000);
    assert_int_equal(off, 10);
    tb_close(bus);
    for (int i = 0; i < 10; i++)
        ew_event_unref(evs[i]);
}

/* EVENT_BUS_MAX_IN_FLIGHT bounds what a group holds unfinished. */
static ew_handler_result gate_all(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    blocker *b = ud;
    tb_gate_pass(&b->gate);
    atomic_fetch_add(&b->handled, 1);
    return EW_HANDLER_OK;
}

/* What the dispatcher holds of the subscription: in its handlers and queued for them. */
static uint64_t held(ew_bus *bus)
{
    ew_handler_stats st = tb_stats(bus, 0);
    return st.received + st.queue_depth;
}

static void test_in_flight_bound(void **state)
{
    ns n = new_ns("if");
    ew_config *cfg = kafka_config(bootstrap(), &n, "svc-i");
    set(cfg, "EVENT_BUS_MAX_IN_FLIGHT", "3");
    ew_bus *bus = open_cfg(cfg, NULL);
    static blocker b = {.gate = TB_GATE_INIT};
    tb_subscribe(bus, "user.logged_out", gate_all, &b, &(ew_subscribe_opts){.concurrency = 8});
    tb_start(bus);
    enum { N = 40 };
    for (int i = 0; i < N; i++)
        tb_publish_owned(bus, tb_event(EW_T_USER_LOGGED_OUT, NULL));
    /* Every handler blocks: the group holds three (at the gate, or queued behind one that is
     * when subjects share a worker), and no more come. */
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (held(bus) < 3 && ew_mono_ns() < end)
        usleep(5000);
    assert_int_equal(held(bus), 3);
    usleep(1000000); /* room for a fourth to arrive, which it must not */
    assert_int_equal(held(bus), 3);
    tb_gate_open(&b.gate);
    wait_count(&b.handled, N, "all after the gate opened");
    tb_close(bus);
}

/* ---- patterns ----------------------------------------------------------------------------- */

/* A pattern is a regex subscription: a topic that appears later and matches is consumed too
 * (here a type this build does not know, so it is dead-lettered with its type). */
static void test_pattern_picks_up_new_topics(void **state)
{
    ns n = new_ns("pt");
    ew_bus *bus = open_cfg(kafka_config(bootstrap(), &n, "kt"), NULL);
    atomic_int count = 0;
    tb_subscribe(bus, "user.*", tb_count, &count, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_count(&count, 1, "the first event");
    char topic[128];
    snprintf(topic, sizeof topic, "%s.user.teleported", n.name);
    raw_produce(topic, NULL,
                "{\"specversion\":\"1.0\",\"id\":\"tp-1\",\"source\":\"future-service\","
                "\"type\":\"user.teleported\",\"data\":{}}",
                (const char *)NULL);
    /* not a match: one segment too many */
    snprintf(topic, sizeof topic, "%s.user.teleported.twice", n.name);
    raw_produce(topic, NULL, "{}", (const char *)NULL);
    ew_memdlq *q = ew_bus_dead_letters(bus);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    while (ew_memdlq_count(q) < 1 && ew_mono_ns() < end)
        usleep(10000);
    assert_int_equal(ew_memdlq_count(q), 1);
    ew_memdlq_entry e;
    assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
    assert_string_equal(e.event_id, "tp-1");
    assert_string_equal(e.event_type, "user.teleported");
    assert_non_null(strstr(e.error, "EW_EUNKNOWNTYPE"));
    ew_memdlq_entry_release(&e);
    usleep(300000);
    assert_int_equal(ew_memdlq_count(q), 1);
    tb_close(bus);
}

/* ---- a cluster of the test's own ---------------------------------------------------------- */

typedef struct own_cluster {
    char dir[256], servers[300], url[512];
} own_cluster;

static int run(const char *cmd)
{
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void own_start(own_cluster *c)
{
    const char *src = getenv("EW_SOURCE_DIR"), *build = getenv("EW_BUILD_DIR");
    if (!src || !build) skip();
    snprintf(c->dir, sizeof c->dir, "/tmp/ew-kt-XXXXXX");
    assert_non_null(mkdtemp(c->dir));
    snprintf(c->servers, sizeof c->servers, "%s/servers", c->dir);
    char link[300], target[4200], cmd[9000], path[400];
    snprintf(link, sizeof link, "%s/ew-kafka-mock", c->dir);
    snprintf(target, sizeof target, "%s/ew-kafka-mock", build);
    assert_int_equal(symlink(target, link), 0);
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' start kafka '%s' >/dev/null", src,
             c->servers);
    assert_int_equal(run(cmd), 0);
    snprintf(path, sizeof path, "%s/kafka.url", c->servers);
    read_line(path, c->url, sizeof c->url);
    assert_true(c->url[0] != '\0');
}

static void own_ctl(own_cluster *c, const char *what)
{
    char path[400];
    snprintf(path, sizeof path, "%s/kafka/kafka.ctl", c->servers);
    int fd = open(path, O_WRONLY | O_NONBLOCK);
    assert_true(fd >= 0);
    for (int id = 1; id <= 3; id++) {
        char line[32];
        int n = snprintf(line, sizeof line, "%s %d\n", what, id);
        assert_int_equal(write(fd, line, (size_t)n), n);
    }
    close(fd);
}

static void own_stop(own_cluster *c)
{
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' stop kafka '%s' >/dev/null; rm -rf '%s'",
             getenv("EW_SOURCE_DIR"), c->servers, c->dir);
    run(cmd);
}

/* With every broker down, publish fails with an error worth retrying (after the publish
 * time-out, max(EVENT_BUS_CONNECT_TIMEOUT_MS, 5 s)), and works again once they are back; the
 * consumer resumes by itself. */
static void test_publish_while_brokers_down(void **state)
{
    own_cluster c;
    own_start(&c);
    ns n = new_ns("dn");
    ew_config *cfg = kafka_config(c.url, &n, "kt");
    set(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS", "1000");
    ew_bus *bus = open_cfg(cfg, NULL);
    atomic_int count = 0;
    tb_subscribe(bus, "user.verified", tb_count, &count, NULL);
    tb_start(bus);
    tb_publish_owned(bus, tb_event(EW_T_USER_VERIFIED, NULL));
    wait_count(&count, 1, "before");
    own_ctl(&c, "down");
    usleep(300000);
    ew_event *ev = tb_event(EW_T_USER_VERIFIED, NULL);
    ew_error err = {0};
    int64_t t0 = ew_mono_ns();
    int rc = ew_bus_publish(bus, ev, &err);
    int64_t ms = (ew_mono_ns() - t0) / 1000000;
    ew_event_unref(ev);
    own_ctl(&c, "up");
    if (rc == 0) fail_msg("published with every broker down");
    assert_true(ew_err_retriable(rc));
    assert_true(ms < 20000);
    int64_t end = ew_mono_ns() + (int64_t)WAIT_MS * 1000000;
    ev = tb_event(EW_T_USER_VERIFIED, NULL);
    while ((rc = ew_bus_publish(bus, ev, &err)) != 0) {
        assert_true(ew_err_retriable(rc));
        if (ew_mono_ns() > end) fail_msg("publish after the brokers came back: %s", err.msg);
        usleep(100000);
    }
    ew_event_unref(ev);
    wait_count(&count, 2, "after");
    tb_close(bus);
    own_stop(&c);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_bootstrap_bad_forms),
    cmocka_unit_test(test_bootstrap_good_forms),
    cmocka_unit_test(test_unreachable_broker),
    cmocka_unit_test(test_client_config),
    cmocka_unit_test(test_topic_key_and_header),
    cmocka_unit_test(test_event_max_bytes),
    cmocka_unit_test(test_settings_at_their_limits),
    cmocka_unit_test(test_reads_binary_and_structured),
    cmocka_unit_test(test_bad_binary_is_dead_lettered),
    cmocka_unit_test(test_commit_waits_for_the_oldest),
    cmocka_unit_test(test_in_flight_bound),
    cmocka_unit_test(test_pattern_picks_up_new_topics),
    cmocka_unit_test(test_publish_while_brokers_down),
};

EW_TEST_MAIN(tests)
