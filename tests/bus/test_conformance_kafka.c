/* The bus conformance suite against the Kafka backend, on librdkafka's mock cluster (three
 * brokers in a helper process that speaks the Kafka protocol over TCP).
 * ew-fixture: kafka */
#include <librdkafka/rdkafka.h>
#include "bus/conformance.h"

/* The fixture's bootstrap list, or "" when there is none (the cases then skip). */
static const char *bootstrap(void)
{
    const char *url = ew_test_server_url("kafka");
    return url ? url : "";
}

/* Each test's namespace is its topic prefix and its group prefix. */
static int kafka_configure(ew_config *cfg, const char *ns)
{
    if (!*bootstrap()) return -1;
    ew_error err = {0};
    if (ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", bootstrap(), &err) ||
        ew_config_set(cfg, "KAFKA_TOPIC_PREFIX", ns, &err) ||
        ew_config_set(cfg, "KAFKA_CONSUMER_GROUP", ns, &err))
        fail_msg("%s", err.msg);
    return 0;
}

static int kafka_restart(void)
{
    const char *src = getenv("EW_SOURCE_DIR"), *dir = getenv("EW_SERVERS_DIR");
    if (!src || !dir) return -1;
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "'%s/scripts/test-servers' restart kafka '%s' >/dev/null", src, dir);
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void inject_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    *(rd_kafka_resp_err_t *)m->_private = m->err;
}

/* A foreign producer: the bytes as they are, no headers, to the topic of `type`. */
static int kafka_inject(const char *ns, const char *type, const void *bytes, size_t n)
{
    char errstr[512], topic[256], maxb[32];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    snprintf(maxb, sizeof maxb, "%zu", n + (1u << 20));
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap(), errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "message.max.bytes", maxb, errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr))
        fail_msg("%s", errstr);
    rd_kafka_conf_set_dr_msg_cb(conf, inject_dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) fail_msg("%s", errstr);
    snprintf(topic, sizeof topic, "%s.%s", ns, type);
    rd_kafka_resp_err_t result = RD_KAFKA_RESP_ERR__IN_PROGRESS;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)bytes, n),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(&result), RD_KAFKA_V_END);
    if (!e) rd_kafka_flush(rk, 30000);
    rd_kafka_destroy(rk);
    return !e && result == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

/* Records of the type's topic past the group's committed offsets ({ns}.{group}), summed over
 * its partitions; a partition without a commit counts from its low watermark. */
static long kafka_unsettled(const char *ns, const char *group, const char *type)
{
    char errstr[512], topic[256], gid[256];
    snprintf(topic, sizeof topic, "%s.%s", ns, type);
    snprintf(gid, sizeof gid, "%s.%s", ns, group);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap(), errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr))
        fail_msg("%s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) fail_msg("%s", errstr);
    long n = -1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        md->topic_cnt == 1) {
        int np = md->topics[0].partition_cnt;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
        for (int i = 0; i < np; i++)
            rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id);
        if (rd_kafka_committed(rk, l, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            n = 0;
            for (int i = 0; i < l->cnt && n >= 0; i++) {
                int64_t lo, hi;
                if (rd_kafka_query_watermark_offsets(rk, topic, l->elems[i].partition, &lo, &hi,
                                                     10000)) {
                    n = -1;
                    break;
                }
                int64_t from = l->elems[i].offset >= 0 ? l->elems[i].offset : lo;
                n += hi > from ? (long)(hi - from) : 0;
            }
        }
        rd_kafka_topic_partition_list_destroy(l);
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return n;
}

static const cf_backend kafka_backend = {
    .name = "kafka",
    .configure = kafka_configure,
    .durable = true,
    .at_least_once = true,
    .keeps_history = true,
    .join_redelivers = true, /* the mock cluster; a broker would not */
    .restart_broker = kafka_restart,
    .inject_raw = kafka_inject,
    .unsettled = kafka_unsettled,
};

static const cf_backend *cf_be(void)
{
    return &kafka_backend;
}

static const struct CMUnitTest tests[] = {CF_TESTS, CF_WIRE_TESTS};

EW_TEST_MAIN(tests)
