/* eventwire — the RabbitMQ backend's consumer lag (ew_bus_ops.lag) of the group's queue
 * ({exchange}.{group}). With RABBITMQ_MANAGEMENT_URL: its ready plus unacknowledged messages,
 * from the management plugin's HTTP API (rabbitmq_mgmt.c), as the plugin last collected them.
 * Without: the ready messages alone, from a passive queue.declare on a connection of its own
 * (AMQP does not tell the messages delivered to a consumer and not yet acknowledged). A broker's
 * queues cannot be listed over AMQP, so the group must be named. */
#ifdef EW_HAVE_RABBITMQ

#include <stdio.h>
#include "bus/rabbitmq.h"

int ew__mq_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err)
{
    rmq *r = self;
    if (!group)
        return ew_error_set(err, EW_ENOTSUP,
                            "rabbitmq bus: queues are not listed over AMQP; name the group");
    char queue[2 * AMQP_NAME_MAX];
    int ql = snprintf(queue, sizeof queue, "%s.%s", r->exchange, group);
    if (ql < 0 || ql > AMQP_NAME_MAX)
        return ew_error_set(err, EW_EINVAL, "the queue name of group %.40s... is too long", group);
    if (r->mgmt_base) {
        uint64_t ready = 0, unacked = 0;
        int rc = ew__mq_mgmt_queue(r, queue, &ready, &unacked, err);
        if (rc) return rc;
        fn(ud, group, ready + unacked);
        return 0;
    }
    amqp_connection_state_t st;
    int rc = ew__mq_conn_open(r, &st, err);
    if (rc) return rc;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(st, CHANNEL, amqp_cstring_bytes(queue),
                                                     1 /* passive */, 0, 0, 0, amqp_empty_table);
    if (!ok) {
        amqp_rpc_reply_t rr = amqp_get_rpc_reply(st);
        if (rr.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
            rr.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
            ((const amqp_channel_close_t *)rr.reply.decoded)->reply_code == AMQP_NOT_FOUND) {
            rc = ew_error_set(err, EW_ENOTFOUND, "rabbitmq bus: no queue %s on %s", queue, r->addr);
            /* the channel is closed: the connection goes without it */
            amqp_connection_close(st, AMQP_REPLY_SUCCESS);
            amqp_destroy_connection(st);
            return rc;
        }
        rc = ew__mq_rpc_check(st, EW_EIO, err, "rabbitmq bus: queue.declare (passive)");
        if (!rc) rc = ew_error_set(err, EW_EIO, "rabbitmq bus: queue.declare (passive) failed");
        amqp_destroy_connection(st);
        return rc;
    }
    uint64_t ready = ok->message_count;
    ew__mq_conn_close(st);
    fn(ud, group, ready);
    return 0;
}

#else
typedef int ew__rabbitmq_lag_unused;
#endif
