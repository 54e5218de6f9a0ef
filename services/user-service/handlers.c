/* user-service: its event handlers, each in the inbox's transaction with the events it emits. */
#include <stdio.h>
#include <string.h>
#include "core/buf.h"
#include "core/json.h"
#include "user.h"

static ew_handler_result failed(ew_handler_ctx *ctx, const char *what, const ew_error *e)
{
    ew_ctx_set_error(ctx, "%s: %s", what, e->msg);
    return ew_err_retriable(e->code) ? EW_HANDLER_RETRY : EW_HANDLER_FAIL;
}

/* user.registered: the profile, with the username as display name, and the default
 * preferences; user.profile_created and user.preferences_updated tell the others. */
static ew_handler_result on_registered(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    usvc *u = ud;
    const ew_user_registered *d = ew_user_registered_data(ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    char now[32];
    user_now(now);
    svc_row row;
    const char *p[] = {d->user_id, d->username, d->email, now};
    if (svc_query_row(t, "SELECT user_id FROM event_store.user_profiles WHERE user_id = $1", p, 1,
                      &row, &e))
        return failed(ctx, "looking for the profile", &e);
    bool exists = row.found;
    svc_row_free(&row);
    if (exists) return EW_HANDLER_OK; /* made already (the same user registered twice?) */
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.user_profiles (user_id, username, email, "
                    "display_name, verified, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $2, 0, $4, $4)",
                    p, 4, NULL, &e) ||
        ew_txn_exec(t,
                    "INSERT INTO event_store.user_preferences (user_id, preferences, updated_at) "
                    "VALUES ($1, $2, $3)",
                    (const char *const[]){d->user_id, USER_DEFAULT_PREFERENCES, now}, 3, NULL,
                    &e))
        return failed(ctx, "creating the profile", &e);
    ew_user_profile_created pc = {.user_id = d->user_id, .display_name = d->username};
    ew_user_preferences_updated pu = {.user_id = d->user_id,
                                      .preferences = USER_DEFAULT_PREFERENCES};
    if (svc_ctx_emit(u->s, ctx, EW_T_USER_PROFILE_CREATED, &pc, d->user_id, &e) ||
        svc_ctx_emit(u->s, ctx, EW_T_USER_PREFERENCES_UPDATED, &pu, d->user_id, &e))
        return failed(ctx, "publishing the profile", &e);
    return EW_HANDLER_OK;
}

/* user.deletion_requested: the profile and the preferences go; user.data_deleted says so. */
static ew_handler_result on_deletion_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    usvc *u = ud;
    const ew_user_deletion_requested *d = ew_user_deletion_requested_data(ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    const char *p[] = {d->user_id};
    int64_t n1 = 0, n2 = 0;
    if (ew_txn_exec(t, "DELETE FROM event_store.user_preferences WHERE user_id = $1", p, 1, &n1,
                    &e) ||
        ew_txn_exec(t, "DELETE FROM event_store.user_profiles WHERE user_id = $1", p, 1, &n2, &e))
        return failed(ctx, "deleting the user's data", &e);
    ew_user_data_deleted out = {.request_id = d->request_id, .user_id = d->user_id,
                                .service = USER_SERVICE, .records = n1 + n2};
    if (svc_ctx_emit(u->s, ctx, EW_T_USER_DATA_DELETED, &out, d->user_id, &e))
        return failed(ctx, "publishing user.data_deleted", &e);
    return EW_HANDLER_OK;
}

/* Writes the first row as a JSON object; "preferences" is JSON text already, "verified" a
 * boolean. */
static int row_json(void *ud, const ew_row *r)
{
    ew_buf *b = ud;
    ew_buf_putc(b, '{');
    for (size_t i = 0; i < r->ncols; i++) {
        if (i) ew_buf_putc(b, ',');
        ew_json_write_string(b, r->names[i], strlen(r->names[i]));
        ew_buf_putc(b, ':');
        const char *v = r->values[i];
        if (!v)
            ew_buf_puts(b, "null");
        else if (!strcmp(r->names[i], "preferences") && v[0] == '{')
            ew_buf_puts(b, v);
        else if (!strcmp(r->names[i], "verified"))
            ew_buf_puts(b, strcmp(v, "0") ? "true" : "false");
        else
            ew_json_write_string(b, v, strlen(v));
    }
    ew_buf_putc(b, '}');
    return 1;
}

/* user.data_export_requested: user.data_collected with the profile and the preferences. */
static ew_handler_result on_export_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    usvc *u = ud;
    const ew_user_data_export_requested *d = ew_user_data_export_requested_data(ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    const char *p[] = {d->user_id};
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"profile\":");
    size_t mark = b.len;
    int rc = ew_txn_query(t,
                          "SELECT user_id, username, email, display_name, bio, location, website, "
                          "verified, verification_method, verified_at, created_at, updated_at "
                          "FROM event_store.user_profiles WHERE user_id = $1",
                          p, 1, row_json, &b, &e);
    if (!rc && b.len == mark) ew_buf_puts(&b, "null");
    ew_buf_puts(&b, ",\"preferences\":");
    mark = b.len;
    if (!rc)
        rc = ew_txn_query(t,
                          "SELECT preferences, updated_at FROM event_store.user_preferences "
                          "WHERE user_id = $1",
                          p, 1, row_json, &b, &e);
    if (!rc && b.len == mark) ew_buf_puts(&b, "null");
    ew_buf_putc(&b, '}');
    if (!rc && b.oom) rc = ew_error_set(&e, EW_ENOMEM, "out of memory");
    if (!rc) {
        ew_user_data_collected out = {.export_id = d->export_id, .user_id = d->user_id,
                                      .service = USER_SERVICE, .data = b.data};
        rc = svc_ctx_emit(u->s, ctx, EW_T_USER_DATA_COLLECTED, &out, d->user_id, &e);
    }
    ew_buf_release(&b);
    if (rc) return failed(ctx, "collecting the user's data", &e);
    return EW_HANDLER_OK;
}

int user_handlers(usvc *u, ew_error *err)
{
    struct {
        const char *pattern;
        ew_handler_fn fn;
    } h[] = {
        {"user.registered", on_registered},
        {"user.deletion_requested", on_deletion_requested},
        {"user.data_export_requested", on_export_requested},
    };
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
        int rc = svc_subscribe(u->s, h[i].pattern, h[i].fn, u, err);
        if (rc) return rc;
    }
    return 0;
}
