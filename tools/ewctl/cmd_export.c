/* ewctl export — watching a GDPR data export being built: export-service gathers one answer from
 * each service it expects and then writes the document. `watch` reads export-service's own
 * database (SERVICE_DB_URL for export-service: event_store.export_requests and export_answers),
 * shows the answers coming in with the progress module (count, rate, time left on a terminal;
 * a plain line per answer elsewhere) and ends with a summary and the export as JSON. It never
 * prints the download link, whose key is a capability, nor anything of the answers' data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/id.h"
#include "ewctl.h"
#include "progress.h"
#include "svc_settings.h"

static const char export_usage[] =
    "usage: ewctl export watch EXPORT_ID [--timeout SECONDS]\n"
    "\n"
    "Watches an export that export-service is building, from its database (SERVICE_DB_URL, with\n"
    "{SERVICE_NAME} export-service; var/export-service.db where `ewctl up` ran): the answers of\n"
    "the services it waits for as they come, on stderr — on a terminal one line with the count,\n"
    "the rate and the time left, elsewhere a line per answer — until the export is completed or\n"
    "failed. Then a summary line, and on stdout the export as JSON: status, the services "
    "expected,\n"
    "answered and missing, times, the reason of a failure and the document's file (in\n"
    "EXPORT_DIR). Exit status\n"
    "0 when it completed, 1 when it failed, is not there, or is still pending after --timeout\n"
    "seconds (default: until its deadline, plus 10 s for export-service to mark it failed).\n"
    "The download link is not printed: GET /exports/EXPORT_ID gives it to its owner.\n";

#define POLL_MS 200
#define MAX_SERVICES 32

typedef struct xrow {
    bool found;
    char status[16], user_id[64], expected[1200];
    char created_at[40], deadline_at[40], finished_at[40];
    char *reason, *file_name;
} xrow;

static void copy(char *dst, size_t n, const char *v)
{
    snprintf(dst, n, "%s", v ? v : "");
}

static int take_row(void *ud, const ew_row *r)
{
    xrow *x = ud;
    if (r->ncols < 8) return 0;
    const char *const *v = r->values;
    x->found = true;
    copy(x->status, sizeof x->status, v[0]);
    copy(x->user_id, sizeof x->user_id, v[1]);
    copy(x->expected, sizeof x->expected, v[2]);
    copy(x->created_at, sizeof x->created_at, v[3]);
    copy(x->deadline_at, sizeof x->deadline_at, v[4]);
    copy(x->finished_at, sizeof x->finished_at, v[5]);
    free(x->reason);
    free(x->file_name);
    x->reason = v[6] ? strdup(v[6]) : NULL;
    x->file_name = v[7] ? strdup(v[7]) : NULL;
    return 0;
}

typedef struct answers {
    char names[MAX_SERVICES][201];
    size_t n;
} answers;

static int take_answer(void *ud, const ew_row *r)
{
    answers *a = ud;
    if (r->ncols < 1 || !r->values[0] || a->n == MAX_SERVICES) return 0;
    copy(a->names[a->n++], sizeof a->names[0], r->values[0]);
    return 0;
}

/* The export's row and its answers, in one read transaction. */
static int read_export(ew_store *st, const char *id, xrow *x, answers *a, ew_error *err)
{
    ew_txn *t;
    int rc = ew_store_begin(st, &t, err);
    if (rc) return rc;
    const char *p[] = {id};
    x->found = false;
    a->n = 0;
    rc = ew_txn_query(t,
                      "SELECT status, user_id, expected, created_at, deadline_at, finished_at, "
                      "reason, file_name FROM event_store.export_requests WHERE export_id = $1",
                      p, 1, take_row, x, err);
    if (!rc)
        rc = ew_txn_query(t,
                          "SELECT service FROM event_store.export_answers WHERE export_id = $1 "
                          "ORDER BY service",
                          p, 1, take_answer, a, err);
    ew_txn_rollback(t);
    return rc;
}

static bool answered(const answers *a, const char *name, size_t len)
{
    for (size_t i = 0; i < a->n; i++)
        if (strlen(a->names[i]) == len && memcmp(a->names[i], name, len) == 0) return true;
    return false;
}

/* "services_expected", "services_answered" and "services_missing" as JSON arrays. */
static void put_services(ew_buf *b, const xrow *x, const answers *a)
{
    for (int pass = 0; pass < 3; pass++) {
        static const char *const keys[] = {"services_expected", "services_answered",
                                           "services_missing"};
        ew_buf_printf(b, ",\"%s\":[", keys[pass]);
        size_t k = 0;
        if (pass == 1) {
            for (size_t i = 0; i < a->n; i++) {
                ew_buf_puts(b, k++ ? "," : "");
                ew_json_write_string(b, a->names[i], strlen(a->names[i]));
            }
        } else {
            for (const char *p = x->expected; *p;) {
                size_t len = strcspn(p, ",");
                if (len && (pass == 0 || !answered(a, p, len))) {
                    ew_buf_puts(b, k++ ? "," : "");
                    ew_json_write_string(b, p, len);
                }
                p += len;
                if (*p == ',') p++;
            }
        }
        ew_buf_putc(b, ']');
    }
}

static size_t count_expected(const char *csv)
{
    size_t n = 0;
    for (const char *p = csv; *p;) {
        size_t len = strcspn(p, ",");
        if (len) n++;
        p += len;
        if (*p == ',') p++;
    }
    return n;
}

/* Opens export-service's own database; 0, or 1 after saying why. dir gets EXPORT_DIR, where
 * the documents are. */
static int open_export_db(ew_store **st, char *dir, size_t dir_n)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    /* export-service's settings: SERVICE_DB_URL, EXPORT_DIR */
    int rc = ew_config_new(&cfg, &err);
    if (!rc) rc = svc_settings_define(cfg, "export-service", &err);
    if (!rc) rc = ew_config_from_env(cfg, &err);
    if (rc) {
        ew_config_free(cfg);
        return ewctl_fail(1, "%s", err.msg);
    }
    snprintf(dir, dir_n, "%s", ew_config_get(cfg, "EXPORT_DIR"));
    const char *pattern = ew_config_get(cfg, "SERVICE_DB_URL");
    const char *at = strstr(pattern, "{SERVICE_NAME}");
    char url[1200];
    if (at)
        snprintf(url, sizeof url, "%.*sexport-service%s", (int)(at - pattern), pattern,
                 at + strlen("{SERVICE_NAME}"));
    else
        snprintf(url, sizeof url, "%s", pattern);
    if (strncmp(url, "sqlite:", 7) == 0 && access(url + 7, F_OK) != 0) {
        ew_config_free(cfg);
        return ewctl_fail(1,
                          "no database of export-service at %s — run where `ewctl up` ran, or "
                          "set SERVICE_DB_URL",
                          url + 7);
    }
    rc = ew_store_open(st, &(ew_store_options){.config = cfg, .url = url}, &err);
    ew_config_free(cfg);
    if (rc) return ewctl_fail(1, "cannot open export-service's database: %s", err.msg);
    return 0;
}

static int watch(const char *id, long timeout_s)
{
    ew_store *st;
    char dir[1024];
    if (open_export_db(&st, dir, sizeof dir)) return 1;
    xrow x = {0};
    answers a = {0};
    ew_error err = {0};
    int status = 1;
    if (read_export(st, id, &x, &a, &err)) {
        ewctl_fail(1, "cannot read the export: %s", err.msg);
        goto out;
    }
    if (!x.found) {
        ewctl_fail(1, "no export %s in export-service's database", id);
        goto out;
    }
    int64_t deadline_us = 0, end_ns;
    if (timeout_s >= 0) {
        end_ns = ew_mono_ns() + (int64_t)timeout_s * 1000000000LL;
    } else {
        if (ew_time_parse(x.deadline_at, &deadline_us)) deadline_us = ew_now_us();
        int64_t left_us = deadline_us + 10000000LL - ew_now_us();
        end_ns = ew_mono_ns() + (left_us > 0 ? left_us : 0) * 1000;
    }
    ewctl_progress pr;
    ewctl_progress_start(&pr, stderr, "collected", "answers", count_expected(x.expected));
    if (!pr.tty) pr.every_ns = 0; /* elsewhere: a line for each answer */
    size_t seen = a.n;
    if (seen) ewctl_progress_add(&pr, seen);
    while (strcmp(x.status, "pending") == 0 && ew_mono_ns() < end_ns) {
        usleep(POLL_MS * 1000);
        if (read_export(st, id, &x, &a, &err)) {
            ewctl_progress_end(&pr);
            ewctl_fail(1, "cannot read the export: %s", err.msg);
            goto out;
        }
        if (a.n > seen) {
            ewctl_progress_add(&pr, a.n - seen);
            seen = a.n;
        } else if (pr.tty) {
            ewctl_progress_add(&pr, 0); /* the rate and the time left move on */
        }
    }
    /* once it ended the answers are emptied, not deleted: the count stays */
    ewctl_progress_end(&pr);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"export_id\":");
    ew_json_write_string(&b, id, strlen(id));
    ewctl_put_str(&b, "user_id", x.user_id);
    ewctl_put_str(&b, "status", x.status);
    put_services(&b, &x, &a);
    ewctl_put_str(&b, "created_at", x.created_at);
    ewctl_put_str(&b, "deadline_at", x.deadline_at);
    ewctl_put_str(&b, "finished_at", *x.finished_at ? x.finished_at : NULL);
    ewctl_put_str(&b, "reason", x.reason);
    char doc[2300];
    if (x.file_name) snprintf(doc, sizeof doc, "%s/%s", dir, x.file_name);
    ewctl_put_str(&b, "document", x.file_name ? doc : NULL);
    ew_buf_puts(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
    fflush(stdout);
    ew_buf_release(&b);
    if (strcmp(x.status, "completed") == 0)
        status = 0;
    else if (strcmp(x.status, "pending") == 0)
        ewctl_fail(1, "export %s is still pending%s", id,
                   timeout_s >= 0 ? " after --timeout"
                                  : " past its deadline: is export-service running?");
    else
        ewctl_fail(1, "export %s failed: %s", id, x.reason ? x.reason : "no reason given");
out:
    free(x.reason);
    free(x.file_name);
    ew_store_close(st);
    return status;
}

int ewctl_export(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(export_usage, stdout);
        return 0;
    }
    if (argc < 2 || strcmp(argv[0], "watch") != 0) {
        fputs(export_usage, stderr);
        return 2;
    }
    const char *id = argv[1];
    if (!ew_uuid_valid(id)) return ewctl_fail(2, "'%s' is not an export id (a UUID)", id);
    long timeout_s = -1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            char *end;
            timeout_s = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || timeout_s < 0 || timeout_s > 86400)
                return ewctl_fail(2, "--timeout takes seconds, 0 to 86400");
        } else {
            ewctl_fail(2, "unexpected argument '%s'", argv[i]);
            fputs(export_usage, stderr);
            return 2;
        }
    }
    return watch(id, timeout_s);
}
