/* eventwire — redeliveries (redeliver.h): the envelope that hands an event back to one group. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bus/dispatch.h"
#include "bus/receive.h"
#include "bus/redeliver.h"
#include "catalog/event_internal.h"
#include "security/keyring.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"

int ew__redelivery_new(ew_event **out, struct ew__keyring *keys, const char *source,
                       const char *group, const char *handler, int64_t dead_letter_id,
                       const ew_event *ev, ew_error *err)
{
    char *json;
    ew_event *sealed = NULL;
    /* The event inside as it was received when it was (a dead letter, a stored event decoded
     * and upcast): its tag covers that form. */
    const ew_event *inner = ew__event_received(ev);
    int rc = keys ? ew__keyring_seal(keys, inner, &sealed, err) : 0;
    if (!rc) rc = ew_event_encode(sealed ? sealed : inner, &json, NULL, err);
    ew_event_unref(sealed);
    if (rc) return rc;
    ew_bus_redelivery data = {
        .group = group,
        .handler = handler,
        .dead_letter_id = dead_letter_id > 0 ? dead_letter_id : 0,
        .event = json,
    };
    ew_event_attrs a = {
        .source = source,
        .subject = ew_event_subject(ev),
        .correlation_id = ew_event_correlation_id(ev),
        .causation_id = ew_event_id(ev),
        .traceparent = ew_event_traceparent(ev),
    };
    rc = ew_bus_redelivery_new(out, &data, &a, err);
    free(json);
    return rc;
}

/* The delivery of the event inside, which lives until its handlers are done with it. */
typedef struct redelivery {
    ew_delivery dl;     /* first member: done() gets &dl */
    ew_event *ev;       /* our reference to the event inside */
    ew_delivery *outer; /* the eventwire.redelivery delivery, when it wants done() */
    ew_dispatcher *d;
    int64_t dead_letter_id;
    char *group, *handler; /* copies: the outer event is only borrowed for the call */
} redelivery;

static void finish(ew_delivery *outer, ew_delivery_outcome outcome)
{
    if (outer && outer->done) outer->done(outer, outcome);
}

static void redelivery_free(redelivery *r)
{
    ew_event_unref(r->ev);
    free(r->group);
    free(r->handler);
    free(r);
}

static void redelivery_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    redelivery *r = (redelivery *)dl;
    const ew_dlq_sink *sink = ew__dispatch_sink(r->d);
    if (outcome == EW_DELIVERY_ACK && r->dead_letter_id > 0 && !atomic_load(&dl->ew__failed) &&
        sink->ops->version >= 2 && sink->ops->resolved) {
        ew_error e = {0};
        if (sink->ops->resolved(sink->self, r->dead_letter_id, &e))
            ew__dispatch_log(r->d, EW_LOG_ERROR, NULL,
                             "dead letter %lld was handled, but marking it resolved failed: %s",
                             (long long)r->dead_letter_id, e.msg);
    }
    ew_delivery *outer = r->outer;
    redelivery_free(r);
    finish(outer, outcome);
}

/* A redelivery that cannot be carried out: its event goes to the dead letter sink with the reason
 * (for the event inside when it decoded, else as the raw text), and the outer delivery is done. */
static int refuse(ew_dispatcher *d, ew_delivery *outer, const ew_bus_redelivery *rd,
                  const ew_event *inner, const char *reason, ew_error *err)
{
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = inner,
        .payload = inner ? NULL : rd->event,
        .payload_len = inner ? 0 : strlen(rd->event),
        .event_id = inner ? ew_event_id(inner) : ew_event_id(outer->event),
        .event_type = inner ? ew_event_type(inner) : ew_event_type(outer->event),
        .group = rd->group,
        .handler = rd->handler ? rd->handler : "*",
        .error = reason,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
    };
    const ew_dlq_sink *sink = ew__dispatch_sink(d);
    ew_error e = {0};
    if (sink->ops->put(sink->self, &dl, &e))
        return ew_error_set(err, e.code ? e.code : EW_EIO,
                            "redelivery %s could not be dead-lettered: %s",
                            ew_event_id(outer->event), e.msg);
    ew__dispatch_log(d, EW_LOG_WARN, outer->event, "redelivery %s to %s/%s dead-lettered: %s",
                     ew_event_id(outer->event), rd->group, dl.handler, reason);
    finish(outer, EW_DELIVERY_ACK);
    return 0;
}

int ew__redelivery_deliver(ew_dispatcher *d, ew_delivery *outer, ew_error *err)
{
    const ew_bus_redelivery *rd = ew_bus_redelivery_data(outer->event);
    if (!rd) return ew_error_set(err, EW_EINVAL, "not a redelivery");
    /* Every group receives every redelivery; only the one it names does something with it. */
    if ((outer->group && strcmp(outer->group, rd->group) != 0) ||
        !ew__dispatch_has(d, rd->group, NULL, NULL)) {
        finish(outer, EW_DELIVERY_ACK);
        return 0;
    }
    ew_event *ev = NULL;
    ew_error e = {0};
    char why[400];
    if (ew_event_decode(&ev, rd->event, strlen(rd->event), NULL, &e)) {
        snprintf(why, sizeof why, "the event inside redelivery %s does not decode: %s",
                 ew_event_id(outer->event), e.msg);
        return refuse(d, outer, rd, NULL, why, err);
    }
    if (ew_event_type_id(ev) == EW_T_BUS_REDELIVERY) {
        int rc = refuse(d, outer, rd, ev, "a redelivery inside a redelivery is refused", err);
        ew_event_unref(ev);
        return rc;
    }
    /* The event inside is checked as one from the wire is: a redelivery carries what it is
     * given, and only the event's own tag says who made it. */
    if (ew__dispatch_verify(d, ev, &e)) {
        snprintf(why, sizeof why, "%s: the event inside redelivery %s: %s", ew_err_name(e.code),
                 ew_event_id(outer->event), e.msg);
        int rc = refuse(d, outer, rd, ev, why, err);
        ew_event_unref(ev);
        return rc;
    }
    /* and decrypted as one from the wire is */
    ew_event *plain = NULL;
    if (ew__recv_decrypt(ew__dispatch_bus(d), ev, &plain, &e)) {
        snprintf(why, sizeof why, "%s: the event inside redelivery %s: %s", ew_err_name(e.code),
                 ew_event_id(outer->event), e.msg);
        int rc = refuse(d, outer, rd, ev, why, err);
        ew_event_unref(ev);
        return rc;
    }
    if (plain) {
        ew_event_unref(ev);
        ev = plain;
    }
    redelivery *r = calloc(1, sizeof *r);
    if (r) {
        r->ev = ev;
        r->group = strdup(rd->group);
        r->handler = rd->handler ? strdup(rd->handler) : NULL;
    }
    if (!r || !r->group || (rd->handler && !r->handler)) {
        if (r)
            redelivery_free(r);
        else
            ew_event_unref(ev);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    r->dl.event = ev;
    r->dl.group = r->group;
    r->dl.name = r->handler;
    r->dl.done = redelivery_done;
    r->outer = outer->done ? outer : NULL;
    r->d = d;
    r->dead_letter_id = rd->dead_letter_id;
    int rc = ew__dispatch_deliver(d, &r->dl, &e);
    if (rc == 0) return 0; /* r is the dispatcher's now, and may be gone already */
    if (rc == EW_ENOMEM) {
        redelivery_free(r);
        return ew_error_set(err, rc, "%s", e.msg);
    }
    /* The handler is not in this process, or does not take the event's type. */
    rc = refuse(d, outer, rd, ev, e.msg, err);
    redelivery_free(r);
    return rc;
}
