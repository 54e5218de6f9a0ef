/* auth-service: its store -- the tables in the service's database, and what routes and handlers
 * both write there: the revocation of a user's tokens. */
#include <stdio.h>
#include <stdlib.h>
#include "auth.h"
#include "eventwire/clock.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table
 * is a new statement here (ALTER TABLE ... guarded, or a new table), never an edit of these. */
const char *const auth_schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.auth_users ("
    " user_id TEXT PRIMARY KEY,"
    " username TEXT NOT NULL,"
    " username_key TEXT NOT NULL UNIQUE,"
    " email TEXT NOT NULL UNIQUE,"
    " password_hash TEXT NOT NULL,"
    " roles TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('active', 'deactivated')),"
    " status_reason TEXT,"
    " profile_created INTEGER NOT NULL DEFAULT 0,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.auth_sessions ("
    " session_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE,"
    " ip_address TEXT,"
    " user_agent TEXT,"
    " created_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " ended_at TEXT,"
    " UNIQUE (user_id, session_id))",
    "CREATE TABLE IF NOT EXISTS event_store.auth_password_resets ("
    " request_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE,"
    " created_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL,"
    " used_at TEXT,"
    " UNIQUE (user_id, request_id))",
    /* tokens of the user issued before not_before_ms (Unix ms; rows from before it have only
     * not_before, in seconds) are revoked everywhere */
    "CREATE TABLE IF NOT EXISTS event_store.auth_token_epochs ("
    " user_id TEXT PRIMARY KEY,"
    " not_before BIGINT NOT NULL)",
    "ALTER TABLE event_store.auth_token_epochs ADD COLUMN IF NOT EXISTS not_before_ms BIGINT",
    /* the version of the user's roles: each change makes the next (handlers.c orders by it) */
    "ALTER TABLE event_store.auth_users ADD COLUMN IF NOT EXISTS roles_version BIGINT NOT NULL "
    "DEFAULT 0",
    NULL,
};

int auth_revoke(auth *a, ew_txn *t, ew_handler_ctx *ctx, const char *user_id,
                const char *session_id, const char *reason, ew_error *err)
{
    /* Milliseconds: every token issued up to now has iat_ms <= now, so before now + 1, and a
     * login after this gets iat_ms >= not_before_ms (routes.c), so that it is not refused. A
     * second revocation of the user within the same millisecond must also end the tokens issued
     * after the first one, which have iat_ms = its not_before_ms: it goes one past the one
     * before (a millisecond ahead of the clock at most per revocation, well inside
     * SVC_TOKEN_LEEWAY_S). */
    int64_t nb = ew_now_us() / 1000 + 1;
    const char *who[] = {user_id};
    svc_row prev = {0};
    int rc = svc_query_row(t,
                           "SELECT COALESCE(not_before_ms, not_before * 1000) FROM "
                           "event_store.auth_token_epochs WHERE user_id = $1",
                           who, 1, &prev, err);
    if (rc) return rc;
    if (prev.found && prev.v[0] && strtoll(prev.v[0], NULL, 10) >= nb)
        nb = strtoll(prev.v[0], NULL, 10) + 1;
    svc_row_free(&prev);
    char nbs[24], nb_ms[24];
    snprintf(nbs, sizeof nbs, "%lld", (long long)(nb / 1000 + 1)); /* the second after */
    snprintf(nb_ms, sizeof nb_ms, "%lld", (long long)nb);
    const char *p[] = {user_id, nbs, nb_ms};
    if (!session_id) {
        rc = ew_txn_exec(t, "DELETE FROM event_store.auth_token_epochs WHERE user_id = $1", p, 1,
                         NULL, err);
        if (!rc)
            rc = ew_txn_exec(t,
                             "INSERT INTO event_store.auth_token_epochs (user_id, not_before, "
                             "not_before_ms) VALUES ($1, $2, $3)",
                             p, 3, NULL, err);
    }
    ew_user_tokens_revoked ev = {
        .user_id = user_id, .session_id = session_id, .not_before_ms = nb, .reason = reason};
    if (!rc)
        rc = ctx ? svc_ctx_emit(a->s, ctx, EW_T_USER_TOKENS_REVOKED, &ev, user_id, err)
                 : svc_emit(a->s, NULL, t, EW_T_USER_TOKENS_REVOKED, &ev, user_id, err);
    /* here at once (too early is harmless: the transaction may still fail, and the tokens were
     * meant to end); elsewhere when the event arrives */
    if (!rc) svc_revoke(a->s, user_id, session_id, nb);
    return rc;
}
