/* eventwire — the memory backend: in-process queues and worker threads, for tests.
 *
 * Publishing hands each event straight to the dispatcher, which queues it for every subscription
 * that exists at that moment (events published before ew_bus_start() wait in those queues and
 * run at start; an event that no subscription matches is dropped, and still counts as
 * published). Nothing is durable: publish returns once the event is queued, and what is still
 * queued when the bus closes after its drain time-out is lost (and logged). There is no history,
 * so ew_subscribe_opts.from_beginning has nothing to replay (no subscribed() op at all). */
#include <stdlib.h>
#include <string.h>
#include "bus/backend.h"
#include "bus/dispatch.h"
#include "bus/receive.h"

typedef struct memory {
    ew_bus *bus;
    ew_dispatcher *disp;
} memory;

static int mem_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    memory *m = malloc(sizeof *m);
    if (!m) return ew_error_set(err, EW_ENOMEM, "out of memory");
    m->bus = bus;
    m->disp = ew__bus_dispatcher(bus);
    *self = m;
    return 0;
}

static int mem_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                       const ew__batch *batch, ew_error *err)
{
    memory *m = self;
    for (size_t i = 0; i < n; i++) {
        /* No bytes to decode, but the same verify, decrypt and count points as every backend
         * (receive.h); a refused event is dead-lettered and counts as published. */
        ew_event *repl;
        ew_error ae = {0};
        int arc = ew__recv_accept(m->bus, evs[i], &repl, &ae);
        if (arc) {
            ew__recv_refused(m->bus, evs[i], NULL, "memory", arc, ae.msg, NULL, NULL);
            continue;
        }
        ew_delivery dl = {.event = repl ? repl : evs[i]};
        int rc = ew__dispatch_deliver(m->disp, &dl, err);
        ew_event_unref(repl);
        if (rc) {
            *npublished = i;
            if (n > 1 && err) {
                ew_error inner = *err;
                ew_error_set(err, rc, "event %zu of %zu not published: %s", i, n, inner.msg);
            }
            return rc;
        }
    }
    *npublished = n;
    return 0;
}

/* What one handler has not finished: queued, plus the one it runs (received counts every call,
 * retries too, and each call ends as a retry, ok, fail or duplicate). */
static uint64_t handler_lag(const ew_handler_stats *hs)
{
    uint64_t ended = hs->retried + hs->handled + hs->dead_lettered + hs->duplicates;
    return hs->queue_depth + (hs->received > ended ? hs->received - ended : 0);
}

/* The memory bus has no record of a group but its subscriptions in this process: a group's lag
 * is the most any of its handlers has not finished (each handler gets every event of the
 * group). */
static int mem_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err)
{
    memory *m = self;
    size_t n = ew__dispatch_count(m->disp);
    ew_handler_stats *hs = n ? malloc(n * sizeof *hs) : NULL;
    const char **names = n ? malloc(n * sizeof *names) : NULL;
    uint64_t *lags = n ? calloc(n, sizeof *lags) : NULL;
    if (n && (!hs || !names || !lags)) {
        free(hs);
        free(names);
        free(lags);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    size_t ng = 0; /* distinct groups so far, in names[] */
    for (size_t i = 0; i < n; i++) {
        if (ew__dispatch_stats(m->disp, i, &hs[i]) || !hs[i].group) continue;
        if (group && strcmp(hs[i].group, group) != 0) continue;
        size_t k = ng;
        while (k > 0 && strcmp(names[k - 1], hs[i].group) != 0)
            k--;
        if (k == 0) {
            names[ng] = hs[i].group;
            k = ++ng;
        }
        uint64_t l = handler_lag(&hs[i]);
        if (l > lags[k - 1]) lags[k - 1] = l;
    }
    for (size_t k = 0; k < ng; k++)
        if (fn(ud, names[k], lags[k])) break;
    free(hs);
    free(names);
    free(lags);
    if (group && !ng)
        return ew_error_set(err, EW_ENOTFOUND, "memory bus: no subscription of group %s", group);
    return 0;
}

static void mem_close(void *self)
{
    free(self);
}

const ew_bus_ops ew__bus_memory_ops = {
    .name = "memory",
    .open = mem_open,
    .publish = mem_publish,
    .subscribed = NULL,
    .start = NULL,
    .stop = NULL,
    .close = mem_close,
    .lag = mem_lag,
};
