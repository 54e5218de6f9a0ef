/* analytics-service: the event handlers, each in the inbox's transaction (a redelivered event is
 * counted once).
 *
 *  "#"                         every event: its type's count, and when its data names a user
 *                              (a user_id field), that user's row for the type -- except for
 *                              the GDPR machinery's events and analytics' own
 *  user.registered             records the user, publishes analytics.user_tracked (the
 *                              registration saga waits for it)
 *  user.consent_changed        purpose "analytics" withdrawn: the user's rows go and the user
 *                              is not counted any more (until consent is given again)
 *
 * and the runtime answers the GDPR events from analytics_gdpr (svc.h):
 *  user.deletion_requested     deletes the user's rows, remembers the erasure, publishes
 *                              user.data_deleted
 *  user.data_export_requested  publishes user.data_collected with the user's rows */
#include <string.h>
#include "analytics.h"
#include "eventwire/clock.h"

/* Events of the GDPR machinery (exports, deletions) and analytics' own are counted, but are not
 * activity of the user they name: per-user rows are what the user did. */
static bool user_activity(const char *type)
{
    return strncmp(type, "user.data_", 10) && strncmp(type, "user.deletion_", 14) &&
           strncmp(type, "analytics.", 10);
}

/* Must the user not be counted — erased, or consent for analytics withdrawn? *skip is set;
 * nonzero on a database error. */
static int not_counted(ew_txn *t, const char *user_id, bool *skip, ew_error *err)
{
    char h[65];
    analytics_user_hash(user_id, h);
    const char *p[] = {h};
    svc_row r;
    int rc = svc_query_row(t,
                           "SELECT 1 FROM event_store.analytics_erased WHERE user_hash = $1"
                           " UNION ALL"
                           " SELECT 1 FROM event_store.analytics_opted_out WHERE user_hash = $1",
                           p, 1, &r, err);
    *skip = !rc && r.found;
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
        return svc_retry(a->s, ctx, "counting an event", &e);
    const char *user = user_activity(type) ? svc_event_user(ev) : NULL;
    if (!user) return EW_HANDLER_OK;
    bool skip;
    if (not_counted(t, user, &skip, &e)) return svc_retry(a->s, ctx, "reading erasures", &e);
    if (skip) return EW_HANDLER_OK;
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
        return svc_retry(a->s, ctx, "counting a user's event", &e);
    return EW_HANDLER_OK;
}

/* ---- user.registered ------------------------------------------------------------------------- */

static ew_handler_result on_registered(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    const ew_user_registered *d = ew_user_registered_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    bool skip;
    if (not_counted(t, d->user_id, &skip, &e)) return svc_retry(a->s, ctx, "reading erasures", &e);
    if (skip) {
        svc_log(a->s, EW_LOG_INFO,
                "user.registered %s: the user was erased or withdrew consent; not tracked",
                ew_event_id(ev));
        /* the registration saga still hears that analytics is done with it */
        ew_analytics_user_tracked tr = {.user_id = d->user_id, .event = "user.registered"};
        return svc_ctx_emit_or_retry(a->s, ctx, EW_T_ANALYTICS_USER_TRACKED, &tr, d->user_id);
    }
    char at[EW_TIME_LEN + 1], now[EW_TIME_LEN + 1];
    ew_time_format(ew_event_time_us(ev), at);
    svc_time(0, now);
    const char *p[] = {d->user_id, at, now};
    if (ew_txn_exec(t,
                    "INSERT INTO event_store.analytics_users (user_id, registered_at, tracked_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
                    p, 3, NULL, &e))
        return svc_retry(a->s, ctx, "recording a user", &e);
    ew_analytics_user_tracked tr = {.user_id = d->user_id, .event = "user.registered"};
    return svc_ctx_emit_or_retry(a->s, ctx, EW_T_ANALYTICS_USER_TRACKED, &tr, d->user_id);
}

/* ---- user.consent_changed ------------------------------------------------------------------- */

static ew_handler_result on_consent(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    analytics *a = ud;
    const ew_user_consent_changed *d = ew_user_consent_changed_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    if (strcmp(d->purpose, ANALYTICS_PURPOSE) != 0) return EW_HANDLER_OK; /* not ours */
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    char h[65], now[EW_TIME_LEN + 1];
    analytics_user_hash(d->user_id, h);
    svc_time(0, now);
    const char *ph[] = {h, now}, *pu[] = {d->user_id};
    int rc;
    if (d->granted) {
        rc = ew_txn_exec(t, "DELETE FROM event_store.analytics_opted_out WHERE user_hash = $1", ph,
                         1, NULL, &e);
    } else {
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.analytics_opted_out (user_hash, opted_out_at)"
                         " VALUES ($1, $2) ON CONFLICT (user_hash) DO NOTHING",
                         ph, 2, NULL, &e);
        if (!rc)
            rc = ew_txn_exec(t, "DELETE FROM event_store.analytics_user_events WHERE user_id = $1",
                             pu, 1, NULL, &e);
        if (!rc)
            rc = ew_txn_exec(t, "DELETE FROM event_store.analytics_users WHERE user_id = $1", pu, 1,
                             NULL, &e);
    }
    if (rc) return svc_retry(a->s, ctx, "recording a change of consent", &e);
    return EW_HANDLER_OK;
}

/* ---- GDPR: the runtime answers from this ---------------------------------------------------- */

/* After the rows are gone: the erasure is remembered, as a hash, so that events still in flight
 * for the user do not bring rows back. */
static int remember_erasure(svc *s, void *ud, ew_txn *t, const char *user_id, ew_error *err)
{
    char h[65], now[EW_TIME_LEN + 1];
    analytics_user_hash(user_id, h);
    svc_time(0, now);
    const char *p[] = {h, now};
    return ew_txn_exec(t,
                       "INSERT INTO event_store.analytics_erased (user_hash, erased_at)"
                       " VALUES ($1, $2) ON CONFLICT (user_hash) DO NOTHING",
                       p, 2, NULL, err);
}

static const char *const counted[] = {"count", NULL};

const svc_gdpr analytics_gdpr = {
    .parts =
        (const svc_gdpr_part[]){
            {.key = "registered_at",
             .kind = SVC_GDPR_VALUE,
             .sql = "SELECT registered_at FROM event_store.analytics_users WHERE user_id = $1"},
            {.key = "events",
             .kind = SVC_GDPR_ROWS,
             .sql =
                 "SELECT event_type, total AS count, first_at, last_at"
                 " FROM event_store.analytics_user_events WHERE user_id = $1 ORDER BY event_type",
             .cols = {.ints = counted}},
            {0},
        },
    .empty_is_nothing = true,
    .deletes =
        (const char *const[]){
            "DELETE FROM event_store.analytics_user_events WHERE user_id = $1",
            "DELETE FROM event_store.analytics_users WHERE user_id = $1",
            NULL,
        },
    .after_delete = remember_erasure,
    .failure = svc_retry,
};

const svc_handler analytics_handlers[] = {
    {"#", on_any},
    {"user.registered", on_registered},
    {"user.consent_changed", on_consent},
    {0},
};
