/* auth-service: its event handlers. Each runs in the inbox's transaction: its writes, the events
 * it emits (svc_ctx_emit, through the outbox) and the record that the event was handled commit
 * together, so a redelivered event changes nothing twice. The GDPR events the runtime answers from
 * auth_gdpr (svc.h). */
#include <stdio.h>
#include <string.h>
#include "auth.h"
#include "core/buf.h"
#include "core/json.h"

/* user.profile_created: the user's profile exists. */
static ew_handler_result on_profile_created(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
    const ew_user_profile_created *d = ew_user_profile_created_data(ev);
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
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
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
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
                    p, 2, NULL, &e) ||
        auth_revoke(a, t, ctx, d->user_id, NULL, "deactivation", &e))
        return svc_failed(a->s, ctx, "deactivating the user", &e);
    return EW_HANDLER_OK;
}

/* user.role_changed: the roles are set and the user's tokens revoked, unless the row holds the
 * change already or a newer one. Changes are ordered by the user's roles_version: the HTTP route
 * applies its change at once and publishes the version it made, so that its own event, coming
 * back after newer changes, finds a version as new or newer and changes nothing (it used to set
 * the older roles back and revoke the tokens issued since). An event without a version (0: the
 * operator's `ewctl user grant-admin`, or v1) is the newest when it arrives: applied when the
 * roles differ, as the next version. */
static ew_handler_result on_role_changed(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    auth *a = ud;
    const ew_user_role_changed *d = ew_user_role_changed_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '[');
    for (size_t i = 0; i < d->roles.count; i++) {
        if (i) ew_buf_putc(&b, ',');
        ew_json_write_string(&b, d->roles.items[i], strlen(d->roles.items[i]));
    }
    ew_buf_putc(&b, ']');
    char now[EW_TIME_LEN + 1], version[24];
    svc_time(0, now);
    snprintf(version, sizeof version, "%lld", (long long)d->roles_version);
    const char *p[] = {d->user_id, b.data, now, version};
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    int64_t changed = 0;
    int rc = d->roles_version > 0
                 ? ew_txn_exec(t,
                               "UPDATE event_store.auth_users SET roles = $2, roles_version = $4, "
                               "updated_at = $3 WHERE user_id = $1 AND roles_version < $4",
                               p, 4, &changed, &e)
                 : ew_txn_exec(t,
                               "UPDATE event_store.auth_users SET roles = $2, "
                               "roles_version = roles_version + 1, updated_at = $3 "
                               "WHERE user_id = $1 AND roles <> $2",
                               p, 3, &changed, &e);
    if (!rc && changed) {
        svc_log(a->s, EW_LOG_INFO, "user %s: roles %s (event %s from %s, version %s)", d->user_id,
                b.data, ew_event_id(ev), ew_event_source(ev), version);
        rc = auth_revoke(a, t, ctx, d->user_id, NULL, "role_change", &e);
    }
    ew_buf_release(&b);
    if (rc) return svc_failed(a->s, ctx, "changing roles", &e);
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
            "DELETE FROM event_store.auth_token_epochs WHERE user_id = $1",
            NULL,
        },
    .failure = svc_failed,
};

const svc_handler auth_handlers[] = {
    {"user.profile_created", on_profile_created},
    {"user.deactivated", on_deactivated},
    {"user.role_changed", on_role_changed},
    {0},
};
