/* eventwire — exporting spans to an OpenTelemetry collector (OTLP over HTTP, JSON encoding).
 *
 * ew_otlp_span() is an ew_span_fn: give it, with the exporter as its ud, to a bus's and an HTTP
 * server's options. It copies the span into a bounded queue and returns at once; a thread of the
 * exporter sends the queue in batches (POST ENDPOINT/v1/traces) at least every interval_ms. A
 * span that finds the queue full, or whose batch the collector did not take, is dropped and
 * counted: tracing never blocks a handler nor grows without bound. The services start one when
 * OTEL_EXPORTER_OTLP_ENDPOINT is set. */
#ifndef EVENTWIRE_OTLP_H
#define EVENTWIRE_OTLP_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"
#include "eventwire/log.h"
#include "eventwire/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_otlp ew_otlp;

typedef struct ew_otlp_options {
    const char *endpoint;     /* required: "http://127.0.0.1:4318" (spans go to …/v1/traces) */
    const char *service_name; /* the resource's service.name; NULL: "eventwire" */
    size_t max_queue;         /* spans waiting at most; 0: 4096 */
    size_t batch_max;         /* spans per request at most; 0: 512 */
    int interval_ms;          /* a batch goes out at least this often; 0: 1000 */
    int timeout_ms;           /* per request; 0: 2000 */
    ew_log_fn log;            /* NULL: silent */
    void *log_ud;
} ew_otlp_options;

/* Starts the exporter's thread. EW_EINVAL without an endpoint, EW_ENOMEM. */
int ew_otlp_new(ew_otlp **out, const ew_otlp_options *opts, ew_error *err);

/* Sends what is queued (within one timeout), stops the thread, frees. NULL is ignored. Call it
 * after whatever reports spans to it has stopped. */
void ew_otlp_free(ew_otlp *x);

/* The span callback: ud is the exporter. Any thread; never blocks on the network. */
void ew_otlp_span(void *ud, const ew_span *span);

typedef struct ew_otlp_stats {
    uint64_t exported; /* spans the collector accepted */
    uint64_t dropped;  /* spans lost: queue full, or their request failed */
    uint64_t requests_failed;
    uint64_t queued; /* waiting now */
} ew_otlp_stats;

void ew_otlp_stats_get(ew_otlp *x, ew_otlp_stats *out);

#ifdef __cplusplus
}
#endif
#endif
