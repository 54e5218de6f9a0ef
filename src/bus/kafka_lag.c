/* eventwire — the Kafka backend's consumer lag (ew_bus_ops.lag): for the group's consumer group
 * (KAFKA_CONSUMER_GROUP.group), the committed offset of every partition of the bus's topics
 * (KAFKA_TOPIC_PREFIX.*) from the group coordinator (OffsetFetch), and each such partition's end
 * (the high watermark): lag is the sum of end − committed. A partition the group has committed
 * nothing in is not counted (the group does not consume it, or has not finished its first
 * event there). Asked with a consumer handle of its own that joins nothing. */
#ifdef EW_HAVE_KAFKA

#include <stdlib.h>
#include <string.h>
#include "bus/kafka.h"

int ew__kf_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err)
{
    kafka *k = self;
    if (!group)
        return ew_error_set(err, EW_ENOTSUP,
                            "kafka bus: consumer groups are not listed; name the group");
    int rc = 0;
    char errstr[512];
    char *gid = ew__kf_join(k->group_prefix, group);
    char *tprefix = ew__kf_join(k->prefix, "");
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (!gid || !tprefix) {
        rc = ew__kf_oom(err);
        goto out;
    }
    if (!(conf = ew__kf_conf_common(k, err)) || (rc = ew__kf_conf_client(k, conf, err)) ||
        (rc = ew__kf_conf_set(conf, "group.id", gid, err)) ||
        (rc = ew__kf_conf_set(conf, "enable.auto.commit", "false", err))) {
        rc = rc ? rc : err && err->code ? err->code : EW_ENOMEM;
        goto out;
    }
    if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr))) {
        rc = ew_error_set(err, EW_ECONFIG, "kafka bus: %s", errstr);
        goto out;
    }
    conf = NULL; /* the handle has it */
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, k->publish_timeout_ms);
    if (e) {
        rc = ew_error_set(err, ew__kf_map_err(e), "kafka bus: metadata from %s: %s", k->bootstrap,
                          rd_kafka_err2str(e));
        goto out;
    }
    size_t np = strlen(tprefix);
    if (!(parts = rd_kafka_topic_partition_list_new(16))) {
        rc = ew__kf_oom(err);
        goto out;
    }
    for (int t = 0; t < md->topic_cnt; t++) {
        const struct rd_kafka_metadata_topic *mt = &md->topics[t];
        if (mt->err || strncmp(mt->topic, tprefix, np) != 0) continue;
        for (int p = 0; p < mt->partition_cnt; p++)
            rd_kafka_topic_partition_list_add(parts, mt->topic, mt->partitions[p].id);
    }
    bool found = false;
    uint64_t lag = 0;
    if (parts->cnt) {
        e = rd_kafka_committed(rk, parts, k->publish_timeout_ms);
        if (e) {
            rc = ew_error_set(err, ew__kf_map_err(e), "kafka bus: offsets of group %s: %s", gid,
                              rd_kafka_err2str(e));
            goto out;
        }
        for (int i = 0; i < parts->cnt; i++) {
            rd_kafka_topic_partition_t *tp = &parts->elems[i];
            if (tp->err || tp->offset < 0) continue;
            int64_t lo, hi;
            e = rd_kafka_query_watermark_offsets(rk, tp->topic, tp->partition, &lo, &hi,
                                                 k->publish_timeout_ms);
            if (e) {
                rc = ew_error_set(err, ew__kf_map_err(e), "kafka bus: end of %s [%d]: %s",
                                  tp->topic, (int)tp->partition, rd_kafka_err2str(e));
                goto out;
            }
            found = true;
            if (hi > tp->offset) lag += (uint64_t)(hi - tp->offset);
        }
    }
    if (!found) {
        rc = ew_error_set(err, EW_ENOTFOUND,
                          "kafka bus: consumer group %s has committed no offset in %s*", gid,
                          tprefix);
        goto out;
    }
    fn(ud, group, lag);
out:
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    if (md) rd_kafka_metadata_destroy(md);
    if (rk) rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    if (conf) rd_kafka_conf_destroy(conf);
    free(tprefix);
    free(gid);
    return rc;
}

#else
typedef int ew__kafka_lag_unused;
#endif
