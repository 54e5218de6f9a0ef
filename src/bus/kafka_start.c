/* eventwire — the Kafka backend, where a new group starts: the offsets recorded when a group
 * subscribes, used at its first assignment, and committed then. */
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

/* ---- where a new group starts --------------------------------------------------------------- */

/* What librdkafka offers for "a group new to Kafka" is auto.offset.reset, earliest or latest,
 * applied when the consumer first fetches: after the group's first join, which takes seconds
 * (about 3 s on the mock cluster). latest would lose what is published between subscribe and
 * that join; earliest replays everything for a group that asked for events from now on. So the
 * bus decides itself: when a group subscribes, it records the end offset of every partition of
 * the topics the pattern matches (from_beginning: their beginning), and when the group is first
 * assigned a partition on which it has committed nothing, it starts there (a partition that did
 * not exist at subscribe time: at its beginning, as everything in it came later) and commits
 * that position at once, so that from then on the group is known to Kafka and resumes where it
 * left off. End offsets rather than a timestamp (ListOffsets by time, rd_kafka_offsets_for_times):
 * they need no clock, and librdkafka's mock cluster, which the tests run on, answers -1 to every
 * query by time. docs/bus-kafka.md has the same in words. */

static kstart *start_find(kgroup *g, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < g->nstarts; i++)
        if (g->starts[i].partition == partition && strcmp(g->starts[i].topic, topic) == 0)
            return &g->starts[i];
    return NULL;
}

/* Adds (topic, partition) → offset unless the partition has a start already (the first
 * subscription that covers it decides). Under g->mu. */
static int start_add(kgroup *g, const char *topic, int32_t partition, int64_t offset)
{
    if (start_find(g, topic, partition)) return 0;
    if (g->nstarts == g->capstarts) {
        size_t cap = g->capstarts ? 2 * g->capstarts : 16;
        kstart *v = realloc(g->starts, cap * sizeof *v);
        if (!v) return -1;
        g->starts = v;
        g->capstarts = cap;
    }
    char *t = strdup(topic);
    if (!t) return -1;
    g->starts[g->nstarts++] = (kstart){t, partition, offset};
    return 0;
}

/* The topic of a type this pattern matches: {prefix}.{type} with type matching. */
static bool topic_matches(const kafka *k, const char *topic, const char *pattern)
{
    size_t np = strlen(k->prefix);
    return strncmp(topic, k->prefix, np) == 0 && topic[np] == '.' && topic[np + 1] &&
           ew_pattern_match(pattern, topic + np + 1);
}

/* Records where group g starts on each partition that exists now of the topics pattern matches:
 * at its end offset, or at its beginning with from_beginning. Asks the cluster for its topics
 * and (without from_beginning) for their end offsets: fails with EW_ECONNECT when it cannot
 * answer, since a group that asked for the events from now on would otherwise replay the past. */
int ew__kf_record_starts(kafka *k, kgroup *g, const char *pattern, bool from_beginning,
                         ew_error *err)
{
    pthread_rwlock_rdlock(&k->plock);
    rd_kafka_t *rk = k->prod->rk;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, k->publish_timeout_ms);
    rd_kafka_topic_partition_list_t *l = NULL;
    int rc = 0;
    if (e) {
        if (from_beginning) {
            /* a partition without a recorded start starts at its beginning anyway */
            ew__bus_log(k->bus, EW_LOG_WARN, "kafka group %s: cannot list the topics of %s: %s",
                        g->group_id, pattern, rd_kafka_err2str(e));
        } else {
            rc = ew_error_set(err, ew__kf_map_err(e) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                              "kafka group %s: cannot list the topics of %s at %s to start from "
                              "their end: %s",
                              g->group_id, pattern, k->bootstrap, rd_kafka_err2str(e));
        }
        goto out;
    }
    if (!(l = rd_kafka_topic_partition_list_new(16))) {
        rc = ew__kf_oom(err);
        goto out;
    }
    pthread_mutex_lock(&g->mu);
    for (int t = 0; t < md->topic_cnt; t++) {
        const struct rd_kafka_metadata_topic *mt = &md->topics[t];
        if (mt->err || !topic_matches(k, mt->topic, pattern)) continue;
        for (int i = 0; i < mt->partition_cnt; i++)
            if (!start_find(g, mt->topic, mt->partitions[i].id))
                rd_kafka_topic_partition_list_add(l, mt->topic, mt->partitions[i].id)->offset =
                    from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
    }
    pthread_mutex_unlock(&g->mu);
    /* With the offset RD_KAFKA_OFFSET_END as the "timestamp", ListOffsets answers the end. */
    if (!from_beginning && l->cnt > 0 &&
        (e = rd_kafka_offsets_for_times(rk, l, k->publish_timeout_ms))) {
        rc = ew_error_set(err, ew__kf_map_err(e) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                          "kafka group %s: cannot read the end offsets of the topics of %s at %s: "
                          "%s",
                          g->group_id, pattern, k->bootstrap, rd_kafka_err2str(e));
        goto out;
    }
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < l->cnt && !rc; i++) {
        const rd_kafka_topic_partition_t *tp = &l->elems[i];
        if (tp->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) continue; /* gone meanwhile */
        if (tp->err || (!from_beginning && tp->offset < 0)) {
            rc = ew_error_set(err, ew__kf_map_err(tp->err) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                              "kafka group %s: cannot read the end offset of %s [%d]: %s",
                              g->group_id, tp->topic, (int)tp->partition,
                              tp->err ? rd_kafka_err2str(tp->err) : "no offset");
            break;
        }
        if (start_add(g, tp->topic, tp->partition, tp->offset)) rc = ew__kf_oom(err);
    }
    pthread_mutex_unlock(&g->mu);
    if (!rc)
        ew__bus_log(k->bus, EW_LOG_DEBUG,
                    "kafka group %s: %s: %d partitions start at their %s if the group is new",
                    g->group_id, pattern, l->cnt, from_beginning ? "beginning" : "end");
out:
    if (l) rd_kafka_topic_partition_list_destroy(l);
    if (md) rd_kafka_metadata_destroy(md);
    pthread_rwlock_unlock(&k->plock);
    return rc;
}

/* On assignment (consumer thread, in the rebalance callback): partitions where the group has a
 * committed offset resume there; the others start where record_starts said (at the beginning
 * when it said nothing: the partition came later), and that position is committed at once. When
 * the committed offsets cannot be read, the offsets are left to librdkafka (committed, else
 * auto.offset.reset=earliest): at worst a replay, never a loss. */
void ew__kf_set_start_offsets(kgroup *g, rd_kafka_topic_partition_list_t *parts)
{
    kafka *k = g->k;
    if (parts->cnt == 0) return;
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_copy(parts);
    if (!c) return;
    rd_kafka_resp_err_t e = rd_kafka_committed(g->rk, c, k->publish_timeout_ms);
    if (e) {
        ew__bus_log(k->bus, EW_LOG_WARN,
                    "kafka group %s: cannot read its committed offsets (%s): partitions new to "
                    "it start at their beginning",
                    g->group_id, rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_destroy(c);
        return;
    }
    rd_kafka_topic_partition_list_t *fresh = rd_kafka_topic_partition_list_new(c->cnt);
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < c->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &c->elems[i];
        if (tp->err) continue; /* librdkafka finds its position itself */
        rd_kafka_topic_partition_t *dst =
            rd_kafka_topic_partition_list_find(parts, tp->topic, tp->partition);
        if (!dst) continue;
        if (tp->offset >= 0) {
            dst->offset = tp->offset; /* the group's own position */
            continue;
        }
        const kstart *st = start_find(g, tp->topic, tp->partition);
        dst->offset = st ? st->offset : RD_KAFKA_OFFSET_BEGINNING;
        if (fresh)
            rd_kafka_topic_partition_list_add(fresh, tp->topic, tp->partition)->offset =
                dst->offset;
    }
    pthread_mutex_unlock(&g->mu);
    rd_kafka_topic_partition_list_destroy(c);
    if (!fresh || fresh->cnt == 0 || g->ephemeral) goto out;

    /* A commit needs real offsets: the beginnings become their partitions' first offsets. */
    rd_kafka_topic_partition_list_t *begin = rd_kafka_topic_partition_list_new(fresh->cnt);
    for (int i = 0; begin && i < fresh->cnt; i++)
        if (fresh->elems[i].offset == RD_KAFKA_OFFSET_BEGINNING)
            rd_kafka_topic_partition_list_add(begin, fresh->elems[i].topic,
                                              fresh->elems[i].partition)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
    if (begin && begin->cnt > 0 &&
        rd_kafka_offsets_for_times(g->rk, begin, k->publish_timeout_ms) == 0) {
        for (int i = 0; i < begin->cnt; i++) {
            const rd_kafka_topic_partition_t *b = &begin->elems[i];
            rd_kafka_topic_partition_t *f =
                rd_kafka_topic_partition_list_find(fresh, b->topic, b->partition);
            if (f && !b->err && b->offset >= 0) f->offset = b->offset;
        }
    }
    if (begin) rd_kafka_topic_partition_list_destroy(begin);
    /* commit only what is known exactly; a logical beginning left over is found again next time */
    rd_kafka_topic_partition_list_t *commit_l = rd_kafka_topic_partition_list_new(fresh->cnt);
    for (int i = 0; commit_l && i < fresh->cnt; i++) {
        const rd_kafka_topic_partition_t *f = &fresh->elems[i];
        ew__bus_log(k->bus, EW_LOG_DEBUG, "kafka group %s: %s [%d] is new to it: starts at %lld",
                    g->group_id, f->topic, (int)f->partition, (long long)f->offset);
        if (f->offset >= 0)
            rd_kafka_topic_partition_list_add(commit_l, f->topic, f->partition)->offset = f->offset;
    }
    if (commit_l && commit_l->cnt > 0 && (e = rd_kafka_commit(g->rk, commit_l, 0)))
        ew__bus_log(k->bus, EW_LOG_WARN,
                    "kafka group %s: cannot commit where it starts (%s): a restart before its "
                    "first commit looks for the start again",
                    g->group_id, rd_kafka_err2str(e));
    if (commit_l) rd_kafka_topic_partition_list_destroy(commit_l);
out:
    if (fresh) rd_kafka_topic_partition_list_destroy(fresh);
}

#else
typedef int ew__kafka_start_unused;
#endif
