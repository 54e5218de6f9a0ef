/* export-service: the HTTP API.
 *
 *   POST /exports {user_id, requested_by?}  202 {export_id, status, status_url}
 *   GET  /exports?user_id=ID                the user's exports
 *   GET  /exports/{export_id}               status, who answered, the link once completed
 *   GET  /exports/{export_id}/download?key= the document; 404 before completion, 410 after
 *                                           expiry
 *
 * Every route takes the owner's token or an admin's (svc_caller); an export of another user is
 * answered 404, as one that does not exist; the download also needs the link's key. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "export.h"

#define REQUESTED_BY_MAX 200

/* ---- POST /exports --------------------------------------------------------------------------- */

static void post_export(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    exporter *x = ud;
    static const char *const fields[] = {"user_id", "requested_by", NULL};
    const char *user_id, *by;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "user_id", SVC_REQUIRED, 64, &user_id) ||
        svc_json_str(rq, res, "requested_by", SVC_OPTIONAL, REQUESTED_BY_MAX, &by))
        return;
    if (svc_require_uuid(res, "user_id", user_id)) return;
    if (svc_allow_user(rq, res, user_id)) return;
    /* exports of one user's data, by whoever asks: each one makes every service collect it */
    char key[64];
    snprintf(key, sizeof key, "export:%s", user_id);
    int64_t wait =
        svc_limiter_take(x->limits, key, x->per_user, x->limit_window_s, ew_now_us() / 1000000);
    if (wait) {
        svc_reply_too_many(res, wait, "data exports of this user");
        return;
    }
    if (!by) by = svc_caller(rq)->sub;
    char export_id[EW_UUID_LEN + 1], event_id[EW_UUID_LEN + 1];
    char now[EW_TIME_LEN + 1], deadline[EW_TIME_LEN + 1];
    svc_random_uuid(export_id); /* it names a download: not guessable, not its time */
    ew_uuid7(event_id);
    int64_t now_us = ew_now_us();
    ew_time_format(now_us, now);
    ew_time_format(now_us + x->timeout_s * 1000000, deadline);
    ew_txn *t;
    ew_error e = {0};
    if (svc_begin(x->s, &t, &e)) {
        svc_reply_failure(x->s, res, "requesting an export", &e);
        return;
    }
    /* the row and the event that asks every service, in one transaction */
    const char *p[] = {export_id, user_id, by, x->services_csv, now, deadline, event_id};
    int rc = ew_txn_exec(t,
                         "INSERT INTO event_store.export_requests (export_id, user_id,"
                         " requested_by, status, expected, created_at, deadline_at,"
                         " correlation_id) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)",
                         p, 7, NULL, &e);
    ew_event *ev = NULL;
    if (!rc) {
        ew_user_data_export_requested d = {
            .export_id = export_id, .user_id = user_id, .requested_by = by};
        ew_event_attrs a = {.source = svc_name(x->s),
                            .subject = user_id,
                            .id = event_id,
                            .traceparent = ew_http_traceparent(rq)};
        rc = ew_event_new(&ev, EW_T_USER_DATA_EXPORT_REQUESTED, &d, &a, &e);
    }
    if (!rc) rc = svc_outbox_room(x->s, t, &e);
    if (!rc) rc = ew_outbox_add(t, ev, &e);
    ew_event_unref(ev);
    if (svc_finish(x->s, t, rc, &e)) {
        svc_reply_failure(x->s, res, "requesting an export", &e);
        return;
    }
    char details[80];
    snprintf(details, sizeof details, "{\"export_id\":\"%s\"}", export_id);
    svc_audit(x->s, rq, NULL, "export.requested", user_id, details);
    char loc[80];
    snprintf(loc, sizeof loc, "/exports/%s", export_id);
    ew_http_header_add(res, "Location", loc);
    ew_http_obj_begin(res, 202);
    ew_http_obj_str(res, "export_id", export_id);
    ew_http_obj_str(res, "user_id", user_id);
    ew_http_obj_str(res, "status", "pending");
    ew_http_obj_str(res, "status_url", loc);
    ew_http_obj_str(res, "deadline_at", deadline);
    ew_http_obj_end(res);
}

/* ---- GET /exports?user_id= ------------------------------------------------------------------- */

static void list_exports(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    exporter *x = ud;
    const char *user_id = ew_http_query(rq, "user_id");
    if (!user_id) user_id = svc_caller(rq)->sub; /* the caller's own */
    if (svc_require_uuid(res, "user_id", user_id)) return;
    if (svc_allow_user(rq, res, user_id)) return;
    ew_txn *t;
    ew_error e = {0};
    if (svc_begin(x->s, &t, &e)) {
        svc_reply_failure(x->s, res, "listing exports", &e);
        return;
    }
    ew_buf rows;
    ew_buf_init(&rows);
    const char *p[] = {user_id};
    int rc = svc_rows_json(t,
                           "SELECT export_id, status, created_at, deadline_at, finished_at,"
                           " download_url, expires_at FROM event_store.export_requests"
                           " WHERE user_id = $1 ORDER BY created_at, export_id",
                           p, 1, NULL, &rows, NULL, &e);
    ew_txn_rollback(t);
    if (rc) {
        svc_reply_failure(x->s, res, "listing exports", &e);
    } else {
        ew_http_obj_begin(res, 200);
        ew_http_obj_str(res, "user_id", user_id);
        ew_http_obj_raw(res, "exports", rows.data);
        ew_http_obj_end(res);
    }
    ew_buf_release(&rows);
}

/* ---- GET /exports/{export_id} ---------------------------------------------------------------- */

enum {
    C_USER,
    C_STATUS,
    C_EXPECTED,
    C_CREATED,
    C_DEADLINE,
    C_FINISHED,
    C_URL,
    C_EXPIRES,
    C_FILE,
    C_REASON,
    C_BY
};
#define EXPORT_COLUMNS                                                                             \
    "SELECT user_id, status, expected, created_at, deadline_at, finished_at, download_url,"        \
    " expires_at, file_name, reason, requested_by FROM event_store.export_requests"                \
    " WHERE export_id = $1"

/* The {export_id} of the path, checked, the time now, and a transaction to read the export in:
 * 0, or -1 after answering. */
static int begin_read(exporter *x, const ew_http_request *rq, ew_http_response *res,
                      const char **id, char now[EW_TIME_LEN + 1], ew_txn **t)
{
    *id = ew_http_param(rq, "export_id");
    if (svc_require_uuid(res, "export_id", *id)) return -1;
    svc_time(0, now);
    ew_error e = {0};
    if (svc_begin(x->s, t, &e)) {
        svc_reply_failure(x->s, res, "reading an export", &e);
        return -1;
    }
    return 0;
}

static void get_export(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    exporter *x = ud;
    const char *id;
    char now[EW_TIME_LEN + 1];
    ew_txn *t;
    if (begin_read(x, rq, res, &id, now, &t)) return;
    ew_error e = {0};
    /* a deadline that passed since the sweeper's last look is enforced now */
    bool failed = false;
    svc_row r = {0};
    svc_names answered;
    const char *p[] = {id};
    int rc = export_fail_due(x, t, id, now, &failed, &e);
    if (!rc) rc = svc_query_row(t, EXPORT_COLUMNS, p, 1, &r, &e);
    if (!rc) rc = export_answered(t, id, &answered, &e);
    if (rc) {
        ew_txn_rollback(t);
    } else if (failed) {
        rc = svc_commit(x->s, t, &e);
    } else {
        ew_txn_rollback(t);
    }
    if (rc) {
        svc_reply_failure(x->s, res, "reading an export", &e);
        svc_row_free(&r);
        return;
    }
    if (!r.found || !svc_caller_may(rq, r.v[C_USER])) { /* another's: as if there were none */
        if (r.found) svc_audit_refusal(rq, r.v[C_USER], "another user's export");
        ew_http_reply_error(res, 404, "export_id", "no export %s", id);
        svc_row_free(&r);
        return;
    }
    svc_names expected, missing;
    if (svc_names_parse(&expected, r.v[C_EXPECTED])) expected.n = 0;
    missing.n = 0;
    for (size_t i = 0; i < expected.n; i++)
        if (!svc_names_has(&answered, expected.name[i]))
            missing.name[missing.n++] = expected.name[i];
    bool completed = !strcmp(r.v[C_STATUS], "completed");
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "export_id", id);
    ew_http_obj_str(res, "user_id", r.v[C_USER]);
    ew_http_obj_str(res, "status", r.v[C_STATUS]);
    ew_http_obj_str(res, "requested_by", r.v[C_BY]);
    ew_http_obj_str(res, "created_at", r.v[C_CREATED]);
    ew_http_obj_str(res, "deadline_at", r.v[C_DEADLINE]);
    ew_http_obj_str(res, "finished_at", r.v[C_FINISHED]);
    ew_http_obj_strlist(res, "services_expected", expected.name, expected.n);
    ew_http_obj_strlist(res, "services_answered", answered.name, answered.n);
    ew_http_obj_strlist(res, "services_missing", missing.name, missing.n);
    if (completed) {
        ew_http_obj_str(res, "download_url", r.v[C_URL]);
        ew_http_obj_str(res, "expires_at", r.v[C_EXPIRES]);
        ew_http_obj_bool(res, "expired",
                         !r.v[C_FILE] || (r.v[C_EXPIRES] && strcmp(r.v[C_EXPIRES], now) <= 0));
    }
    if (r.v[C_REASON]) ew_http_obj_str(res, "reason", r.v[C_REASON]);
    ew_http_obj_end(res);
    svc_row_free(&r);
}

/* ---- GET /exports/{export_id}/download ------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    ew_buf b;
    ew_buf_init(&b);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        ew_buf_append(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (bad || b.oom) {
        ew_buf_release(&b);
        return NULL;
    }
    if (!b.data) ew_buf_puts(&b, "");
    return ew_buf_steal(&b, len);
}

/* Does the key of the request match the one in the export's link? Both are hashed first, so that
 * the comparison takes the same time whatever they hold. A pending export has no link: it matches
 * no key, and answers 404 as before. */
static bool key_matches(const char *url, const char *key)
{
    const char *k = url ? strstr(url, "?key=") : NULL;
    if (!k || !key) return false;
    k += 5;
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof a, (const unsigned char *)k, strlen(k), NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)key, strlen(key), NULL, 0);
    return sodium_memcmp(a, b, sizeof a) == 0;
}

static void download(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    exporter *x = ud;
    const char *id;
    char now[EW_TIME_LEN + 1];
    ew_txn *t;
    if (begin_read(x, rq, res, &id, now, &t)) return;
    ew_error e = {0};
    svc_row r;
    const char *p[] = {id};
    int rc = svc_query_row(t, EXPORT_COLUMNS, p, 1, &r, &e);
    ew_txn_rollback(t);
    if (rc) {
        svc_reply_failure(x->s, res, "reading an export", &e);
        return;
    }
    if (!r.found || !svc_caller_may(rq, r.v[C_USER])) { /* another's: as if there were none */
        if (r.found) svc_audit_refusal(rq, r.v[C_USER], "another user's export");
        ew_http_reply_error(res, 404, "export_id", "no export %s", id);
    } else if (!strcmp(r.v[C_STATUS], "pending")) {
        ew_http_reply_error(res, 404, "export_id",
                            "export %s is not ready: still waiting for answers", id);
    } else if (!strcmp(r.v[C_STATUS], "failed")) {
        ew_http_reply_error(res, 404, "export_id", "export %s failed: %s", id,
                            r.v[C_REASON] ? r.v[C_REASON] : "unknown reason");
    } else if (!key_matches(r.v[C_URL], ew_http_query(rq, "key"))) {
        if (ew_http_query(rq, "key")) svc_audit_refusal(rq, r.v[C_USER], "wrong download key");
        ew_http_reply_error(res, 404, "key", "no export %s with this key", id);
    } else if (!r.v[C_FILE] || !r.v[C_EXPIRES] || strcmp(r.v[C_EXPIRES], now) <= 0) {
        ew_http_reply_error(res, 410, "export_id", "the download link of export %s expired at %s",
                            id, r.v[C_EXPIRES] ? r.v[C_EXPIRES] : "?");
    } else {
        char path[4200];
        export_file_path(x, r.v[C_FILE], path, sizeof path);
        size_t len = 0;
        char *doc = read_file(path, &len);
        if (doc) {
            char disp[120];
            snprintf(disp, sizeof disp, "attachment; filename=\"export-%s.json\"", id);
            ew_http_header_add(res, "Content-Disposition", disp);
            ew_http_header_add(res, "Cache-Control", "no-store");
            ew_http_reply_raw(res, 200, doc, len);
            free(doc);
            char details[80];
            snprintf(details, sizeof details, "{\"export_id\":\"%s\"}", id);
            svc_audit(x->s, rq, NULL, "export.downloaded", r.v[C_USER], details);
        } else if (errno == ENOENT) {
            ew_http_reply_error(res, 410, "export_id", "the document of export %s is gone", id);
        } else {
            svc_log(x->s, EW_LOG_ERROR, "export %s: cannot read %s: %s", id, path, strerror(errno));
            ew_http_reply_error(res, 500, NULL,
                                "reading an export: internal error (see the "
                                "service's log)");
        }
    }
    svc_row_free(&r);
}

const svc_http_route export_routes[] = {
    {"POST /exports", EW_HTTP_JSON, post_export},
    {"GET /exports", 0, list_exports},
    {"GET /exports/{export_id}", 0, get_export},
    {"GET /exports/{export_id}/download", 0, download},
    {0},
};
