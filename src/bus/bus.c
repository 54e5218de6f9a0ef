/* eventwire — the public bus: opens the backend that EVENT_BUS_TYPE names (from the table in
 * backend.h), wires it to the dispatcher, and implements the ew_bus_* calls on top of both.
 * Nothing here knows a particular backend. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/log.h"
#include "bus/backend.h"
#include "store/store_bus.h"
#include "bus/dispatch.h"
#include "bus/receive.h"
#include "bus/redeliver.h"
#include "security/evauth_internal.h"
#include "security/keyring.h"
#include "eventwire/bus.h"
#include "eventwire/catalog.h"

#define MAX_CONCURRENCY 1024
#define MAX_NAME 200

struct ew_bus {
    const ew_bus_ops *ops;
    void *be; /* the backend's state */
    ew_dispatcher *disp;
    ew_config *cfg;
    ew_log_fn log;
    void *log_ud;
    ew_memdlq *own_dlq; /* when the options gave no sink */
    ew_dlq_sink dlq;
    ew_inbox inbox;
    ew_store *audit;     /* ENABLE_EVENT_STORE: every published event is recorded here first */
    bool no_metrics;     /* ENABLE_METRICS=false: no counts by type shown, no handler times */
    ew_evauth *auth;     /* ew_bus_options.auth: borrowed */
    bool sign;           /* auth, and a backend that carries events between processes */
    const char *service; /* in cfg */
    ew__keyring *keys;   /* EVENT_ENCRYPTION: seals what is published, opens what is received */
    bool keep_encrypted; /* received events are not decrypted (ewctl tail) */
    int max_attempts, backoff_ms, backoff_max_ms, drain_ms;

    pthread_mutex_t mu; /* serialises subscribe and start (and the backend's view of them) */
    bool started;
    atomic_bool closed;
    /* Events published, by type id; the last for types outside the catalog. One count per
     * event whether metrics are on or off (a locked add is most of what counting costs): the
     * total is their sum, and ENABLE_METRICS=false only hides the split (ew_bus_published_count).
     */
    _Alignas(64) atomic_uint_fast64_t published[EW_T__COUNT + 1];
    atomic_uint_fast64_t publish_errors;
};

#define EW__BUS_TABLE_ENTRY(name) &ew__bus_##name##_ops,
static const ew_bus_ops *const backends[] = {EW_BUS_BACKENDS(EW__BUS_TABLE_ENTRY)};
#undef EW__BUS_TABLE_ENTRY
#define NBACKENDS (sizeof backends / sizeof backends[0])

/* ---- for backends ------------------------------------------------------------------------ */

ew_dispatcher *ew__bus_dispatcher(ew_bus *bus)
{
    return bus->disp;
}

ew__keyring *ew__bus_keyring(const ew_bus *bus)
{
    return bus->keys;
}

void ew__bus_keep_encrypted(ew_bus *bus)
{
    bus->keep_encrypted = true;
}

bool ew__bus_keeps_encrypted(const ew_bus *bus)
{
    return bus->keep_encrypted;
}

ew_evauth *ew__bus_auth(const ew_bus *bus)
{
    return bus->sign ? bus->auth : NULL;
}

static int verify_redelivered(void *self, const ew_event *ev, ew_error *err)
{
    return ew__recv_verify(self, ev, err);
}

const char *ew__bus_service(const ew_bus *bus)
{
    return bus->service;
}

int ew__bus_dead_letter(ew_bus *bus, const ew_dead_letter *dl, ew_error *err)
{
    return bus->dlq.ops->put(bus->dlq.self, dl, err);
}

void ew__bus_log_record(ew_bus *bus, const ew_log_record *rec)
{
    if (bus->log) bus->log(bus->log_ud, rec);
}

void ew__bus_log(ew_bus *bus, ew_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(&(ew__log_sink){bus->log, bus->log_ud}, level, "bus", NULL, fmt, ap);
    va_end(ap);
}

/* ---- open and close ---------------------------------------------------------------------- */

static const ew_bus_ops *find_backend(const char *name)
{
    for (size_t i = 0; i < NBACKENDS; i++)
        if (strcmp(backends[i]->name, name) == 0) return backends[i];
    return NULL;
}

static int not_supported(const char *type, ew_error *err)
{
    char built[256] = "";
    size_t len = 0;
    for (size_t i = 0; i < NBACKENDS && len < sizeof built; i++)
        len += (size_t)snprintf(built + len, sizeof built - len, "%s%s", i ? ", " : "",
                                backends[i]->name);
    return ew_error_set(err, EW_ENOTSUP,
                        "EVENT_BUS_TYPE=%.64s: this build has no %.64s backend (it has: %s)", type,
                        type, built);
}

/* The audit trail: with ENABLE_EVENT_STORE every batch is recorded in the event store, in one
 * transaction, before the backend gets it, each event in the stream of its subject (its type when
 * it has none). The store skips an id it has, so a retried publish records once; when recording
 * fails nothing is published. */
static int record(ew_bus *bus, const ew_event *const *evs, size_t n, const ew__batch *batch,
                  ew_error *err)
{
    ew_error e = {0};
    ew__batch_flush(batch, bus->audit);
    int rc = ew__store_record(bus->audit, evs, n, NULL, &e);
    if (rc) return ew_error_set(err, rc, "events not recorded in the event store: %s", e.msg);
    return 0;
}

/* The events as they leave the process: personal and secret fields encrypted (the events
 * themselves when encryption is off). *sealed_out is evs, or an array of n references the caller
 * releases with release_signed(). */
static int seal_all(ew_bus *bus, const ew_event *const *evs, size_t n,
                    const ew_event *const **sealed_out, ew_error *err)
{
    *sealed_out = evs;
    if (!bus->keys || n == 0) return 0;
    int prc = ew__keyring_prepare(bus->keys, evs, n, err); /* new subjects: one commit */
    if (prc) return prc;
    ew_event **sealed = calloc(n, sizeof *sealed);
    if (!sealed) return ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = ew__keyring_seal(bus->keys, evs[i], &sealed[i], err);
        if (rc) {
            for (size_t j = 0; j < i; j++)
                ew_event_unref(sealed[j]);
            free(sealed);
            return rc;
        }
    }
    *sealed_out = (const ew_event *const *)sealed;
    return 0;
}

/* The events as they leave the process when they are also signed: each sealed and signed in one
 * copy (ew__evauth_sign_sealed), where seal_all() then signing made two. *out: n references the
 * caller releases with release_signed(). */
static int seal_sign_all(ew_bus *bus, const ew_event *const *evs, size_t n, ew_event ***out,
                         ew_error *err)
{
    *out = NULL;
    int rc = ew__keyring_prepare(bus->keys, evs, n, err); /* new subjects: one commit */
    if (rc) return rc;
    ew_event **signed_evs = calloc(n ? n : 1, sizeof *signed_evs);
    if (!signed_evs) return ew_error_set(err, EW_ENOMEM, "out of memory");
    ew_buf text;
    ew_buf_init(&text);
    for (size_t i = 0; !rc && i < n; i++) {
        uint64_t mask;
        const char *values[64];
        ew_buf_reset(&text);
        rc = ew__keyring_seal_fields(bus->keys, evs[i], &mask, values, &text, err);
        if (!rc) rc = ew__evauth_sign_sealed(bus->auth, evs[i], mask, values, &signed_evs[i], err);
    }
    ew_buf_release(&text);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            ew_event_unref(signed_evs[i]);
        free(signed_evs);
        return rc;
    }
    *out = signed_evs;
    return 0;
}

static void release_signed(ew_event **evs, size_t n)
{
    if (!evs) return;
    for (size_t i = 0; i < n; i++)
        ew_event_unref(evs[i]);
    free(evs);
}

/* The internal publish: follow-ups of handlers go through here, also while closing, with their
 * worker's batch (NULL for others). With ew_bus_options.auth, each event is checked against the
 * policy; personal fields are encrypted (seal_all), and what leaves is signed in that form, the
 * form receivers verify. */
static int publish_internal(void *self, const ew_event *const *evs_in, size_t n, size_t *npublished,
                            const ew__batch *batch, ew_error *err)
{
    ew_bus *bus = self;
    size_t done = 0;
    ew_event **own = NULL; /* the events as they leave when they are not evs_in: n references */
    int rc = 0;
    const ew_event *const *evs = evs_in;
    if (bus->auth) {
        /* the whole batch within the policy, or nothing leaves */
        for (size_t i = 0; i < n && !rc; i++) {
            ew_error e = {0};
            if (!(rc = ew_evauth_check_publish(bus->auth, evs[i], &e))) continue;
            if (n > 1)
                ew_error_set(err, rc, "event %zu of %zu: %s: nothing published", i, n, e.msg);
            else
                ew_error_set(err, rc, "%s", e.msg);
        }
    }
    bool sign = bus->auth && bus->sign;
    if (!rc && bus->keys && sign && n) {
        rc = seal_sign_all(bus, evs_in, n, &own, err);
    } else if (!rc) {
        const ew_event *const *sealed;
        rc = seal_all(bus, evs_in, n, &sealed, err);
        if (!rc && sealed != evs_in) own = (ew_event **)sealed;
        ew_event **signed_evs = NULL;
        if (!rc && sign && !(signed_evs = calloc(n ? n : 1, sizeof *signed_evs)))
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        for (size_t i = 0; !rc && signed_evs && i < n; i++)
            rc = ew_evauth_sign(bus->auth, own ? own[i] : evs_in[i], &signed_evs[i], err);
        if (signed_evs) {
            release_signed(rc ? signed_evs : own, n);
            if (!rc) own = signed_evs;
        }
    }
    if (!rc && own) evs = (const ew_event *const *)own;
    if (!rc && bus->audit) rc = record(bus, evs, n, batch, err);
    if (rc) {
        atomic_fetch_add_explicit(&bus->publish_errors, 1, memory_order_relaxed);
        if (npublished) *npublished = 0;
        release_signed(own, n);
        return rc;
    }
    rc = bus->ops->publish(bus->be, evs, n, &done, batch, err);
    for (size_t i = 0; i < done;) { /* one add per run of events of one type */
        unsigned t = (unsigned)ew_event_type_id(evs_in[i]);
        size_t k = i + 1;
        while (k < done && (unsigned)ew_event_type_id(evs_in[k]) == t)
            k++;
        atomic_fetch_add_explicit(&bus->published[t < EW_T__COUNT ? t : EW_T__COUNT], k - i,
                                  memory_order_relaxed);
        i = k;
    }
    release_signed(own, n);
    if (rc) atomic_fetch_add_explicit(&bus->publish_errors, 1, memory_order_relaxed);
    if (npublished) *npublished = done;
    return rc;
}

static uint64_t published_total(ew_bus *bus)
{
    uint64_t n = 0;
    for (size_t t = 0; t <= EW_T__COUNT; t++)
        n += atomic_load_explicit(&bus->published[t], memory_order_relaxed);
    return n;
}

static void bus_free(ew_bus *bus)
{
    ew_store_close(bus->audit);
    ew__dispatch_free(bus->disp);
    ew_memdlq_free(bus->own_dlq);
    ew__keyring_free(bus->keys);
    ew_config_free(bus->cfg);
    pthread_mutex_destroy(&bus->mu);
    free(bus);
}

int ew_bus_open(ew_bus **out, const ew_bus_options *opts, ew_error *err)
{
    static const ew_bus_options none;
    if (!out) return ew_error_set(err, EW_EINVAL, "ew_bus_open: out is NULL");
    *out = NULL;
    if (!opts) opts = &none;
    if (opts->dlq.ops && (opts->dlq.ops->version < 1 || !opts->dlq.ops->put))
        return ew_error_set(err, EW_EINVAL, "the dead letter sink has no put()");
    if (opts->inbox.ops && (opts->inbox.ops->version < 1 || !opts->inbox.ops->begin ||
                            !opts->inbox.ops->commit || !opts->inbox.ops->rollback))
        return ew_error_set(err, EW_EINVAL, "the inbox lacks begin(), commit() or rollback()");

    ew_bus *bus = aligned_alloc(_Alignof(ew_bus), sizeof(ew_bus)); /* the counters' own line */
    if (!bus) return ew_error_set(err, EW_ENOMEM, "out of memory");
    memset(bus, 0, sizeof *bus);
    int rc =
        opts->config ? ew_config_dup(&bus->cfg, opts->config, err) : ew_config_new(&bus->cfg, err);
    if (rc) goto fail_bus;
    if (pthread_mutex_init(&bus->mu, NULL)) {
        rc = ew_error_set(err, EW_ENOMEM, "cannot create a mutex");
        goto fail_cfg;
    }
    const char *type = ew_config_get(bus->cfg, "EVENT_BUS_TYPE");
    if (!(bus->ops = find_backend(type))) {
        rc = not_supported(type, err);
        goto fail_mu;
    }
    bus->log = opts->log;
    bus->log_ud = opts->log_ud;
    bus->inbox = opts->inbox;
    bus->auth = opts->auth;
    bus->sign = opts->auth && strcmp(bus->ops->name, "memory") != 0;
    bus->service = ew_config_get(bus->cfg, "SERVICE_NAME");
    bus->max_attempts = (int)ew_config_get_int(bus->cfg, "EVENT_HANDLER_MAX_ATTEMPTS");
    bus->backoff_ms = (int)ew_config_get_int(bus->cfg, "EVENT_HANDLER_BACKOFF_MS");
    bus->backoff_max_ms = (int)ew_config_get_int(bus->cfg, "EVENT_HANDLER_BACKOFF_MAX_MS");
    bus->drain_ms = (int)ew_config_get_int(bus->cfg, "EVENT_BUS_DRAIN_TIMEOUT_MS");
    if ((rc = ew__keyring_new(&bus->keys, bus->cfg, NULL, err))) goto fail_mu;
    if (opts->dlq.ops) {
        bus->dlq = opts->dlq;
    } else {
        if ((rc = ew_memdlq_new(&bus->own_dlq, err))) goto fail_mu;
        bus->dlq = ew_memdlq_sink(bus->own_dlq);
    }
    ew_dispatch_host host = {
        .log = bus->log,
        .log_ud = bus->log_ud,
        .span = opts->span,
        .span_ud = opts->span_ud,
        .dlq = bus->dlq,
        .inbox = bus->inbox,
        .service = bus->service,
        .publish = publish_internal,
        .bus = bus,
        .no_metrics = bus->no_metrics = !ew_config_get_int(bus->cfg, "ENABLE_METRICS"),
        .verify = bus->sign ? verify_redelivered : NULL,
    };
    /* The sqlite bus is the event store already: nothing to record twice. */
    if (ew_config_get_int(bus->cfg, "ENABLE_EVENT_STORE") &&
        strcmp(bus->ops->name, "sqlite") != 0) {
        ew_store_options so = {.config = bus->cfg, .log = bus->log, .log_ud = bus->log_ud};
        if ((rc = ew_store_open(&bus->audit, &so, err))) goto fail_dlq;
    }
    if ((rc = ew__dispatch_new(&bus->disp, &host, err))) goto fail_store;
    if ((rc = bus->ops->open(&bus->be, bus, bus->cfg, err))) goto fail_disp;
    ew__bus_log(bus, EW_LOG_DEBUG, "bus opened: backend %s, service %s", bus->ops->name,
                bus->service);
    *out = bus;
    return 0;

fail_disp:
    ew__dispatch_free(bus->disp);
fail_store:
    ew_store_close(bus->audit);
fail_dlq:
    ew_memdlq_free(bus->own_dlq);
fail_mu:
    ew__keyring_free(bus->keys);
    pthread_mutex_destroy(&bus->mu);
fail_cfg:
    ew_config_free(bus->cfg);
fail_bus:
    free(bus);
    return rc;
}

int ew_bus_open_env(ew_bus **out, ew_error *err)
{
    ew_config *cfg;
    int rc = ew_config_new(&cfg, err);
    if (rc) return rc;
    if (!(rc = ew_config_from_env(cfg, err)))
        rc = ew_bus_open(out, &(ew_bus_options){.config = cfg}, err);
    ew_config_free(cfg);
    return rc;
}

int ew_bus_close(ew_bus *bus)
{
    if (!bus) return 0;
    if (ew__dispatch_in_handler(bus->disp)) {
        ew__bus_log(bus, EW_LOG_ERROR, "ew_bus_close called from a handler: refused");
        return EW_ESTATE;
    }
    atomic_store(&bus->closed, true);
    /* No new deliveries from the backend; handlers still publish their follow-ups. */
    if (bus->ops->stop) bus->ops->stop(bus->be);
    int rc = 0;
    uint64_t pending = ew__dispatch_pending(bus->disp);
    if (pending && bus->started) {
        ew__bus_log(bus, EW_LOG_INFO, "closing: draining %llu pending deliveries (up to %d ms)",
                    (unsigned long long)pending, bus->drain_ms);
        ew_error e;
        rc = ew__dispatch_wait(bus->disp, bus->drain_ms, &e);
    } else if (pending) {
        ew__bus_log(bus, EW_LOG_WARN,
                    "closing a bus that was never started with %llu pending "
                    "deliveries",
                    (unsigned long long)pending);
    }
    if (ew__dispatch_stop(bus->disp)) rc = EW_ETIMEDOUT;
    bus->ops->close(bus->be);
    ew__bus_log(bus, EW_LOG_DEBUG, "bus closed: %llu events published",
                (unsigned long long)published_total(bus));
    bus_free(bus);
    return rc;
}

const char *ew_bus_backend(const ew_bus *bus)
{
    return bus->ops->name;
}

int ew_bus_lag(ew_bus *bus, const char *group, ew_lag_fn fn, void *ud, ew_error *err)
{
    if (!bus || !fn) return ew_error_set(err, EW_EINVAL, "bus and fn are required");
    if (group && (!*group || strlen(group) > MAX_NAME))
        return ew_error_set(err, EW_EINVAL, "group must be 1 to %d bytes", MAX_NAME);
    if (!bus->ops->lag)
        return ew_error_set(err, EW_ENOTSUP, "the %s backend does not report consumer lag",
                            bus->ops->name);
    return bus->ops->lag(bus->be, group, fn, ud, err);
}

const ew_config *ew_bus_config(const ew_bus *bus)
{
    return bus->cfg;
}

ew_memdlq *ew_bus_dead_letters(ew_bus *bus)
{
    return bus->own_dlq;
}

/* ---- subscribe and start ----------------------------------------------------------------- */

static bool group_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n > 0 && n <= MAX_NAME;
}

static bool name_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f) return false;
    return n > 0 && n <= MAX_NAME;
}

int ew_bus_subscribe(ew_bus *bus, const char *pattern, ew_handler_fn fn, void *ud,
                     const ew_subscribe_opts *opts, ew_error *err)
{
    static const ew_subscribe_opts none;
    if (!bus) return ew_error_set(err, EW_EINVAL, "ew_bus_subscribe: bus is NULL");
    if (!opts) opts = &none;
    if (atomic_load(&bus->closed)) return ew_error_set(err, EW_ECLOSED, "the bus is closed");
    if (!pattern || !ew_pattern_valid(pattern))
        return ew_error_set(err, EW_EINVAL,
                            "'%.100s' is not a valid pattern (dotted segments of a-z, 0-9 and _, "
                            "or * or # alone in a segment)",
                            pattern ? pattern : "(null)");
    if (!fn) return ew_error_set(err, EW_EINVAL, "no handler function for %.100s", pattern);
    ew_dispatch_sub s = {
        .group = opts->group ? opts->group : bus->service,
        .name = opts->name ? opts->name : pattern,
        .pattern = pattern,
        .fn = fn,
        .ud = ud,
        .concurrency = opts->concurrency ? opts->concurrency : 1,
        .max_attempts = opts->max_attempts ? opts->max_attempts : bus->max_attempts,
        .backoff_initial_ms = opts->backoff_initial_ms ? opts->backoff_initial_ms : bus->backoff_ms,
        .backoff_max_ms = opts->backoff_max_ms ? opts->backoff_max_ms : bus->backoff_max_ms,
        .no_jitter = opts->no_jitter,
        .no_inbox = opts->no_inbox,
        .batch_store = opts->batch_store,
        .add_pattern = opts->add_pattern,
    };
    if (!group_ok(s.group))
        return ew_error_set(err, EW_EINVAL,
                            "group '%.100s' must be 1 to %d of a-z, A-Z, 0-9, '.', '_' and '-'",
                            s.group, MAX_NAME);
    if (!name_ok(s.name))
        return ew_error_set(err, EW_EINVAL,
                            "handler name '%.100s' must be 1 to %d printable characters", s.name,
                            MAX_NAME);
    if (s.concurrency < 0 || s.concurrency > MAX_CONCURRENCY)
        return ew_error_set(err, EW_EINVAL, "concurrency %d is outside 0..%d", s.concurrency,
                            MAX_CONCURRENCY);
    if (s.max_attempts < 0 || s.backoff_initial_ms < 0 || s.backoff_max_ms < 0)
        return ew_error_set(err, EW_EINVAL, "max_attempts and back-off times must not be negative");
    if (bus->auth) {
        int arc = ew_evauth_check_subscribe(bus->auth, pattern, err);
        if (arc) return arc;
    }

    pthread_mutex_lock(&bus->mu);
    int rc = 0;
    const char *existing = NULL;
    bool has = ew__dispatch_has(bus->disp, s.group, s.name, &existing);
    bool takes = has && ew__dispatch_has_pattern(bus->disp, s.group, s.name, pattern);
    if (has && !takes && !opts->add_pattern) {
        rc = ew_error_set(err, EW_EEXIST, "handler %.100s/%.100s already subscribes to %s", s.group,
                          s.name, existing);
    } else {
        /* The backend learns of a new subscription (or pattern) first: if it cannot consume the
         * pattern, the handler is never added. */
        ew_backend_sub bs = {s.group, pattern, opts->from_beginning, opts->ephemeral};
        bool new_group = !ew__dispatch_has(bus->disp, s.group, NULL, NULL);
        if (!takes && bus->ops->subscribed) rc = bus->ops->subscribed(bus->be, &bs, err);
        /* Every group also consumes the redeliveries (redeliver.h), from now on whatever its
         * own subscription says: one addressed to a group of that name before it existed is
         * stale (it would retry an old dead letter again). */
        if (!rc && new_group && bus->ops->subscribed) {
            bs.pattern = EW_REDELIVERY_TYPE;
            bs.from_beginning = false;
            rc = bus->ops->subscribed(bus->be, &bs, err);
        }
        if (!rc) rc = ew__dispatch_subscribe(bus->disp, &s, NULL, err);
    }
    pthread_mutex_unlock(&bus->mu);
    if (!rc)
        ew__bus_log(bus, EW_LOG_DEBUG, "subscribed %s/%s to %s (%d workers)", s.group, s.name,
                    pattern, s.concurrency);
    return rc;
}

int ew_bus_start(ew_bus *bus, ew_error *err)
{
    if (!bus) return ew_error_set(err, EW_EINVAL, "ew_bus_start: bus is NULL");
    if (atomic_load(&bus->closed)) return ew_error_set(err, EW_ECLOSED, "the bus is closed");
    pthread_mutex_lock(&bus->mu);
    int rc = 0;
    if (!bus->started) {
        rc = ew__dispatch_start(bus->disp, err);
        if (!rc && bus->ops->start) rc = bus->ops->start(bus->be, err);
        bus->started = rc == 0;
    }
    pthread_mutex_unlock(&bus->mu);
    return rc;
}

/* ---- publish ----------------------------------------------------------------------------- */

int ew_bus_publish_batch(ew_bus *bus, const ew_event *const *evs, size_t n, ew_error *err)
{
    if (!bus) return ew_error_set(err, EW_EINVAL, "ew_bus_publish: bus is NULL");
    if (atomic_load_explicit(&bus->closed, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&bus->publish_errors, 1, memory_order_relaxed);
        return ew_error_set(err, EW_ECLOSED, "the bus is closed");
    }
    if (n && !evs) return ew_error_set(err, EW_EINVAL, "ew_bus_publish_batch: evs is NULL");
    for (size_t i = 0; i < n; i++) {
        if (!evs[i]) {
            atomic_fetch_add_explicit(&bus->publish_errors, 1, memory_order_relaxed);
            return ew_error_set(err, EW_EINVAL, "event %zu of %zu is NULL: nothing published", i,
                                n);
        }
    }
    return n ? publish_internal(bus, evs, n, NULL, NULL, err) : 0;
}

int ew_bus_publish(ew_bus *bus, const ew_event *ev, ew_error *err)
{
    return ew_bus_publish_batch(bus, &ev, 1, err);
}

int ew_bus_publish_new(ew_bus *bus, ew_type_id type, const void *data, const char *subject,
                       ew_error *err)
{
    if (!bus) return ew_error_set(err, EW_EINVAL, "ew_bus_publish_new: bus is NULL");
    ew_event *ev;
    int rc = ew_event_new(&ev, type, data,
                          &(ew_event_attrs){.source = bus->service, .subject = subject}, err);
    if (rc) {
        atomic_fetch_add_explicit(&bus->publish_errors, 1, memory_order_relaxed);
        return rc;
    }
    rc = ew_bus_publish(bus, ev, err);
    ew_event_unref(ev);
    return rc;
}

int ew_bus_deliver_to(ew_bus *bus, const char *group, const char *name, const ew_event *ev,
                      ew_error *err)
{
    if (!bus || !group || !name || !ev)
        return ew_error_set(err, EW_EINVAL,
                            "ew_bus_deliver_to: bus, group, name and event are "
                            "required");
    if (atomic_load(&bus->closed)) return ew_error_set(err, EW_ECLOSED, "the bus is closed");
    ew_delivery dl = {.event = ev, .group = group, .name = name};
    return ew__dispatch_deliver(bus->disp, &dl, err);
}

/* The group and handler a redelivery names must be ones ew_bus_subscribe would accept. */
static int redelivery_check(ew_bus *bus, const char *group, const char *handler, ew_error *err)
{
    if (!bus || !group) return ew_error_set(err, EW_EINVAL, "bus and group are required");
    if (!group_ok(group))
        return ew_error_set(err, EW_EINVAL, "'%.100s' is not a subscriber group name", group);
    if (handler && !name_ok(handler))
        return ew_error_set(err, EW_EINVAL, "'%.100s' is not a handler name", handler);
    return 0;
}

int ew_bus_redeliver(ew_bus *bus, const char *group, const char *handler, const ew_event *ev,
                     int64_t dead_letter_id, ew_error *err)
{
    int rc = redelivery_check(bus, group, handler, err);
    if (rc) return rc;
    if (!ev) return ew_error_set(err, EW_EINVAL, "ew_bus_redeliver: event is NULL");
    ew_event *r;
    if ((rc = ew__redelivery_new(&r, bus->keys, bus->service, group, handler, dead_letter_id, ev,
                                 err)))
        return rc;
    rc = ew_bus_publish(bus, r, err);
    ew_event_unref(r);
    return rc;
}

int ew_bus_replay(ew_bus *bus, const char *group, const ew_event *const *evs, size_t n,
                  ew_error *err)
{
    int rc = redelivery_check(bus, group, NULL, err);
    if (rc || n == 0) return rc;
    if (!evs) return ew_error_set(err, EW_EINVAL, "ew_bus_replay: events are NULL");
    ew_event **rs = calloc(n, sizeof *rs);
    if (!rs) return ew_error_set(err, EW_ENOMEM, "out of memory");
    size_t i = 0;
    for (; i < n && !rc; i++) {
        rc = evs[i]
                 ? ew__redelivery_new(&rs[i], bus->keys, bus->service, group, NULL, 0, evs[i], err)
                 : ew_error_set(err, EW_EINVAL, "event %zu is NULL", i);
    }
    if (!rc) rc = ew_bus_publish_batch(bus, (const ew_event *const *)rs, n, err);
    for (size_t k = 0; k < n; k++)
        ew_event_unref(rs[k]);
    free(rs);
    return rc;
}

int ew_bus_wait_for_events(ew_bus *bus, int timeout_ms, ew_error *err)
{
    if (!bus) return ew_error_set(err, EW_EINVAL, "ew_bus_wait_for_events: bus is NULL");
    return ew__dispatch_wait(bus->disp, timeout_ms, err);
}

/* ---- metrics ----------------------------------------------------------------------------- */

void ew_bus_stats_get(ew_bus *bus, ew_bus_stats *out)
{
    out->published = published_total(bus);
    out->publish_errors = atomic_load_explicit(&bus->publish_errors, memory_order_relaxed);
    out->pending = ew__dispatch_pending(bus->disp);
    out->subscriptions = ew__dispatch_count(bus->disp);
}

int ew_bus_handler_stats(ew_bus *bus, size_t i, ew_handler_stats *out)
{
    return ew__dispatch_stats(bus->disp, i, out);
}

int ew_bus_handler_type_stats(ew_bus *bus, size_t i, ew_type_id type, ew_handler_type_stats *out)
{
    return ew__dispatch_type_stats(bus->disp, i, type, out);
}

uint64_t ew_bus_published_count(ew_bus *bus, ew_type_id type)
{
    if ((unsigned)type >= EW_T__COUNT || bus->no_metrics) return 0;
    return atomic_load_explicit(&bus->published[type], memory_order_relaxed);
}
