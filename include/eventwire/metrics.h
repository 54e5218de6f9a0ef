/* eventwire — metrics in the Prometheus text exposition format (version 0.0.4).
 *
 * An ew_metrics is told what to report — a bus, an HTTP server, a service's own database (its
 * outbox), the event store (dead letters, sagas) — and gathers the figures at each scrape: the
 * counters the bus, the dispatcher and the HTTP server keep anyway, a few cheap queries, and the
 * process's own (memory, CPU, file descriptors, start time). Nothing is counted twice and
 * nothing is added to the hot paths for it. Every name starts with eventwire_ (process_ for the
 * process); label values are bounded: event types, groups, handler names, routes, statuses,
 * saga types and states — never ids. docs/metrics.md lists every metric.
 *
 * Threads: set up on one thread before serving; ew_metrics_render() may then run on any
 * thread, several at once. */
#ifndef EVENTWIRE_METRICS_H
#define EVENTWIRE_METRICS_H

#include <stddef.h>
#include "eventwire/bus.h"
#include "eventwire/error.h"
#include "eventwire/http.h"
#include "eventwire/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_metrics ew_metrics;

int ew_metrics_new(ew_metrics **out, ew_error *err);

/* Frees m; what it was given is not touched. NULL is ignored. */
void ew_metrics_free(ew_metrics *m);

/* What a scrape reports. Each is borrowed until m is freed; NULL reports nothing of that kind.
 *   bus:    events published by type, handled by group/handler/type/result, handler durations,
 *           handler queue depth, events pending;
 *   http:   requests by route and status, request durations by route;
 *   outbox: a database with an event_store.outbox table (a service's own): unsent events and
 *           the age of the oldest;
 *   events: the event store: dead letters by status, sagas by type and state, saga deadlines
 *           that passed. */
void ew_metrics_set_bus(ew_metrics *m, ew_bus *bus);
void ew_metrics_set_http(ew_metrics *m, ew_http_server *http);
void ew_metrics_set_outbox(ew_metrics *m, ew_store *outbox);
void ew_metrics_set_event_store(ew_metrics *m, ew_store *events);

/* Every metric as exposition text. *out is malloc'ed (the caller frees it), *len its length.
 * A query that fails leaves its metrics out and is reported as eventwire_scrape_errors_total;
 * the rest is still rendered. EW_ENOMEM. */
int ew_metrics_render(ew_metrics *m, char **out, size_t *len, ew_error *err);

/* An HTTP handler that answers with ew_metrics_render(ud) as text/plain; version=0.0.4:
 *   ew_http_route(server, "GET /metrics", 0, ew_metrics_http_handler, m, &err); */
void ew_metrics_http_handler(const ew_http_request *req, ew_http_response *res, void *ud);

#ifdef __cplusplus
}
#endif
#endif
