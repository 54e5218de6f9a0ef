/* analytics-service: the HTTP API. GET /stats (totals and counters), GET /stats/users/{user_id}. */
#include <stdlib.h>
#include <string.h>
#include "analytics.h"
#include "core/json.h"
#include "eventwire/clock.h"

/* The named counters of GET /stats: each is the total of one event type. */
static const struct {
    const char *name, *type;
} counters[] = {
    {"registrations", "user.registered"},
    {"logins", "user.logged_in"},
    {"logouts", "user.logged_out"},
    {"role_changes", "user.role_changed"},
    {"deactivations", "user.deactivated"},
    {"profiles_created", "user.profile_created"},
    {"profile_updates", "user.profile_updated"},
    {"preference_updates", "user.preferences_updated"},
    {"verifications", "user.verified"},
    {"password_resets_requested", "password.reset_requested"},
    {"password_resets_completed", "password.reset_completed"},
    {"welcome_emails", "notification.welcome_email_sent"},
    {"emails_sent", "notification.email_sent"},
    {"emails_failed", "notification.email_failed"},
    {"exports_requested", "user.data_export_requested"},
    {"exports_completed", "user.data_export_completed"},
    {"exports_failed", "user.data_export_failed"},
    {"deletions_requested", "user.deletion_requested"},
    {"deletions_completed", "user.deletion_completed"},
};
#define NCOUNTERS (sizeof counters / sizeof counters[0])

typedef struct totals {
    ew_buf *b;
    size_t rows;
    int64_t all;
    int64_t counter[NCOUNTERS];
    const char *first; /* the earliest first_at (strdup'ed) */
} totals;

static int total_cb(void *ud, const ew_row *r)
{
    totals *t = ud;
    if (r->ncols < 3 || !r->values[0] || !r->values[1]) return 0;
    int64_t n = strtoll(r->values[1], NULL, 10);
    if (t->rows++) ew_buf_putc(t->b, ',');
    ew_json_write_string(t->b, r->values[0], strlen(r->values[0]));
    ew_buf_printf(t->b, ":%lld", (long long)n);
    t->all += n;
    for (size_t i = 0; i < NCOUNTERS; i++)
        if (!strcmp(counters[i].type, r->values[0])) t->counter[i] = n;
    if (r->values[2] && (!t->first || strcmp(r->values[2], t->first) < 0)) {
        free((char *)t->first);
        t->first = strdup(r->values[2]);
    }
    return 0;
}

static int64_t count_of(ew_txn *t, const char *sql, const char *const *p, size_t np, int *rc,
                        ew_error *e)
{
    if (*rc) return 0;
    svc_row r;
    if ((*rc = svc_query_row(t, sql, p, np, &r, e))) return 0;
    int64_t n = r.found && r.v[0] ? strtoll(r.v[0], NULL, 10) : 0;
    svc_row_free(&r);
    return n;
}

static void get_stats(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    analytics *a = ud;
    if (svc_require_admin(rq, res)) return; /* totals over every user: admins only */
    ew_txn *t;
    ew_error e = {0};
    if (svc_begin(a->s, &t, &e)) {
        svc_reply_failure(a->s, res, "reading the statistics", &e);
        return;
    }
    ew_buf b;
    ew_buf_init(&b);
    totals tt = {.b = &b};
    char now[EW_TIME_LEN + 1], since[EW_TIME_LEN + 1];
    int64_t now_us = ew_now_us();
    ew_time_format(now_us, now);
    ew_time_format(now_us - (int64_t)ANALYTICS_ACTIVE_WINDOW_S * 1000000, since);
    const char *ps[] = {since};
    ew_buf_puts(&b, "{\"totals\":{");
    int rc =
        ew_txn_query(t,
                     "SELECT event_type, total, first_at FROM event_store.analytics_event_counts"
                     " ORDER BY event_type",
                     NULL, 0, total_cb, &tt, &e);
    int64_t users =
        count_of(t, "SELECT count(*) FROM event_store.analytics_users", NULL, 0, &rc, &e);
    int64_t opted_out =
        count_of(t, "SELECT count(*) FROM event_store.analytics_opted_out", NULL, 0, &rc, &e);
    int64_t active =
        count_of(t,
                 "SELECT count(DISTINCT user_id) FROM event_store.analytics_user_events"
                 " WHERE last_at >= $1",
                 ps, 1, &rc, &e);
    /* logged in: the user's last login is later than their last logout (or they never logged
     * out) */
    int64_t logged_in = count_of(t,
                                 "SELECT count(*) FROM event_store.analytics_user_events i"
                                 " WHERE i.event_type = 'user.logged_in' AND NOT EXISTS"
                                 " (SELECT 1 FROM event_store.analytics_user_events o"
                                 " WHERE o.user_id = i.user_id AND o.event_type = 'user.logged_out'"
                                 " AND o.last_at >= i.last_at)",
                                 NULL, 0, &rc, &e);
    ew_txn_rollback(t);
    if (rc) {
        svc_reply_failure(a->s, res, "reading the statistics", &e);
        goto done;
    }
    ew_buf_printf(&b, "},\"events\":%lld,\"counters\":{", (long long)tt.all);
    for (size_t i = 0; i < NCOUNTERS; i++)
        ew_buf_printf(&b, "\"%s\":%lld,", counters[i].name, (long long)tt.counter[i]);
    ew_buf_printf(&b,
                  "\"users\":%lld,\"active_users\":%lld,\"logged_in_users\":%lld,"
                  "\"users_opted_out\":%lld}",
                  (long long)users, (long long)active, (long long)logged_in, (long long)opted_out);
    ew_buf_printf(&b, ",\"active_window_seconds\":%d,\"since\":", ANALYTICS_ACTIVE_WINDOW_S);
    if (tt.first)
        ew_json_write_string(&b, tt.first, strlen(tt.first));
    else
        ew_buf_puts(&b, "null");
    ew_buf_printf(&b, ",\"generated_at\":\"%s\"}", now);
    if (b.oom)
        ew_http_reply_error(res, 500, NULL, "out of memory");
    else
        ew_http_reply_raw(res, 200, b.data, b.len);
done:
    free((char *)tt.first);
    ew_buf_release(&b);
}

static void get_user_stats(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    analytics *a = ud;
    svc_reply_user_data(a->s, rq, res, "reading a user's statistics");
}

const svc_http_route analytics_routes[] = {
    {"GET /stats", 0, get_stats},
    {"GET /stats/users/{user_id}", 0, get_user_stats},
    {0},
};
