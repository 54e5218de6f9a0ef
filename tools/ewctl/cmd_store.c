/* ewctl dlq and ewctl store — the event store from the command line: dead letters, streams,
 * replays and the TTL purge, on the store EVENT_STORE_URL names. Rows print as JSON lines.
 * Retries and replays reach the handlers through the bus the environment configures
 * (ew_bus_redeliver, ew_bus_replay). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "progress.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/bus.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/store.h"

static const char dlq_usage[] =
    "usage: ewctl dlq list [--event TYPE] [--handler H] [--group G] [--status S] [--limit N]\n"
    "       ewctl dlq show ID\n"
    "       ewctl dlq retry ID | --all [--event TYPE] [--handler H] [--group G]\n"
    "       ewctl dlq discard ID\n"
    "\n"
    "The dead letter queue of the event store EVENT_STORE_URL names\n"
    "(event_store.dead_letter_queue). list prints one JSON object per dead letter, newest\n"
    "failure first, without the event; show prints one with its event; discard marks it\n"
    "discarded. S is pending, retried, resolved or discarded.\n"
    "retry hands a dead letter's event back to its handler, in that handler's subscriber group\n"
    "only, through the configured bus (EVENT_BUS_TYPE ...), wherever that group runs: it is\n"
    "marked retried, and resolved once the handler has handled it (a new failure makes it\n"
    "pending again). --all retries every pending dead letter the filters select. Prints one\n"
    "JSON object per dead letter retried.\n";

static const char store_usage[] =
    "usage: ewctl store stream STREAM_ID [--from VERSION]\n"
    "       ewctl store replay --from POSITION [PATTERN] --to-group G\n"
    "       ewctl store purge\n"
    "\n"
    "stream prints a stream's events in order, one JSON object per line: position, version,\n"
    "recorded time and the CloudEvent. replay hands the stored events from global position\n"
    "POSITION on (1: the first), those whose type matches PATTERN (default #), to subscriber\n"
    "group G only, through the configured bus; every handler of G whose pattern matches gets\n"
    "them again (its inbox still skips what it has processed). It prints how many it replayed.\n"
    "purge deletes the events older than EVENT_STORE_TTL_DAYS now, in small batches, and\n"
    "prints how many it deleted.\n";

/* The bus, authenticated as ewctl: redeliveries are its to publish (the events inside keep
 * their publishers' tags, and are checked by the receiving services). */
static int open_bus(ewctl_bus *b, ew_bus **bus)
{
    if (ewctl_bus_open(b, NULL, NULL, NULL, true)) return 1;
    *bus = b->bus;
    return 0;
}

static void put_time(ew_buf *b, const char *key, int64_t us)
{
    char t[EW_TIME_LEN + 1];
    if (ew_time_format(us, t) != 0) t[0] = '\0';
    ewctl_put_str(b, key, t);
}

void ewctl_dlq_put_row(ew_buf *b, const ew_dlq_row *r, int with_event)
{
    ew_buf_printf(b, "{\"id\":%lld", (long long)r->id);
    ewctl_put_str(b, "event_id", r->event_id);
    ewctl_put_str(b, "event_name", r->event_name);
    ewctl_put_str(b, "handler", r->handler);
    ewctl_put_str(b, "subscriber_group", r->subscriber_group);
    ewctl_put_str(b, "error", r->error);
    ew_buf_printf(b, ",\"attempts\":%d", r->attempts);
    put_time(b, "first_failed_at", r->first_failed_us);
    put_time(b, "last_failed_at", r->last_failed_us);
    ewctl_put_str(b, "status", ew_dlq_status_name(r->status));
    if (r->transport) ewctl_put_str(b, "transport", r->transport);
    if (with_event) ewctl_put_str(b, "event", r->event);
    ew_buf_putc(b, '}');
}

static int print_row(void *ud, const ew_dlq_row *r)
{
    ew_buf b;
    ew_buf_init(&b);
    ewctl_dlq_put_row(&b, r, *(int *)ud);
    ew_buf_putc(&b, '\n');
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    return 0;
}

static int parse_id(const char *s, int64_t *id)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end || v < 1) return ewctl_fail(2, "'%s' is not a dead letter id", s);
    *id = v;
    return 0;
}

/* ---- dlq retry ----------------------------------------------------------------------------- */

typedef struct retry {
    ew_store *st;
    ew_bus *bus;
    ew_audit *oplog;
    size_t retried, failed, unrecorded;
    ewctl_progress progress;
} retry;

/* Hands one dead letter back to its handler: marked retried first (its handler may resolve it
 * at once), then redelivered; when the redelivery cannot be published it is pending again. */
int ewctl_dlq_retry_one(ew_store *st, ew_bus *bus, const ew_dlq_row *row, ew_error *err)
{
    if (row->status == EW_DLQ_RESOLVED || row->status == EW_DLQ_DISCARDED)
        return ew_error_set(err, EW_ESTATE, "dead letter %lld is %s: there is nothing to retry",
                            (long long)row->id, ew_dlq_status_name(row->status));
    if (!row->handler[0] || !row->subscriber_group[0])
        return ew_error_set(err, EW_EINVAL, "dead letter %lld names no handler and group",
                            (long long)row->id);
    ew_event *ev;
    ew_error e = {0};
    if (ew_event_decode(&ev, row->event, strlen(row->event), NULL, &e))
        return ew_error_set(err, e.code,
                            "dead letter %lld holds no event that decodes (%s): it cannot be "
                            "retried, only discarded",
                            (long long)row->id, e.msg);
    int rc = ew_store_dlq_set_status(st, row->id, EW_DLQ_RETRIED, err);
    if (!rc) {
        rc = ew_bus_redeliver(bus, row->subscriber_group, row->handler, ev, row->id, err);
        if (rc) ew_store_dlq_set_status(st, row->id, row->status, NULL);
    }
    ew_event_unref(ev);
    return rc;
}

int ewctl_dlq_audit(ew_audit *a, const char *action, const ew_dlq_row *row)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)row->id);
    ew_buf d;
    ew_buf_init(&d);
    ew_buf_puts(&d, "{\"event_id\":");
    ew_json_write_string(&d, row->event_id ? row->event_id : "",
                         row->event_id ? strlen(row->event_id) : 0);
    ewctl_put_str(&d, "event_name", row->event_name);
    ewctl_put_str(&d, "handler", row->handler);
    ewctl_put_str(&d, "subscriber_group", row->subscriber_group);
    ew_buf_putc(&d, '}');
    int rc = d.oom ? ewctl_fail(1, "out of memory") : ewctl_oplog(a, action, id, d.data);
    ew_buf_release(&d);
    return rc;
}

static int retry_row(retry *r, const ew_dlq_row *row, ew_error *err)
{
    int rc = ewctl_dlq_retry_one(r->st, r->bus, row, err);
    if (rc) return rc;
    if (ewctl_dlq_audit(r->oplog, "dlq.retried", row)) r->unrecorded++;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"id\":%lld", (long long)row->id);
    ewctl_put_str(&b, "event_id", row->event_id);
    ewctl_put_str(&b, "handler", row->handler);
    ewctl_put_str(&b, "subscriber_group", row->subscriber_group);
    ewctl_put_str(&b, "status", "retried");
    ew_buf_puts(&b, "}\n");
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    return 0;
}

static int retry_listed(void *ud, const ew_dlq_row *row)
{
    retry *r = ud;
    ew_error err = {0};
    if (retry_row(r, row, &err)) {
        r->failed++;
        ewctl_fail(1, "%s", err.msg);
    } else {
        r->retried++;
    }
    ewctl_progress_add(&r->progress, 1);
    return 0;
}

static int dlq_retry(ew_store *st, int64_t id, ew_dlq_filter *f)
{
    retry r = {.st = st};
    if (ewctl_oplog_open(st, &r.oplog)) return 1;
    ewctl_bus b;
    if (open_bus(&b, &r.bus)) {
        ew_audit_close(r.oplog);
        return 1;
    }
    ew_error err = {0};
    int rc = 0;
    if (id > 0) {
        ew_dlq_row row;
        rc = ew_store_dlq_get(st, id, &row, &err);
        if (!rc) {
            rc = retry_row(&r, &row, &err);
            ew_dlq_row_release(&row);
        }
    } else {
        f->status = EW_DLQ_PENDING;
        ewctl_progress_start(&r.progress, stderr, "retried", "dead letters", 0);
        rc = ew_store_dlq_list(st, f, retry_listed, &r, &err);
        ewctl_progress_end(&r.progress);
    }
    /* Closing the bus waits for its publishes to be done with. */
    ewctl_bus_close(&b);
    ew_audit_close(r.oplog);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return r.failed || r.unrecorded ? 1 : 0;
}

int ewctl_dlq(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(dlq_usage, stdout);
        return 0;
    }
    if (argc < 1) {
        fputs(dlq_usage, stderr);
        return 2;
    }
    const char *cmd = argv[0];
    ew_dlq_filter f = {.status = -1};
    int64_t id = 0;
    if (strcmp(cmd, "list") == 0) {
        for (int i = 1; i < argc; i++) {
            if (i + 1 >= argc) return ewctl_fail(2, "%s needs a value", argv[i]);
            const char *v = argv[++i];
            if (strcmp(argv[i - 1], "--event") == 0) {
                f.event_name = v;
                ewctl_check_type(v);
            } else if (strcmp(argv[i - 1], "--handler") == 0)
                f.handler = v;
            else if (strcmp(argv[i - 1], "--group") == 0)
                f.group = v;
            else if (strcmp(argv[i - 1], "--limit") == 0) {
                if (ewctl_parse_limit(v, &f.limit)) return 2;
            } else if (strcmp(argv[i - 1], "--status") == 0) {
                for (int s = EW_DLQ_PENDING; s <= EW_DLQ_DISCARDED; s++)
                    if (strcmp(v, ew_dlq_status_name((ew_dlq_status)s)) == 0) f.status = s;
                if (f.status < 0)
                    return ewctl_fail(2, "--status takes pending, retried, resolved or discarded");
            } else
                return ewctl_fail(2, "unknown option '%s'", argv[i - 1]);
        }
    } else if (strcmp(cmd, "retry") == 0) {
        bool all = false;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--all") == 0) {
                all = true;
                continue;
            }
            if (argv[i][0] != '-') {
                if (id || parse_id(argv[i], &id)) return ewctl_fail(2, "dlq retry takes one ID");
                continue;
            }
            if (i + 1 >= argc) return ewctl_fail(2, "%s needs a value", argv[i]);
            const char *v = argv[++i];
            if (strcmp(argv[i - 1], "--event") == 0) {
                f.event_name = v;
                ewctl_check_type(v);
            } else if (strcmp(argv[i - 1], "--handler") == 0)
                f.handler = v;
            else if (strcmp(argv[i - 1], "--group") == 0)
                f.group = v;
            else
                return ewctl_fail(2, "unknown option '%s'", argv[i - 1]);
        }
        if (all == (id > 0)) return ewctl_fail(2, "dlq retry takes an ID or --all");
        if (id && (f.event_name || f.handler || f.group))
            return ewctl_fail(2, "the filters go with --all, not with an ID");
        ew_store *st;
        if (ewctl_open_store(&st)) return 1;
        int status = dlq_retry(st, id, &f);
        ew_store_close(st);
        return status;
    } else if (strcmp(cmd, "show") == 0 || strcmp(cmd, "discard") == 0) {
        if (argc != 2) return ewctl_fail(2, "dlq %s takes one ID", cmd);
        if (parse_id(argv[1], &id)) return 2;
    } else {
        return ewctl_fail(2, "unknown dlq command '%s'", cmd);
    }
    ew_store *st;
    if (ewctl_open_store(&st)) return 1;
    ew_error err = {0};
    int rc, unrecorded = 0, with_event = strcmp(cmd, "show") == 0;
    if (strcmp(cmd, "list") == 0) {
        rc = ew_store_dlq_list(st, &f, print_row, &with_event, &err);
    } else if (strcmp(cmd, "show") == 0) {
        ew_dlq_row row;
        rc = ew_store_dlq_get(st, id, &row, &err);
        if (rc == 0) {
            print_row(&with_event, &row);
            ew_dlq_row_release(&row);
        }
    } else {
        /* discard: the chain is opened first, so that a discard it cannot record is not made */
        ew_audit *oplog = NULL;
        if (ewctl_oplog_open(st, &oplog)) {
            ew_store_close(st);
            return 1;
        }
        ew_dlq_row row;
        rc = ew_store_dlq_get(st, id, &row, &err);
        if (!rc) {
            if (row.status == EW_DLQ_RESOLVED || row.status == EW_DLQ_DISCARDED)
                rc = ew_error_set(&err, EW_ESTATE,
                                  "dead letter %lld is %s already: nothing to discard",
                                  (long long)id, ew_dlq_status_name(row.status));
            if (!rc) rc = ew_store_dlq_set_status(st, id, EW_DLQ_DISCARDED, &err);
            if (!rc) {
                printf("{\"id\":%lld,\"status\":\"discarded\"}\n", (long long)id);
                unrecorded = ewctl_dlq_audit(oplog, "dlq.discarded", &row);
            }
            ew_dlq_row_release(&row);
        }
        ew_audit_close(oplog);
    }
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return unrecorded;
}

static int print_stored(void *ud, const ew_stored_event *se)
{
    char *json;
    if (ew_event_encode(se->event, &json, NULL, NULL)) return 1;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"position\":%lld,\"version\":%lld", (long long)se->position,
                  (long long)se->version);
    ewctl_put_str(&b, "stream_id", se->stream_id);
    put_time(&b, "recorded_at", se->recorded_us);
    ew_buf_printf(&b, ",\"event\":%s}\n", json);
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    free(json);
    return 0;
}

/* ---- store replay ------------------------------------------------------------------------- */

#define REPLAY_BATCH 100

typedef struct replay {
    ew_bus *bus;
    const char *group;
    const ew_event *batch[REPLAY_BATCH];
    size_t n, replayed;
    int rc;
    ew_error *err;
    ewctl_progress progress;
} replay;

static int replay_flush(replay *r)
{
    if (r->n && !r->rc) {
        r->rc = ew_bus_replay(r->bus, r->group, r->batch, r->n, r->err);
        if (!r->rc) {
            r->replayed += r->n;
            ewctl_progress_add(&r->progress, r->n);
        }
    }
    for (size_t i = 0; i < r->n; i++)
        ew_event_unref(r->batch[i]);
    r->n = 0;
    return r->rc;
}

static int replay_one(void *ud, const ew_stored_event *se)
{
    replay *r = ud;
    /* Redeliveries in the log (the SQLite bus, the audit trail) are not replayed themselves. */
    if (ew_event_type_id(se->event) == EW_T_BUS_REDELIVERY) return 0;
    r->batch[r->n++] = ew_event_ref(se->event);
    return r->n == REPLAY_BATCH ? replay_flush(r) : 0;
}

static int store_replay(int argc, char **argv)
{
    int64_t from = 0;
    const char *pattern = "#", *group = NULL;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--from") == 0 && i + 1 < argc) {
            char *end;
            from = strtoll(argv[++i], &end, 10);
            if (*end || from < 1) return ewctl_fail(2, "--from takes a position from 1");
        } else if (strcmp(argv[i], "--to-group") == 0 && i + 1 < argc) {
            group = argv[++i];
        } else if (argv[i][0] == '-') {
            return ewctl_fail(2, "unknown option '%s'", argv[i]);
        } else if (npos++ == 0) {
            pattern = argv[i];
        } else {
            return ewctl_fail(2, "store replay takes one PATTERN");
        }
    }
    if (!from) return ewctl_fail(2, "store replay needs --from POSITION");
    if (!group) return ewctl_fail(2, "store replay needs --to-group G");
    if (!ew_pattern_valid(pattern))
        return ewctl_fail(2, "'%s' is not a pattern (user.registered, user.*, user.#, #)", pattern);
    ew_store *st;
    if (ewctl_open_store(&st)) return 1;
    ew_error err = {0};
    replay r = {.group = group, .err = &err};
    ew_audit *oplog;
    if (ewctl_oplog_open(st, &oplog)) {
        ew_store_close(st);
        return 1;
    }
    ewctl_bus b;
    if (open_bus(&b, &r.bus)) {
        ew_audit_close(oplog);
        ew_store_close(st);
        return 1;
    }
    /* --from is inclusive; the store reads after the position it is given. The head bounds how
     * many there can be: exact for every type (#), at most that for a narrower pattern. */
    int64_t head = 0;
    uint64_t total = 0;
    if (ew_store_head(st, &head, NULL) == 0 && head >= from && strcmp(pattern, "#") == 0)
        total = (uint64_t)(head - from + 1);
    ewctl_progress_start(&r.progress, stderr, "replayed", "events", total);
    int rc = ew_store_read_all(st, from - 1, pattern, 0, replay_one, &r, &err);
    if (!rc)
        rc = replay_flush(&r);
    else
        replay_flush(&r);
    ewctl_progress_end(&r.progress);
    if (!rc && r.rc) rc = r.rc;
    ewctl_bus_close(&b);
    /* what was handed to the group, by position, pattern and count: also a replay that stopped */
    ew_buf d;
    ew_buf_init(&d);
    ew_buf_printf(&d, "{\"from\":%lld", (long long)from);
    ewctl_put_str(&d, "pattern", pattern);
    ew_buf_printf(&d, ",\"replayed\":%zu}", r.replayed);
    int unrecorded = d.oom ? ewctl_fail(1, "out of memory")
                           : ewctl_oplog(oplog, "store.replayed", group, d.data);
    ew_buf_release(&d);
    ew_audit_close(oplog);
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "replay stopped after %zu events: %s", r.replayed, err.msg);
    printf("{\"replayed\":%zu,\"group\":\"%s\"}\n", r.replayed, group);
    return unrecorded;
}

/* The purge in batches, with progress; the time is fixed at the start, so it ends even while
 * events keep expiring. */
static int store_purge(ew_store *st, ew_error *err)
{
    ew_audit *oplog;
    if (ewctl_oplog_open(st, &oplog)) return ew_error_set(err, EW_ECONFIG, "nothing purged");
    const int64_t now = ew_now_us();
    const size_t batch = 1000;
    ewctl_progress p;
    ewctl_progress_start(&p, stderr, "purged", "events", 0);
    int rc;
    for (;;) {
        size_t n = 0;
        rc = ew_store_purge_batch(st, now, batch, &n, err);
        ewctl_progress_add(&p, n);
        if (rc || n < batch) break;
    }
    ewctl_progress_end(&p);
    if (!rc) printf("{\"purged\":%llu}\n", (unsigned long long)p.done);
    /* how many events went, also when a batch failed after others */
    char details[64];
    snprintf(details, sizeof details, "{\"purged\":%llu}", (unsigned long long)p.done);
    if (ewctl_oplog(oplog, "store.purged", NULL, details) && !rc)
        rc = ew_error_set(err, EW_EIO, "the purge is not in the operator's audit chain");
    ew_audit_close(oplog);
    return rc;
}

int ewctl_store(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(store_usage, stdout);
        return 0;
    }
    if (argc < 1) {
        fputs(store_usage, stderr);
        return 2;
    }
    ew_store *st;
    ew_error err = {0};
    int rc;
    if (strcmp(argv[0], "stream") == 0) {
        int64_t from = 1;
        const char *stream = NULL;
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
                from = strtoll(argv[++i], NULL, 10);
            else if (argv[i][0] == '-')
                return ewctl_fail(2, "unknown option '%s'", argv[i]);
            else
                stream = argv[i];
        }
        if (!stream) return ewctl_fail(2, "store stream needs a STREAM_ID");
        if (from < 1) return ewctl_fail(2, "--from takes a version from 1");
        if (ewctl_open_store(&st)) return 1;
        rc = ew_store_read_stream(st, stream, from, 0, print_stored, NULL, &err);
    } else if (strcmp(argv[0], "replay") == 0) {
        return store_replay(argc, argv);
    } else if (strcmp(argv[0], "purge") == 0) {
        if (argc != 1) return ewctl_fail(2, "store purge takes no arguments");
        if (ewctl_open_store(&st)) return 1;
        rc = store_purge(st, &err);
    } else {
        return ewctl_fail(2, "unknown store command '%s'", argv[0]);
    }
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return 0;
}
