/* ewctl dlq and ewctl store — the event store from the command line: dead letters, streams and
 * the TTL purge, on the store EVENT_STORE_URL names. Rows print as JSON lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/store.h"

static const char dlq_usage[] =
    "usage: ewctl dlq list [--event TYPE] [--handler H] [--group G] [--status S] [--limit N]\n"
    "       ewctl dlq show ID\n"
    "       ewctl dlq discard ID\n"
    "\n"
    "The dead letter queue of the event store EVENT_STORE_URL names\n"
    "(event_store.dead_letter_queue). list prints one JSON object per dead letter, newest\n"
    "failure first, without the event; show prints one with its event; discard marks it\n"
    "discarded. S is pending, retried, resolved or discarded.\n";

static const char store_usage[] =
    "usage: ewctl store stream STREAM_ID [--from VERSION]\n"
    "       ewctl store purge\n"
    "\n"
    "stream prints a stream's events in order, one JSON object per line: position, version,\n"
    "recorded time and the CloudEvent. purge deletes the events older than\n"
    "EVENT_STORE_TTL_DAYS now, in small batches, and prints how many it deleted.\n";

static int open_store(ew_store **st)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ew_config_new(&cfg, &err);
    if (rc == 0) rc = ew_config_from_env(cfg, &err);
    if (rc == 0) rc = ew_store_open(st, &(ew_store_options){.config = cfg}, &err);
    ew_config_free(cfg);
    if (rc) return ewctl_fail(1, "cannot open the event store: %s", err.msg);
    return 0;
}

static void put_str(ew_buf *b, const char *key, const char *v)
{
    ew_buf_printf(b, ",\"%s\":", key);
    if (v) ew_json_write_string(b, v, strlen(v));
    else ew_buf_puts(b, "null");
}

static void put_time(ew_buf *b, const char *key, int64_t us)
{
    char t[EW_TIME_LEN + 1];
    if (ew_time_format(us, t) != 0) t[0] = '\0';
    put_str(b, key, t);
}

static int print_row(void *ud, const ew_dlq_row *r)
{
    int with_event = *(int *)ud;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"id\":%lld", (long long)r->id);
    put_str(&b, "event_id", r->event_id);
    put_str(&b, "event_name", r->event_name);
    put_str(&b, "handler", r->handler);
    put_str(&b, "subscriber_group", r->subscriber_group);
    put_str(&b, "error", r->error);
    ew_buf_printf(&b, ",\"attempts\":%d", r->attempts);
    put_time(&b, "first_failed_at", r->first_failed_us);
    put_time(&b, "last_failed_at", r->last_failed_us);
    put_str(&b, "status", ew_dlq_status_name(r->status));
    if (with_event) put_str(&b, "event", r->event);
    ew_buf_puts(&b, "}\n");
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
            if (strcmp(argv[i - 1], "--event") == 0) f.event_name = v;
            else if (strcmp(argv[i - 1], "--handler") == 0) f.handler = v;
            else if (strcmp(argv[i - 1], "--group") == 0) f.group = v;
            else if (strcmp(argv[i - 1], "--limit") == 0) f.limit = (size_t)strtoul(v, NULL, 10);
            else if (strcmp(argv[i - 1], "--status") == 0) {
                for (int s = EW_DLQ_PENDING; s <= EW_DLQ_DISCARDED; s++)
                    if (strcmp(v, ew_dlq_status_name((ew_dlq_status)s)) == 0) f.status = s;
                if (f.status < 0)
                    return ewctl_fail(2, "--status takes pending, retried, resolved or discarded");
            } else return ewctl_fail(2, "unknown option '%s'", argv[i - 1]);
        }
    } else if (strcmp(cmd, "show") == 0 || strcmp(cmd, "discard") == 0) {
        if (argc != 2) return ewctl_fail(2, "dlq %s takes one ID", cmd);
        if (parse_id(argv[1], &id)) return 2;
    } else {
        return ewctl_fail(2, "unknown dlq command '%s'", cmd);
    }
    ew_store *st;
    if (open_store(&st)) return 1;
    ew_error err = {0};
    int rc, with_event = strcmp(cmd, "show") == 0;
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
        rc = ew_store_dlq_set_status(st, id, EW_DLQ_DISCARDED, &err);
    }
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return 0;
}

static int print_stored(void *ud, const ew_stored_event *se)
{
    char *json;
    if (ew_event_encode(se->event, &json, NULL, NULL)) return 1;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"position\":%lld,\"version\":%lld", (long long)se->position,
                  (long long)se->version);
    put_str(&b, "stream_id", se->stream_id);
    put_time(&b, "recorded_at", se->recorded_us);
    ew_buf_printf(&b, ",\"event\":%s}\n", json);
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    free(json);
    return 0;
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
            if (strcmp(argv[i], "--from") == 0 && i + 1 < argc) from = strtoll(argv[++i], NULL, 10);
            else if (argv[i][0] == '-') return ewctl_fail(2, "unknown option '%s'", argv[i]);
            else stream = argv[i];
        }
        if (!stream) return ewctl_fail(2, "store stream needs a STREAM_ID");
        if (from < 1) return ewctl_fail(2, "--from takes a version from 1");
        if (open_store(&st)) return 1;
        rc = ew_store_read_stream(st, stream, from, 0, print_stored, NULL, &err);
    } else if (strcmp(argv[0], "purge") == 0) {
        if (argc != 1) return ewctl_fail(2, "store purge takes no arguments");
        if (open_store(&st)) return 1;
        size_t purged = 0;
        rc = ew_store_purge(st, 0, &purged, &err);
        if (rc == 0) printf("{\"purged\":%zu}\n", purged);
    } else {
        return ewctl_fail(2, "unknown store command '%s'", argv[0]);
    }
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return 0;
}
