/* ewctl saga — where every saga instance is and how it got there, from the event store that
 * EVENT_STORE_URL names (event_store.sagas and event_store.saga_transitions). Read-only: it
 * needs no bus and no running engine. Instances print as JSON lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "eventwire/sagas.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/saga.h"

static const char saga_usage[] =
    "usage: ewctl saga list [--status S] [--type T] [--limit N]\n"
    "       ewctl saga show ID\n"
    "       ewctl saga show --type T --key KEY\n"
    "\n"
    "The saga instances in the event store EVENT_STORE_URL names. list prints one JSON object\n"
    "per instance, most recently changed first: id, type, status, current step, correlation\n"
    "key and id, steps done, times and deadlines. show prints one instance (by id, or by its\n"
    "type and correlation key, e.g. the user id of a UserRegistration) with its data and every\n"
    "transition it went through, in order: statuses and steps before and after, the event that\n"
    "caused it (none for a deadline), when, and what happened. S is running, completed,\n"
    "compensating, compensated, failed or timed_out.\n";

static void put_time(ew_buf *b, const char *key, int64_t us)
{
    char t[EW_TIME_LEN + 1];
    ewctl_put_str(b, key, us && ew_time_format(us, t) == 0 ? t : NULL);
}

/* A column holding JSON: as JSON when it parses, else as a string (a hand-edited row). */
static void put_json(ew_buf *b, const char *key, const char *v)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *j = NULL;
    if (v && ew_json_parse(&j, v, strlen(v), NULL, &a, NULL) == 0) {
        ew_buf_printf(b, ",\"%s\":", key);
        ew_json_write(b, j);
    } else {
        ewctl_put_str(b, key, v);
    }
    ew_arena_release(&a);
}

/* The instance's fields, without the closing brace. */
void ewctl_saga_put_info(ew_buf *b, const ew_saga_info *in)
{
    ew_buf_puts(b, "{\"id\":");
    ew_json_write_string(b, in->id, strlen(in->id));
    ewctl_put_str(b, "type", in->type);
    ewctl_put_str(b, "status", ew_saga_status_name(in->status));
    ewctl_put_str(b, "step", in->step);
    ew_buf_printf(b, ",\"step_attempts\":%d", in->step_attempts);
    put_json(b, "steps_done", in->steps_done);
    ewctl_put_str(b, "correlation_key", in->correlation_key);
    ewctl_put_str(b, "correlation_id", in->correlation_id);
    ewctl_put_str(b, "subject", in->subject);
    ewctl_put_str(b, "reason", in->reason);
    ew_buf_printf(b, ",\"version\":%lld", (long long)in->version);
    put_time(b, "started_at", in->started_us);
    put_time(b, "updated_at", in->updated_us);
    put_time(b, "finished_at", in->finished_us);
    put_time(b, "deadline_at", in->deadline_us);
    put_time(b, "step_deadline_at", in->step_deadline_us);
}

static int print_info(void *ud, const ew_saga_info *in)
{
    (void)ud;
    ew_buf b;
    ew_buf_init(&b);
    ewctl_saga_put_info(&b, in);
    ew_buf_puts(&b, "}\n");
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    return 0;
}

static int put_transition(void *ud, const ew_saga_transition *t)
{
    ew_buf *b = ud;
    ew_buf_printf(b, "%s{\"seq\":%lld", b->data[b->len - 1] == '[' ? "" : ",", (long long)t->seq);
    put_time(b, "at", t->at_us);
    ewctl_put_str(b, "from_status", t->from_status);
    ewctl_put_str(b, "to_status", t->to_status);
    ewctl_put_str(b, "from_step", t->from_step);
    ewctl_put_str(b, "to_step", t->to_step);
    ewctl_put_str(b, "event_id", t->event_id);
    ewctl_put_str(b, "event_type", t->event_type);
    ewctl_put_str(b, "note", t->note);
    ew_buf_putc(b, '}');
    return 0;
}

int ewctl_saga_show_json(ew_store *st, const char *id, const char *type, const char *key, ew_buf *b,
                         ew_error *err)
{
    ew_saga_info in;
    int rc = id ? ew_saga_get_info(st, id, &in, err) : ew_saga_find(st, type, key, &in, err);
    if (rc) return rc;
    ewctl_saga_put_info(b, &in);
    put_json(b, "data", in.data);
    ew_buf_puts(b, ",\"transitions\":[");
    rc = ew_saga_transitions(st, in.id, put_transition, b, err);
    ew_buf_puts(b, "]}");
    if (!rc && b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    ew_saga_info_release(&in);
    return rc;
}

static int show(ew_store *st, const char *id, const char *type, const char *key, ew_error *err)
{
    ew_buf b;
    ew_buf_init(&b);
    int rc = ewctl_saga_show_json(st, id, type, key, &b, err);
    if (!rc) printf("%s\n", b.data);
    ew_buf_release(&b);
    return rc;
}

/* Parses list's options into f; 0, or the exit status of a usage error. */
static int list_options(int argc, char **argv, ew_saga_filter *f)
{
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) return ewctl_fail(2, "%s needs a value", argv[i]);
        const char *opt = argv[i], *v = argv[++i];
        if (strcmp(opt, "--type") == 0) {
            f->type = v;
            if (strcmp(v, EW_SAGA_USER_REGISTRATION) && strcmp(v, EW_SAGA_USER_DELETION) &&
                strcmp(v, EW_SAGA_PASSWORD_RESET))
                fprintf(stderr,
                        "ewctl: warning: '%s' is not a saga of the reference system "
                        "(" EW_SAGA_USER_REGISTRATION ", " EW_SAGA_USER_DELETION
                        ", " EW_SAGA_PASSWORD_RESET
                        "); only a saga of another program can match it\n",
                        v);
        } else if (strcmp(opt, "--status") == 0) {
            if ((f->status = ew_saga_status_parse(v)) < 0)
                return ewctl_fail(2, "--status takes running, completed, compensating, "
                                     "compensated, failed or timed_out");
        } else if (strcmp(opt, "--limit") == 0) {
            if (ewctl_parse_limit(v, &f->limit)) return 2;
        } else {
            return ewctl_fail(2, "unknown option '%s'", opt);
        }
    }
    return 0;
}

int ewctl_saga(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(saga_usage, stdout);
        return 0;
    }
    if (argc < 1) {
        fputs(saga_usage, stderr);
        return 2;
    }
    ew_saga_filter f = {.status = -1};
    const char *id = NULL, *type = NULL, *key = NULL;
    if (strcmp(argv[0], "list") == 0) {
        int rc = list_options(argc, argv, &f);
        if (rc) return rc;
    } else if (strcmp(argv[0], "show") == 0) {
        for (int i = 1; i < argc; i++) {
            if (strcmp(argv[i], "--type") == 0 && i + 1 < argc)
                type = argv[++i];
            else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
                key = argv[++i];
            else if (argv[i][0] == '-')
                return ewctl_fail(2, "unknown option '%s'", argv[i]);
            else if (!id)
                id = argv[i];
            else
                return ewctl_fail(2, "saga show takes one ID");
        }
        if (!id == !(type && key))
            return ewctl_fail(2, "saga show takes an ID, or --type and --key");
    } else {
        return ewctl_fail(2, "unknown saga command '%s'", argv[0]);
    }
    ew_store *st;
    if (ewctl_open_store(&st)) return 1;
    ew_error err = {0};
    int rc = strcmp(argv[0], "list") == 0 ? ew_saga_list(st, &f, print_info, NULL, &err)
                                          : show(st, id, type, key, &err);
    ew_store_close(st);
    if (rc) return ewctl_fail(1, "%s", err.msg);
    return 0;
}
