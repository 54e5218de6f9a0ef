/* auth-service: its event handlers. Each runs in the inbox's transaction: its writes, the events
 * it emits (svc_ctx_emit, through the outbox) and the record that the event was handled commit
 * together, so a redelivered event changes nothing twice. The GDPR events the runtime answers from
 * auth_gdpr (svc.h). */
#include "auth.h"

/* user.profile_created: the user's profile exists. */
static ew_handler_result on_profile_created(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
    const ew_user_profile_created *d = ew_user_profile_created_data(ev);
    char now[32];
    auth_time(0, now);
    const char *p[] = {d->user_id, now};
    ew_error e = {0};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "UPDATE event_store.auth_users SET profile_created = 1, updated_at = $2 "
                    "WHERE user_id = $1",
                    p, 2, NULL, &e))
        return svc_failed(a->s, ctx, "marking the profile created", &e);
    return EW_HANDLER_OK;
}

/* user.deactivated (also the registration saga's compensation): the account is closed and its
 * sessions end. */
static ew_handler_result on_deactivated(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
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
        return svc_failed(a->s, ctx, "deactivating the user", &e);
    return EW_HANDLER_OK;
}

/* ---- GDPR: the runtime answers from this ---------------------------------------------------- */

/* user.data_export_requested: the user (roles, a JSON array already), the sessions and the
 * password resets -- never a token's hash. user.deletion_requested: everything held about the
 * user goes, and the deletion saga hears it. */
static const char *const roles[] = {"roles", NULL};
static const char *const profile_created[] = {"profile_created", NULL};

const svc_gdpr auth_gdpr = {
    .parts =
        (const svc_gdpr_part[]){
            {.key = "user",
             .kind = SVC_GDPR_ROW,
             .sql = "SELECT user_id, username, email, roles, status, status_reason, "
                    "profile_created, created_at, updated_at FROM event_store.auth_users "
                    "WHERE user_id = $1",
             .cols = {.bools = profile_created, .json = roles}},
            {.key = "sessions",
             .kind = SVC_GDPR_ROWS,
             .sql = "SELECT session_id, ip_address, user_agent, created_at, expires_at, "
                    "ended_at FROM event_store.auth_sessions WHERE user_id = $1 "
                    "ORDER BY created_at"},
            {.key = "password_resets",
             .kind = SVC_GDPR_ROWS,
             .sql = "SELECT request_id, created_at, expires_at, used_at FROM "
                    "event_store.auth_password_resets WHERE user_id = $1 ORDER BY created_at"},
            {0},
        },
    .deletes =
        (const char *const[]){
            "DELETE FROM event_store.auth_sessions WHERE user_id = $1",
            "DELETE FROM event_store.auth_password_resets WHERE user_id = $1",
            "DELETE FROM event_store.auth_users WHERE user_id = $1",
            NULL,
        },
    .failure = svc_failed,
};

int auth_handlers(auth *a, ew_error *err)
{
    static const svc_handler subs[] = {
        {"user.profile_created", on_profile_created},
        {"user.deactivated", on_deactivated},
    };
    return svc_subscribe_all(a->s, subs, sizeof subs / sizeof subs[0], a, err);
}
