/* ewctl metrics — the figures the backends themselves keep, for the configured bus and store:
 * consumer lag per subscriber group (ew_bus_lag), dead letters by status, each service's outbox,
 * sagas by type and state and the saga deadlines that passed. What a service's GET /metrics
 * shows of its own process (rates, durations, HTTP) is not here: this asks the broker and the
 * databases, so it works with every service stopped. One JSON object on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/buf.h"
#include "core/json.h"
#include "ewctl.h"
#include "eventwire/config.h"

static const char metrics_usage[] =
    "usage: ewctl metrics [--group G]...\n"
    "\n"
    "Prints one JSON object with what the configured bus (EVENT_BUS_TYPE) and event store\n"
    "(EVENT_STORE_URL) record, whether or not the services run:\n"
    "  groups        consumer lag per subscriber group as the backend records it: events\n"
    "                published to the group and not acknowledged by it (SQLite: head minus the\n"
    "                group's position; Redis: entries not delivered plus pending; Kafka: end\n"
    "                minus committed offsets; RabbitMQ: ready messages in the group's queue)\n"
    "  groups_from   where the groups came from: \"backend\" (it lists them: sqlite, redis),\n"
    "                \"services\" (kafka, rabbitmq: the five services' groups and the saga groups\n"
    "                of the saga types in the store, those the backend knows) or \"arguments\"\n"
    "  dead_letters  dead letters by status: pending, retried, resolved, discarded\n"
    "  outbox        per service whose database (SERVICE_DB_URL) exists: events not yet\n"
    "                published and the age of the oldest, in seconds\n"
    "  sagas         instances by type and state; saga_deadlines_missed by type\n"
    "\n"
    "--group G   only group G (repeatable); a group the backend does not know shows\n"
    "            \"known\":false.\n";

static const char *const services[] = {"auth-service", "user-service", "notification-service",
                                       "analytics-service", "export-service"};
#define NSERVICES (sizeof services / sizeof services[0])
#define MAX_GROUPS 64

/* ---- consumer lag ------------------------------------------------------------------------- */

typedef struct lagw {
    ew_buf *b;
    size_t n;
} lagw;

static int put_lag(void *ud, const char *group, uint64_t lag)
{
    lagw *w = ud;
    ew_buf_puts(w->b, w->n++ ? ",{\"group\":" : "{\"group\":");
    ew_json_write_string(w->b, group, strlen(group));
    ew_buf_printf(w->b, ",\"lag\":%llu,\"known\":true}", (unsigned long long)lag);
    return 0;
}

static int saga_group(void *ud, const ew_row *r)
{
    char ***names = ud;
    if (r->ncols < 1 || !r->values[0]) return 0;
    size_t n = 0;
    while ((*names)[n])
        n++;
    if (n + 1 >= MAX_GROUPS) return 1;
    size_t len = strlen(r->values[0]) + 6;
    char *g = malloc(len);
    if (!g) return 1;
    snprintf(g, len, "saga.%s", r->values[0]);
    (*names)[n] = g;
    return 0;
}

/* One group's lag, or "known":false (when unknown_shown; else nothing) for one it does not know. */
static int one_group(ew_bus *bus, const char *group, lagw *w, bool unknown_shown, ew_error *err)
{
    int rc = ew_bus_lag(bus, group, put_lag, w, err);
    if (rc == EW_ENOTFOUND) {
        *err = (ew_error){0};
        if (unknown_shown) {
            ew_buf_puts(w->b, w->n++ ? ",{\"group\":" : "{\"group\":");
            ew_json_write_string(w->b, group, strlen(group));
            ew_buf_puts(w->b, ",\"lag\":null,\"known\":false}");
        }
        return 0;
    }
    if (rc) {
        ew_error inner = *err;
        return ew_error_set(err, rc, "consumer lag of group %s: %s", group, inner.msg);
    }
    return 0;
}

int ewctl_put_group_lags(ew_bus *bus, ew_store *st, char *const *wanted, size_t nwanted, ew_buf *b,
                         ew_error *err)
{
    lagw w = {.b = b};
    ew_buf_puts(b, "\"groups\":[");
    if (nwanted) {
        for (size_t i = 0; i < nwanted; i++) {
            int rc = one_group(bus, wanted[i], &w, true, err);
            if (rc) return rc;
        }
        ew_buf_puts(b, "],\"groups_from\":\"arguments\"");
        return 0;
    }
    int rc = ew_bus_lag(bus, NULL, put_lag, &w, err);
    if (rc == 0) {
        ew_buf_puts(b, "],\"groups_from\":\"backend\"");
        return 0;
    }
    if (rc != EW_ENOTSUP) return rc;
    *err = (ew_error){0};
    /* The backend cannot list its groups: the ones the system makes. */
    for (size_t i = 0; i < NSERVICES; i++)
        if ((rc = one_group(bus, services[i], &w, false, err))) return rc;
    char **sagas = calloc(MAX_GROUPS, sizeof *sagas);
    if (!sagas) return ew_error_set(err, EW_ENOMEM, "out of memory");
    ew_txn *t;
    rc = ew_store_begin(st, &t, err);
    if (!rc) {
        rc = ew_txn_query(t, "SELECT DISTINCT saga_type FROM event_store.sagas ORDER BY 1", NULL, 0,
                          saga_group, &sagas, err);
        ew_txn_rollback(t);
    }
    for (size_t i = 0; !rc && sagas[i]; i++)
        rc = one_group(bus, sagas[i], &w, false, err);
    for (size_t i = 0; sagas[i]; i++)
        free(sagas[i]);
    free(sagas);
    if (rc) return rc;
    ew_buf_puts(b, "],\"groups_from\":\"services\"");
    return 0;
}

/* ---- the stores --------------------------------------------------------------------------- */

typedef struct roww {
    ew_buf *b;
    size_t n;
    int kind; /* 0: dead letters, 1: sagas, 2: deadlines, 3: outbox */
} roww;

static int put_row(void *ud, const ew_row *r)
{
    roww *w = ud;
    const char *const *v = r->values;
    switch (w->kind) {
    case 0: /* status, count */
        if (r->ncols < 2 || !v[0] || !v[1]) return 0;
        ew_buf_puts(w->b, w->n++ ? "," : "");
        ew_json_write_string(w->b, v[0], strlen(v[0]));
        ew_buf_printf(w->b, ":%lld", atoll(v[1]));
        break;
    case 1: /* type, state, count */
        if (r->ncols < 3 || !v[0] || !v[1] || !v[2]) return 0;
        ew_buf_puts(w->b, w->n++ ? ",{\"type\":" : "{\"type\":");
        ew_json_write_string(w->b, v[0], strlen(v[0]));
        ewctl_put_str(w->b, "state", v[1]);
        ew_buf_printf(w->b, ",\"count\":%lld}", atoll(v[2]));
        break;
    case 2: /* type, count */
        if (r->ncols < 2 || !v[0] || !v[1]) return 0;
        ew_buf_puts(w->b, w->n++ ? ",{\"type\":" : "{\"type\":");
        ew_json_write_string(w->b, v[0], strlen(v[0]));
        ew_buf_printf(w->b, ",\"count\":%lld}", atoll(v[1]));
        break;
    default: /* pending, oldest age */
        if (r->ncols < 2 || !v[0] || !v[1]) return 0;
        ew_buf_printf(w->b, ",\"pending\":%lld,\"oldest_age_seconds\":%.3f", atoll(v[0]),
                      strtod(v[1], NULL));
        break;
    }
    return 0;
}

static int query(ew_store *st, const char *sql, roww *w, ew_error *err)
{
    ew_txn *t;
    int rc = ew_store_begin(st, &t, err);
    if (rc) return rc;
    rc = ew_txn_query(t, sql, NULL, 0, put_row, w, err);
    ew_txn_rollback(t);
    return rc;
}

static bool is_postgres(ew_store *st)
{
    return strcmp(ew_store_backend(st), "sqlite") != 0;
}

static const char *const statuses[] = {"pending", "retried", "resolved", "discarded"};

static int dlq_count(void *ud, const ew_row *r)
{
    long long *counts = ud;
    if (r->ncols < 2 || !r->values[0] || !r->values[1]) return 0;
    for (size_t i = 0; i < 4; i++)
        if (strcmp(r->values[0], statuses[i]) == 0) counts[i] = atoll(r->values[1]);
    return 0;
}

static int put_event_store(ew_store *st, ew_buf *b)
{
    ew_error err = {0};
    long long counts[4] = {0};
    ew_txn *t;
    int rc = ew_store_begin(st, &t, &err);
    if (!rc) {
        rc = ew_txn_query(t,
                          "SELECT status, count(*) FROM event_store.dead_letter_queue "
                          "GROUP BY status",
                          NULL, 0, dlq_count, counts, &err);
        ew_txn_rollback(t);
    }
    if (rc) return ewctl_fail(1, "dead letters: %s", err.msg);
    ew_buf_puts(b, ",\"dead_letters\":{");
    for (size_t i = 0; i < 4; i++)
        ew_buf_printf(b, "%s\"%s\":%lld", i ? "," : "", statuses[i], counts[i]);
    roww w;
    ew_buf_puts(b, "},\"sagas\":[");
    w = (roww){.b = b, .kind = 1};
    if ((rc = query(st,
                    "SELECT saga_type, status, count(*) FROM event_store.sagas "
                    "GROUP BY saga_type, status ORDER BY saga_type, status",
                    &w, &err)))
        return ewctl_fail(1, "sagas: %s", err.msg);
    ew_buf_puts(b, "],\"saga_deadlines_missed\":[");
    w = (roww){.b = b, .kind = 2};
    if ((rc = query(st,
                    "SELECT s.saga_type, count(*) FROM event_store.saga_transitions t "
                    "JOIN event_store.sagas s ON s.id = t.saga_id WHERE t.event_id IS NULL "
                    "GROUP BY s.saga_type ORDER BY s.saga_type",
                    &w, &err)))
        return ewctl_fail(1, "saga deadlines: %s", err.msg);
    ew_buf_putc(b, ']');
    return 0;
}

/* SERVICE_DB_URL with {SERVICE_NAME} replaced, malloc'ed. */
static char *service_url(const char *pattern, const char *name)
{
    const char *at = strstr(pattern, "{SERVICE_NAME}");
    size_t len = strlen(pattern) + strlen(name) + 1;
    char *s = malloc(len);
    if (!s) return NULL;
    if (at)
        snprintf(s, len, "%.*s%s%s", (int)(at - pattern), pattern, name,
                 at + strlen("{SERVICE_NAME}"));
    else
        snprintf(s, len, "%s", pattern);
    return s;
}

/* "outbox":[...]: each service whose own database exists. A SQLite file that is not there is
 * not made. */
static int put_outboxes(const ew_config *cfg, ew_buf *b)
{
    ew_buf_puts(b, ",\"outbox\":[");
    size_t n = 0;
    for (size_t i = 0; i < NSERVICES; i++) {
        char *url = service_url(ew_config_get(cfg, "SERVICE_DB_URL"), services[i]);
        if (!url) return ewctl_fail(1, "out of memory");
        if (strncmp(url, "sqlite:", 7) == 0 && access(url + 7, F_OK) != 0) {
            free(url);
            continue;
        }
        ew_error err = {0};
        ew_config *c = NULL;
        ew_store *st = NULL;
        int rc = ewctl_config_load(&c, &err);
        if (!rc) rc = ew_store_open(&st, &(ew_store_options){.config = c, .url = url}, &err);
        ew_config_free(c);
        free(url);
        if (rc) return ewctl_fail(1, "the database of %s: %s", services[i], err.msg);
        ew_buf_puts(b, n++ ? ",{\"service\":" : "{\"service\":");
        ew_json_write_string(b, services[i], strlen(services[i]));
        roww w = {.b = b, .kind = 3};
        rc = query(st,
                   is_postgres(st)
                       ? "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)"
                         " FROM event_store.outbox WHERE sent_at IS NULL"
                       : "SELECT count(*), COALESCE((julianday('now') - julianday(min(created_at)))"
                         " * 86400.0, 0) FROM event_store.outbox WHERE sent_at IS NULL",
                   &w, &err);
        ew_store_close(st);
        if (rc) return ewctl_fail(1, "the outbox of %s: %s", services[i], err.msg);
        ew_buf_putc(b, '}');
    }
    ew_buf_putc(b, ']');
    return 0;
}

int ewctl_metrics(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(metrics_usage, stdout);
        return 0;
    }
    char *wanted[MAX_GROUPS];
    size_t nwanted = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--group") == 0 && i + 1 == argc) {
            return ewctl_fail(2, "--group needs a group name");
        } else if (strcmp(argv[i], "--group") == 0) {
            const char *g = argv[++i];
            if (!*g || strlen(g) > 200)
                return ewctl_fail(2, "--group takes a group name of 1 to 200 bytes");
            if (nwanted == MAX_GROUPS)
                return ewctl_fail(2, "at most %d --group options", MAX_GROUPS);
            wanted[nwanted++] = argv[i];
        } else {
            ewctl_fail(2, "unexpected argument '%s'", argv[i]);
            fputs(metrics_usage, stderr);
            return 2;
        }
    }
    int status = 1;
    ew_error err = {0};
    ew_config *cfg = NULL;
    ew_store *st = NULL;
    ew_bus *bus = NULL;
    ew_buf b;
    ew_buf_init(&b);
    if (ewctl_config_load(&cfg, &err)) {
        ewctl_fail(1, "%s", err.msg);
        goto out;
    }
    if (ewctl_open_store(&st)) goto out;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg}, &err)) {
        ewctl_fail(1, "cannot open the bus: %s", err.msg);
        goto out;
    }
    ew_buf_puts(&b, "{\"bus\":");
    ew_json_write_string(&b, ew_bus_backend(bus), strlen(ew_bus_backend(bus)));
    ewctl_put_str(&b, "store", ew_store_backend(st));
    ew_buf_putc(&b, ',');
    if (ewctl_put_group_lags(bus, st, wanted, nwanted, &b, &err)) {
        ewctl_fail(1, "%s", err.msg);
        goto out;
    }
    if (put_event_store(st, &b) || put_outboxes(cfg, &b)) goto out;
    ew_buf_puts(&b, "}\n");
    if (b.oom) {
        ewctl_fail(1, "out of memory");
        goto out;
    }
    fwrite(b.data, 1, b.len, stdout);
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    ew_buf_release(&b);
    if (bus) ew_bus_close(bus);
    if (st) ew_store_close(st);
    ew_config_free(cfg);
    return status;
}
