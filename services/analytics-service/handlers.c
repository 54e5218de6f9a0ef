/* analytics-service: the event handlers, each in the inbox's transaction (a redelivered event is
 * counted once).
 *
 *  "#"                         every event: its type's count, and when its data names a user
 *                              (a user_id field), that user's row for the type -- except for
 *                              the GDPR machinery's events and analytics' own
 *  user.registered             records the user, publishes analytics.user_tracked (the
 *                              registration saga waits for it)
 *  user.deletion_requested     deletes the user's rows, remembers the erasure, publishes
 *                              user.data_deleted
 *  user.data_export_requested  publishes user.data_collected with the user's rows */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "analytics.h"
#include "eventwire/clock.h"

static ew_handler_result retry_db(analytics *a, ew_handler_ctx *ctx, const char *what,
                                  const ew_error *e)
{
    ew_ctx_set_error(ctx, "%s: %s", what, e->msg[0] ? e->msg : ew_strerror(e->code));
    svc_log(a->s, EW_LOG_WARN, "%s: %s (will retry)", what, e->msg);
    return EW_HANDLER_RETRY;
}

static ew_handler_result not_mine(ew_handler_ctx *ctx, const ew_event *ev)
{
    ew_ctx_set_error(ctx, "unexpected event type %s", ew_event_type(ev));
    return EW_HANDLER_FAIL;
}

static ew_handler_result emit(analytics *a, ew_handler_ctx *ctx, ew_type_id type, const void *data,
                              const char *subject)
{
    ew_error e = {0};
    if (svc_ctx_emit(a->s, ctx, type, data, subject, &e))
        return retry_db(a, ctx, "emitting an event", &e);
    return EW_HANDLER_OK;
}

/* The user an event is about: its data's user_id field, when its type has one. */
static const char *event_user(const ew_event *ev)
{
    const ew_type_info *ti = ew_event_info(ev);
    const ew_field_info *f = ti ? ew_type_field(ti, "user_id") : NULL;
    if (!f || f->kind != EW_FIELD_UUID) return NULL;
    const char *data = ew_event_data_as(ev, ti->id);
    if (!data) return NULL;
    const char *v;
    memcpy(&v, data + f->offset, sizeof v);
    return v && *v ? v : NULL;
}

/* Events of the GDPR machinery (exports, deletions) and analytics' own are counted, but are not
 * activity of the user they name: per-user rows are what the user did. */
static bool user_activity(const char *type)
{
    return strncmp(type, "user.data_", 10) && strncmp(type, "user.deletion_", 14) &&
           strncmp(type, "analytics.", 10);
}

/* Was the user erased? *erased is set; nonzero on a database error. */
static int is_erased(ew_txn *t, const char *user_id, bool *erased, ew_error *err)
{
    char h[65];
    analytics_user_hash(user_id, h);
    const char *p[] = {h};
    svc_row r;
    int rc = svc_query_row(t, "SELECT 1 FROM event_store.analytics_erased WHERE user_hash = $1", p,
                           1, &r, err);
    *erased = !rc && r.found;
    svc_row_free(&r);
    return rc;
}

/* ---- "#": every event ------------------------------------------------------------------------ */

static ew_handler_result on_any(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    ew_txn *t = ew_ctx_txn(ctx);
    char at[EW_TIME_LEN + 1];
    ew_time_format(ew_event_time_us(ev), at);
    const char *type = ew_event_type(ev);
    const char *p[] = {type, at};
    ew_error e = {0};
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.analytics_event_counts AS c"
                    " (event_type, total, first_at, last_at) VALUES ($1, 1, $2, $2)"
                    " ON CONFLICT (event_type) DO UPDATE SET total = c.total + 1,"
                    " first_at = CASE WHEN excluded.first_at < c.first_at"
                    " THEN excluded.first_at ELSE c.first_at END,"
                    " last_at = CASE WHEN excluded.last_at > c.last_at"
                    " THEN excluded.last_at ELSE c.last_at END",
                    p, 2, NULL, &e))
        return retry_db(a, ctx, "counting an event", &e);
    const char *user = user_activity(type) ? event_user(ev) : NULL;
    if (!user) return EW_HANDLER_OK;
    bool erased;
    if (is_erased(t, user, &erased, &e)) return retry_db(a, ctx, "reading erasures", &e);
    if (erased) return EW_HANDLER_OK;
    const char *pu[] = {user, type, at};
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.analytics_user_events AS u"
                    " (user_id, event_type, total, first_at, last_at) VALUES ($1, $2, 1, $3, $3)"
                    " ON CONFLICT (user_id, event_type) DO UPDATE SET total = u.total + 1,"
                    " first_at = CASE WHEN excluded.first_at < u.first_at"
                    " THEN excluded.first_at ELSE u.first_at END,"
                    " last_at = CASE WHEN excluded.last_at > u.last_at"
                    " THEN excluded.last_at ELSE u.last_at END",
                    pu, 3, NULL, &e))
        return retry_db(a, ctx, "counting a user's event", &e);
    return EW_HANDLER_OK;
}

/* ---- user.registered ------------------------------------------------------------------------- */

static ew_handler_result on_registered(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    const ew_user_registered *d = ew_user_registered_data(ev);
    if (!d) return not_mine(ctx, ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    bool erased;
    if (is_erased(t, d->user_id, &erased, &e)) return retry_db(a, ctx, "reading erasures", &e);
    if (erased) {
        svc_log(a->s, EW_LOG_INFO, "user.registered %s: the user was erased; not tracked",
                ew_event_id(ev));
        return EW_HANDLER_OK;
    }
    char at[EW_TIME_LEN + 1], now[EW_TIME_LEN + 1];
    ew_time_format(ew_event_time_us(ev), at);
    ew_time_format(ew_now_us(), now);
    const char *p[] = {d->user_id, at, now};
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.analytics_users (user_id, registered_at, tracked_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
                    p, 3, NULL, &e))
        return retry_db(a, ctx, "recording a user", &e);
    ew_analytics_user_tracked tr = {.user_id = d->user_id, .event = "user.registered"};
    return emit(a, ctx, EW_T_ANALYTICS_USER_TRACKED, &tr, d->user_id);
}

/* ---- GDPR ------------------------------------------------------------------------------------ */

static ew_handler_result on_deletion_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    const ew_user_deletion_requested *d = ew_user_deletion_requested_data(ev);
    if (!d) return not_mine(ctx, ev);
    ew_txn *t = ew_ctx_txn(ctx);
    const char *p[] = {d->user_id};
    char h[65], now[EW_TIME_LEN + 1];
    analytics_user_hash(d->user_id, h);
    ew_time_format(ew_now_us(), now);
    const char *pe[] = {h, now};
    int64_t events = 0, users = 0;
    ew_error e = {0};
    if (ew_txn_exec(t, "DELETE FROM event_store.analytics_user_events WHERE user_id = $1", p, 1,
                    &events, &e) ||
        ew_txn_exec(t, "DELETE FROM event_store.analytics_users WHERE user_id = $1", p, 1, &users,
                    &e) ||
        ew_txn_exec(t,
                    "INSERT INTO event_store.analytics_erased (user_hash, erased_at)"
                    " VALUES ($1, $2) ON CONFLICT (user_hash) DO NOTHING",
                    pe, 2, NULL, &e))
        return retry_db(a, ctx, "deleting a user's data", &e);
    ew_user_data_deleted dd = {.request_id = d->request_id,
                               .user_id = d->user_id,
                               .service = svc_name(a->s),
                               .records = events + users};
    ew_handler_result r = emit(a, ctx, EW_T_USER_DATA_DELETED, &dd, d->user_id);
    if (r == EW_HANDLER_OK)
        svc_log(a->s, EW_LOG_INFO, "deleted user %s: %lld records (request %s)", d->user_id,
                (long long)(events + users), d->request_id);
    return r;
}

int analytics_user_json(ew_txn *t, const char *user_id, ew_buf *b, bool *found, ew_error *err)
{
    static const char *const ints[] = {"count", NULL};
    const char *p[] = {user_id};
    svc_row u;
    int rc = svc_query_row(t,
                           "SELECT registered_at FROM event_store.analytics_users"
                           " WHERE user_id = $1",
                           p, 1, &u, err);
    if (rc) return rc;
    ew_buf ev;
    ew_buf_init(&ev);
    size_t n = 0;
    rc = analytics_rows_json(t,
                             "SELECT event_type, total AS count, first_at, last_at"
                             " FROM event_store.analytics_user_events WHERE user_id = $1"
                             " ORDER BY event_type",
                             p, 1, ints, &ev, &n, err);
    if (!rc) {
        *found = u.found || n;
        ew_buf_putc(b, '{');
        if (*found) {
            ew_buf_puts(b, "\"registered_at\":");
            if (u.found && u.v[0])
                ew_buf_printf(b, "\"%s\"", u.v[0]); /* our own RFC 3339 text */
            else
                ew_buf_puts(b, "null");
            ew_buf_puts(b, ",\"events\":");
            ew_buf_append(b, ev.data, ev.len);
        }
        ew_buf_putc(b, '}');
        if (b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    ew_buf_release(&ev);
    svc_row_free(&u);
    return rc;
}

static ew_handler_result on_export_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    const ew_user_data_export_requested *d = ew_user_data_export_requested_data(ev);
    if (!d) return not_mine(ctx, ev);
    ew_buf b;
    ew_buf_init(&b);
    bool found;
    ew_error e = {0};
    if (analytics_user_json(ew_ctx_txn(ctx), d->user_id, &b, &found, &e)) {
        ew_buf_release(&b);
        return retry_db(a, ctx, "collecting a user's data", &e);
    }
    ew_user_data_collected c = {.export_id = d->export_id,
                                .user_id = d->user_id,
                                .service = svc_name(a->s),
                                .data = b.data};
    ew_handler_result r = emit(a, ctx, EW_T_USER_DATA_COLLECTED, &c, d->user_id);
    ew_buf_release(&b);
    return r;
}

int analytics_handlers(analytics *a, ew_error *err)
{
    static const struct {
        const char *pattern;
        ew_handler_fn fn;
    } subs[] = {
        {"#", on_any},
        {"user.registered", on_registered},
        {"user.deletion_requested", on_deletion_requested},
        {"user.data_export_requested", on_export_requested},
    };
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        int rc = svc_subscribe(a->s, subs[i].pattern, subs[i].fn, a, err);
        if (rc) return rc;
    }
    return 0;
}
