/* auth-service: its event handlers. Each runs in the inbox's transaction: its writes, the events
 * it emits (svc_ctx_emit, through the outbox) and the record that the event was handled commit
 * together, so a redelivered event changes nothing twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "auth.h"
#include "core/buf.h"
#include "core/json.h"

/* What a failure of the database means for the delivery. */
static ew_handler_result failed(ew_handler_ctx *ctx, const char *what, const ew_error *e)
{
    ew_ctx_set_error(ctx, "%s: %s", what, e->msg);
    return ew_err_retriable(e->code) ? EW_HANDLER_RETRY : EW_HANDLER_FAIL;
}

/* user.profile_created: the user's profile exists. */
static ew_handler_result on_profile_created(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_profile_created *d = ew_user_profile_created_data(ev);
    char now[32];
    auth_time(0, now);
    const char *p[] = {d->user_id, now};
    ew_error e = {0};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "UPDATE event_store.auth_users SET profile_created = 1, updated_at = $2 "
                    "WHERE user_id = $1",
                    p, 2, NULL, &e))
        return failed(ctx, "marking the profile created", &e);
    return EW_HANDLER_OK;
}

/* user.deactivated (also the registration saga's compensation): the account is closed and its
 * sessions end. */
static ew_handler_result on_deactivated(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_deactivated *d = ew_user_deactivated_data(ev);
    char now[32];
    auth_time(0, now);
    const char *p[] = {d->user_id, now, d->reason};
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    if (ew_txn_exec(t,
                    "UPDATE event_store.auth_users SET status = 'deactivated', status_reason = $3, "
                    "updated_at = $2 WHERE user_id = $1",
                    p, 3, NULL, &e) ||
        ew_txn_exec(t,
                    "UPDATE event_store.auth_sessions SET ended_at = $2 "
                    "WHERE user_id = $1 AND ended_at IS NULL",
                    p, 2, NULL, &e))
        return failed(ctx, "deactivating the user", &e);
    return EW_HANDLER_OK;
}

/* user.deletion_requested: everything held about the user goes, and the deletion saga hears it. */
static ew_handler_result on_deletion_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
    const ew_user_deletion_requested *d = ew_user_deletion_requested_data(ev);
    const char *p[] = {d->user_id};
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    int64_t n1 = 0, n2 = 0, n3 = 0;
    if (ew_txn_exec(t, "DELETE FROM event_store.auth_sessions WHERE user_id = $1", p, 1, &n1, &e) ||
        ew_txn_exec(t, "DELETE FROM event_store.auth_password_resets WHERE user_id = $1", p, 1, &n2,
                    &e) ||
        ew_txn_exec(t, "DELETE FROM event_store.auth_users WHERE user_id = $1", p, 1, &n3, &e))
        return failed(ctx, "deleting the user's data", &e);
    ew_user_data_deleted out = {.request_id = d->request_id, .user_id = d->user_id,
                                .service = AUTH_SERVICE, .records = n1 + n2 + n3};
    if (svc_ctx_emit(a->s, ctx, EW_T_USER_DATA_DELETED, &out, d->user_id, &e))
        return failed(ctx, "publishing user.data_deleted", &e);
    return EW_HANDLER_OK;
}

/* ---- user.data_export_requested ------------------------------------------------------------ */

typedef struct rows_json {
    ew_buf *b;
    size_t n;
} rows_json;

/* Appends a row as a JSON object (column: value, NULL as null). */
static void row_object(ew_buf *b, const ew_row *r, const char *skip)
{
    ew_buf_putc(b, '{');
    int first = 1;
    for (size_t i = 0; i < r->ncols; i++) {
        if (skip && !strcmp(r->names[i], skip)) continue;
        if (!first) ew_buf_putc(b, ',');
        first = 0;
        ew_json_write_string(b, r->names[i], strlen(r->names[i]));
        ew_buf_putc(b, ':');
        if (r->values[i])
            ew_json_write_string(b, r->values[i], strlen(r->values[i]));
        else
            ew_buf_puts(b, "null");
    }
    ew_buf_putc(b, '}');
}

static int add_row(void *ud, const ew_row *r)
{
    rows_json *rj = ud;
    if (rj->n++) ew_buf_putc(rj->b, ',');
    row_object(rj->b, r, NULL);
    return 0;
}

static int user_row(void *ud, const ew_row *r)
{
    rows_json *rj = ud;
    rj->n++;
    /* roles is a JSON array already */
    ew_buf_putc(rj->b, '{');
    for (size_t i = 0; i < r->ncols; i++) {
        if (i) ew_buf_putc(rj->b, ',');
        ew_json_write_string(rj->b, r->names[i], strlen(r->names[i]));
        ew_buf_putc(rj->b, ':');
        if (!r->values[i])
            ew_buf_puts(rj->b, "null");
        else if (!strcmp(r->names[i], "roles") && r->values[i][0] == '[')
            ew_buf_puts(rj->b, r->values[i]);
        else if (!strcmp(r->names[i], "profile_created"))
            ew_buf_puts(rj->b, strcmp(r->values[i], "0") ? "true" : "false");
        else
            ew_json_write_string(rj->b, r->values[i], strlen(r->values[i]));
    }
    ew_buf_putc(rj->b, '}');
    return 1;
}

static ew_handler_result on_export_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
    const ew_user_data_export_requested *d = ew_user_data_export_requested_data(ev);
    const char *p[] = {d->user_id};
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    ew_buf b;
    ew_buf_init(&b);
    rows_json rj = {&b, 0};
    ew_buf_puts(&b, "{\"user\":");
    int rc = ew_txn_query(t,
                          "SELECT user_id, username, email, roles, status, status_reason, "
                          "profile_created, created_at, updated_at FROM event_store.auth_users "
                          "WHERE user_id = $1",
                          p, 1, user_row, &rj, &e);
    if (!rc && rj.n == 0) ew_buf_puts(&b, "null");
    ew_buf_puts(&b, ",\"sessions\":[");
    rj.n = 0;
    if (!rc)
        rc = ew_txn_query(t,
                          "SELECT session_id, ip_address, user_agent, created_at, expires_at, "
                          "ended_at FROM event_store.auth_sessions WHERE user_id = $1 "
                          "ORDER BY created_at",
                          p, 1, add_row, &rj, &e);
    ew_buf_puts(&b, "],\"password_resets\":[");
    rj.n = 0;
    if (!rc)
        rc = ew_txn_query(t,
                          "SELECT request_id, created_at, expires_at, used_at FROM "
                          "event_store.auth_password_resets WHERE user_id = $1 ORDER BY created_at",
                          p, 1, add_row, &rj, &e);
    ew_buf_puts(&b, "]}");
    if (!rc && b.oom) rc = ew_error_set(&e, EW_ENOMEM, "out of memory");
    if (!rc) {
        ew_user_data_collected out = {.export_id = d->export_id, .user_id = d->user_id,
                                      .service = AUTH_SERVICE, .data = b.data};
        rc = svc_ctx_emit(a->s, ctx, EW_T_USER_DATA_COLLECTED, &out, d->user_id, &e);
    }
    ew_buf_release(&b);
    if (rc) return failed(ctx, "collecting the user's data", &e);
    return EW_HANDLER_OK;
}

int auth_handlers(auth *a, ew_error *err)
{
    struct {
        const char *pattern;
        ew_handler_fn fn;
    } h[] = {
        {"user.profile_created", on_profile_created},
        {"user.deactivated", on_deactivated},
        {"user.deletion_requested", on_deletion_requested},
        {"user.data_export_requested", on_export_requested},
    };
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
        int rc = svc_subscribe(a->s, h[i].pattern, h[i].fn, a, err);
        if (rc) return rc;
    }
    return 0;
}
