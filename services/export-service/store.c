/* export-service: its store -- the tables in the service's database, and what routes, handlers
 * and the sweeper all read and write there: who answered an export, and its failure at the
 * deadline. */
#include <stdio.h>
#include <string.h>
#include "core/buf.h"
#include "export.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
const char *const export_schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.export_requests ("
    " export_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " requested_by TEXT,"
    " status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),"
    " expected TEXT NOT NULL,"
    " correlation_id TEXT,"
    " created_at TEXT NOT NULL,"
    " deadline_at TEXT NOT NULL,"
    " finished_at TEXT,"
    " download_url TEXT,"
    " expires_at TEXT,"
    " file_name TEXT,"
    " reason TEXT)",
    "CREATE TABLE IF NOT EXISTS event_store.export_answers ("
    " export_id TEXT NOT NULL,"
    " service TEXT NOT NULL,"
    " data TEXT NOT NULL,"
    " received_at TEXT NOT NULL,"
    " PRIMARY KEY (export_id, service))",
    NULL,
};

void export_file_path(const exporter *x, const char *file_name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", x->dir, file_name);
}

/* ---- answers --------------------------------------------------------------------------------- */

static int add_name(void *ud, const ew_row *r)
{
    svc_names *l = ud;
    const char *v = r->values[0];
    if (!v || l->n == SVC_MAX_SERVICES) return 0;
    size_t used = 0;
    if (l->n) used = (size_t)(l->name[l->n - 1] - l->buf) + strlen(l->name[l->n - 1]) + 1;
    size_t len = strlen(v);
    if (used + len + 1 > sizeof l->buf) return 1;
    memcpy(l->buf + used, v, len + 1);
    l->name[l->n++] = l->buf + used;
    return 0;
}

int export_answered(ew_txn *t, const char *export_id, svc_names *l, ew_error *err)
{
    l->n = 0;
    const char *p[] = {export_id};
    return ew_txn_query(t,
                        "SELECT service FROM event_store.export_answers WHERE export_id = $1"
                        " ORDER BY service",
                        p, 1, add_name, l, err);
}

/* ---- failure at the deadline ----------------------------------------------------------------- */

int export_fail_due(exporter *x, ew_txn *t, const char *export_id, const char *now, bool *failed,
                    ew_error *err)
{
    *failed = false;
    const char *p[] = {export_id};
    svc_row r;
    int rc = svc_query_row(t,
                           "SELECT user_id, status, expected, deadline_at, correlation_id,"
                           " created_at FROM event_store.export_requests WHERE export_id = $1",
                           p, 1, &r, err);
    if (rc) return rc;
    if (!r.found || strcmp(r.v[1], "pending") || strcmp(r.v[3], now) > 0) goto done;
    svc_names expected, answered;
    if (svc_names_parse(&expected, r.v[2])) expected.n = 0;
    if ((rc = export_answered(t, export_id, &answered, err))) goto done;
    const char *missing[SVC_MAX_SERVICES];
    size_t nm = 0;
    ew_buf why;
    ew_buf_init(&why);
    ew_buf_printf(&why, "no answer by the deadline (%s) from:", r.v[3]);
    for (size_t i = 0; i < expected.n; i++)
        if (!svc_names_has(&answered, expected.name[i])) {
            ew_buf_printf(&why, "%s %s", nm ? "," : "", expected.name[i]);
            missing[nm++] = expected.name[i];
        }
    if (why.oom) {
        ew_buf_release(&why);
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto done;
    }
    const char *pu[] = {export_id, now, why.data};
    int64_t changes = 0;
    rc = ew_txn_exec(t,
                     "UPDATE event_store.export_requests SET status = 'failed', finished_at = $2,"
                     " reason = $3 WHERE export_id = $1 AND status = 'pending'",
                     pu, 3, &changes, err);
    /* the answers that did come are not needed any more */
    if (!rc && changes == 1)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.export_answers SET data = '{}'"
                         " WHERE export_id = $1",
                         p, 1, NULL, err);
    if (!rc && changes == 1) {
        ew_user_data_export_failed f = {.export_id = export_id,
                                        .user_id = r.v[0],
                                        .reason = why.data,
                                        .missing = {missing, nm}};
        ew_event_attrs a = {.source = svc_name(x->s), .subject = r.v[0], .correlation_id = r.v[4]};
        ew_event *ev = NULL;
        rc = ew_event_new(&ev, EW_T_USER_DATA_EXPORT_FAILED, &f, &a, err);
        if (!rc) rc = ew_outbox_add(t, ev, err);
        ew_event_unref(ev);
        if (!rc) {
            *failed = true;
            svc_log(x->s, EW_LOG_WARN, "export %s failed: %s", export_id, why.data);
        }
    }
    ew_buf_release(&why);
done:
    svc_row_free(&r);
    return rc;
}
