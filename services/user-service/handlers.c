/* user-service: its event handlers, each in the inbox's transaction with the events it emits;
 * the GDPR events the runtime answers from user_gdpr (svc.h). */
#include "user.h"

/* user.registered: the profile, with the username as display name, and the default
 * preferences; user.profile_created and user.preferences_updated tell the others. */
static ew_handler_result on_registered(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    usvc *u = ud;
    const ew_user_registered *d = ew_user_registered_data(ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    svc_row row;
    const char *p[] = {d->user_id, d->username, d->email, now};
    if (svc_query_row(t, "SELECT user_id FROM event_store.user_profiles WHERE user_id = $1", p, 1,
                      &row, &e))
        return svc_failed(u->s, ctx, "looking for the profile", &e);
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
                    (const char *const[]){d->user_id, USER_DEFAULT_PREFERENCES, now}, 3, NULL, &e))
        return svc_failed(u->s, ctx, "creating the profile", &e);
    ew_user_profile_created pc = {.user_id = d->user_id, .display_name = d->username};
    ew_user_preferences_updated pu = {.user_id = d->user_id,
                                      .preferences = USER_DEFAULT_PREFERENCES};
    if (svc_ctx_emit(u->s, ctx, EW_T_USER_PROFILE_CREATED, &pc, d->user_id, &e) ||
        svc_ctx_emit(u->s, ctx, EW_T_USER_PREFERENCES_UPDATED, &pu, d->user_id, &e))
        return svc_failed(u->s, ctx, "publishing the profile", &e);
    return EW_HANDLER_OK;
}

/* ---- GDPR: the runtime answers from this ---------------------------------------------------- */

/* user.data_export_requested: the profile ("verified" a boolean) and the preferences (a JSON
 * object already). user.deletion_requested: both go. */
static const char *const verified[] = {"verified", NULL};
static const char *const preferences[] = {"preferences", NULL};

const svc_gdpr user_gdpr = {
    .parts =
        (const svc_gdpr_part[]){
            {.key = "profile",
             .kind = SVC_GDPR_ROW,
             .sql = "SELECT user_id, username, email, display_name, bio, location, website, "
                    "verified, verification_method, verified_at, created_at, updated_at "
                    "FROM event_store.user_profiles WHERE user_id = $1",
             .cols = {.bools = verified}},
            {.key = "preferences",
             .kind = SVC_GDPR_ROW,
             .sql = "SELECT preferences, updated_at FROM event_store.user_preferences "
                    "WHERE user_id = $1",
             .cols = {.json = preferences}},
            {0},
        },
    .deletes =
        (const char *const[]){
            "DELETE FROM event_store.user_verifications WHERE user_id = $1",
            "DELETE FROM event_store.user_preferences WHERE user_id = $1",
            "DELETE FROM event_store.user_profiles WHERE user_id = $1",
            NULL,
        },
    .failure = svc_failed,
};

const svc_handler user_handlers[] = {
    {"user.registered", on_registered},
    {0},
};
