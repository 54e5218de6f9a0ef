/* user-service: the HTTP API. Each change and the event it publishes are one transaction. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "user.h"

#define DISPLAY_NAME_MAX 64
#define BIO_MAX 500
#define LOCATION_MAX 100
#define WEBSITE_MAX 200
#define METHOD_MAX 32
#define PREF_MAX_MEMBERS 50
#define PREF_KEY_MAX 64
#define PREF_VALUE_MAX 256

static bool website_valid(const char *s)
{
    const char *rest = !strncmp(s, "https://", 8)  ? s + 8
                       : !strncmp(s, "http://", 7) ? s + 7
                                                   : NULL;
    if (!rest || !*rest || *rest == '/') return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '"' || *p == '<' || *p == '>' || *p == '\\')
            return false;
    return true;
}

static bool printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 && *p != '\n') return false;
    return true;
}

#define PROFILE_COLUMNS                                                                            \
    "user_id, username, email, display_name, bio, location, website, verified, "                   \
    "verification_method, verified_at, created_at, updated_at"

/* Answers 200 with the profile row (in the order of PROFILE_COLUMNS). */
static void reply_profile(ew_http_response *res, const svc_row *row)
{
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", row->v[0]);
    ew_http_obj_str(res, "username", row->v[1]);
    ew_http_obj_str(res, "email", row->v[2]);
    ew_http_obj_str(res, "display_name", row->v[3]);
    ew_http_obj_str(res, "bio", row->v[4]);
    ew_http_obj_str(res, "location", row->v[5]);
    ew_http_obj_str(res, "website", row->v[6]);
    ew_http_obj_bool(res, "verified", row->v[7] && strcmp(row->v[7], "0") != 0);
    ew_http_obj_str(res, "verification_method", row->v[8]);
    ew_http_obj_str(res, "verified_at", row->v[9]);
    ew_http_obj_str(res, "created_at", row->v[10]);
    ew_http_obj_str(res, "updated_at", row->v[11]);
    ew_http_obj_end(res);
}

static int read_profile(ew_txn *t, const char *user_id, svc_row *row, ew_error *err)
{
    const char *p[] = {user_id};
    return svc_query_row(t,
                         "SELECT " PROFILE_COLUMNS " FROM event_store.user_profiles "
                         "WHERE user_id = $1",
                         p, 1, row, err);
}

/* ---- GET /users/{id}/profile --------------------------------------------------------------- */

static void h_get_profile(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(u->s, &t, &e);
    if (!rc) {
        rc = read_profile(t, id, &row, &e);
        ew_txn_rollback(t);
    }
    if (rc) {
        svc_reply_failure(u->s, res, "reading the profile", &e);
        return;
    }
    if (!row.found)
        ew_http_reply_error(res, 404, NULL, "no profile for user %s", id);
    else
        reply_profile(res, &row);
    svc_row_free(&row);
}

/* ---- PUT /users/{id}/profile --------------------------------------------------------------- */

static void h_put_profile(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    static const char *const fields[] = {"display_name", "bio", "location", "website", NULL};
    const char *display_name, *bio, *location, *website;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "display_name", SVC_OPTIONAL, DISPLAY_NAME_MAX, &display_name) ||
        svc_json_str(rq, res, "bio", SVC_OPTIONAL, BIO_MAX, &bio) ||
        svc_json_str(rq, res, "location", SVC_OPTIONAL, LOCATION_MAX, &location) ||
        svc_json_str(rq, res, "website", SVC_OPTIONAL, WEBSITE_MAX, &website))
        return;
    const ew_json *body = ew_http_json(rq);
    if (!body->count) {
        ew_http_reply_error(res, 400, NULL,
                            "nothing to change: give display_name, bio, location or website");
        return;
    }
    if (ew_json_get(body, "display_name") && (!display_name || !*display_name)) {
        ew_http_reply_error(res, 400, "display_name", "display_name must not be empty");
        return;
    }
    const char *check[] = {display_name, bio, location};
    const char *names[] = {"display_name", "bio", "location"};
    for (int i = 0; i < 3; i++)
        if (check[i] && !printable(check[i])) {
            ew_http_reply_error(res, 400, names[i], "%s holds control characters", names[i]);
            return;
        }
    if (website && *website && !website_valid(website)) {
        ew_http_reply_error(res, 400, "website", "website must be an http:// or https:// URL");
        return;
    }
    /* the changes, as the event carries them: the members given, null for a cleared one */
    ew_buf changes;
    ew_buf_init(&changes);
    ew_json_write(&changes, body);
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(u->s, &t, &e);
    if (rc) goto failed;
    rc = read_profile(t, id, &row, &e);
    if (!rc && !row.found) {
        ew_txn_rollback(t);
        ew_http_reply_error(res, 404, NULL, "no profile for user %s", id);
        goto out;
    }
    svc_row_free(&row);
    /* each given member is set (an empty string or null clears an optional one) */
    static const char *const sql[] = {
        "UPDATE event_store.user_profiles SET display_name = $2, updated_at = $3 WHERE user_id=$1",
        "UPDATE event_store.user_profiles SET bio = $2, updated_at = $3 WHERE user_id = $1",
        "UPDATE event_store.user_profiles SET location = $2, updated_at = $3 WHERE user_id = $1",
        "UPDATE event_store.user_profiles SET website = $2, updated_at = $3 WHERE user_id = $1",
    };
    const char *vals[] = {display_name, bio, location, website};
    for (int i = 0; !rc && i < 4; i++) {
        if (!ew_json_get(body, fields[i])) continue;
        const char *p[] = {id, vals[i] && *vals[i] ? vals[i] : NULL, now};
        rc = ew_txn_exec(t, sql[i], p, 3, NULL, &e);
    }
    ew_user_profile_updated ev = {.user_id = id, .changes = changes.data};
    if (!rc && changes.oom) rc = ew_error_set(&e, EW_ENOMEM, "out of memory");
    if (!rc) rc = svc_emit(u->s, rq, t, EW_T_USER_PROFILE_UPDATED, &ev, id, &e);
    if (!rc) rc = read_profile(t, id, &row, &e);
    rc = svc_finish(u->s, t, rc, &e);
failed:
    if (rc)
        svc_reply_failure(u->s, res, "updating the profile", &e);
    else
        reply_profile(res, &row);
out:
    svc_row_free(&row);
    ew_buf_release(&changes);
}

/* ---- PUT /users/{id}/preferences ----------------------------------------------------------- */

static bool pref_key_valid(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > PREF_KEY_MAX) return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return false;
    return true;
}

static void h_put_preferences(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    static const char *const fields[] = {"preferences", NULL};
    if (svc_json_only(rq, res, fields)) return;
    const ew_json *prefs = ew_json_get(ew_http_json(rq), "preferences");
    if (!prefs) {
        ew_http_reply_error(res, 400, "preferences", "preferences is required");
        return;
    }
    if (prefs->kind != EW_JSON_OBJECT) {
        ew_http_reply_error(res, 400, "preferences", "preferences must be an object");
        return;
    }
    if (prefs->count > PREF_MAX_MEMBERS) {
        ew_http_reply_error(res, 400, "preferences", "preferences has more than %d members",
                            PREF_MAX_MEMBERS);
        return;
    }
    for (const ew_json *m = prefs->child; m; m = m->next) {
        if (!pref_key_valid(m->key)) {
            ew_http_reply_error(res, 400, "preferences",
                                "preference names are 1 to %d of a-z, 0-9 and '_', not '%.64s'",
                                PREF_KEY_MAX, m->key);
            return;
        }
        if (m->kind == EW_JSON_ARRAY || m->kind == EW_JSON_OBJECT) {
            ew_http_reply_error(res, 400, "preferences",
                                "preferences.%s must be a string, number, true, false or null",
                                m->key);
            return;
        }
        if (m->kind == EW_JSON_STRING && m->len > PREF_VALUE_MAX) {
            ew_http_reply_error(res, 400, "preferences", "preferences.%s is longer than %d bytes",
                                m->key, PREF_VALUE_MAX);
            return;
        }
    }
    ew_buf text;
    ew_buf_init(&text);
    ew_json_write(&text, prefs);
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    const char *p[] = {id, text.data, now};
    int rc = text.oom ? ew_error_set(&e, EW_ENOMEM, "out of memory") : svc_begin(u->s, &t, &e);
    if (rc) goto failed;
    rc = svc_query_row(t, "SELECT user_id FROM event_store.user_profiles WHERE user_id = $1", p, 1,
                       &row, &e);
    if (!rc && !row.found) {
        ew_txn_rollback(t);
        ew_http_reply_error(res, 404, NULL, "no profile for user %s", id);
        goto out;
    }
    int64_t changed = 0;
    if (!rc)
        rc =
            ew_txn_exec(t,
                        "UPDATE event_store.user_preferences SET preferences = $2, updated_at = $3 "
                        "WHERE user_id = $1",
                        p, 3, &changed, &e);
    if (!rc && changed == 0)
        rc = ew_txn_exec(
            t,
            "INSERT INTO event_store.user_preferences (user_id, preferences, updated_at) "
            "VALUES ($1, $2, $3)",
            p, 3, NULL, &e);
    ew_user_preferences_updated ev = {.user_id = id, .preferences = text.data};
    if (!rc) rc = svc_emit(u->s, rq, t, EW_T_USER_PREFERENCES_UPDATED, &ev, id, &e);
    rc = svc_finish(u->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(u->s, res, "setting the preferences", &e);
        goto out;
    }
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", id);
    ew_http_obj_raw(res, "preferences", text.data);
    ew_http_obj_str(res, "updated_at", now);
    ew_http_obj_end(res);
out:
    svc_row_free(&row);
    ew_buf_release(&text);
}

/* ---- GET /users/{id}/preferences ----------------------------------------------------------- */

static void h_get_preferences(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    const char *p[] = {id};
    int rc = svc_begin(u->s, &t, &e);
    if (!rc) {
        rc = svc_query_row(t,
                           "SELECT preferences, updated_at FROM event_store.user_preferences "
                           "WHERE user_id = $1",
                           p, 1, &row, &e);
        ew_txn_rollback(t);
    }
    if (rc)
        svc_reply_failure(u->s, res, "reading the preferences", &e);
    else if (!row.found)
        ew_http_reply_error(res, 404, NULL, "no preferences for user %s", id);
    else {
        ew_http_obj_begin(res, 200);
        ew_http_obj_str(res, "user_id", id);
        ew_http_obj_raw(res, "preferences", row.v[0]);
        ew_http_obj_str(res, "updated_at", row.v[1]);
        ew_http_obj_end(res);
    }
    svc_row_free(&row);
}

/* ---- POST /users/{id}/verify, POST /users/verify/confirm ---------------------------------- */

/* Mails a single-use token to the profile's address (user.verification_requested, which
 * notification-service answers); the address is verified when the token comes back. */
static void h_verify(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    static const char *const fields[] = {NULL};
    if (svc_json_only(rq, res, fields)) return;
    char now[EW_TIME_LEN + 1], expires[EW_TIME_LEN + 1], token[SVC_SECRET_LEN + 1];
    char hash[SVC_SECRET_HASH_LEN + 1];
    svc_time(0, now);
    svc_time(u->verify_ttl_s, expires);
    svc_secret_new(token);
    svc_secret_hash(token, hash);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(u->s, &t, &e);
    if (rc) goto failed;
    const char *p[] = {id};
    rc =
        svc_query_row(t, "SELECT verified, email FROM event_store.user_profiles WHERE user_id = $1",
                      p, 1, &row, &e);
    if (!rc && (!row.found || (row.v[0] && strcmp(row.v[0], "0")))) {
        ew_txn_rollback(t);
        if (!row.found)
            ew_http_reply_error(res, 404, NULL, "no profile for user %s", id);
        else
            ew_http_reply_error(res, 409, NULL, "user %s is verified already", id);
        svc_row_free(&row);
        sodium_memzero(token, sizeof token);
        return;
    }
    const char *ins[] = {hash, id, rc ? "" : row.v[1], now, expires};
    if (!rc)
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.user_verifications (token_hash, user_id, email, "
                         "created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                         ins, 5, NULL, &e);
    ew_user_verification_requested ev = {
        .user_id = id, .email = ins[2], .token = token, .expires_at = expires};
    if (!rc) rc = svc_emit(u->s, rq, t, EW_T_USER_VERIFICATION_REQUESTED, &ev, id, &e);
    rc = svc_finish(u->s, t, rc, &e);
    svc_row_free(&row);
failed:
    sodium_memzero(token, sizeof token);
    if (rc) {
        svc_reply_failure(u->s, res, "verifying the user", &e);
        return;
    }
    ew_http_obj_begin(res, 202);
    ew_http_obj_str(res, "user_id", id);
    ew_http_obj_str(res, "status", "verification mail on its way");
    ew_http_obj_str(res, "expires_at", expires);
    ew_http_obj_end(res);
}

/* The token from the mail, without a bearer token: spent once (an UPDATE that only one of two
 * confirmations at once can make), and only while it has not expired and the address is the
 * profile's still. */
static void h_verify_confirm(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    static const char *const fields[] = {"token", NULL};
    const char *token;
    if (svc_json_only(rq, res, fields) || svc_json_str(rq, res, "token", SVC_REQUIRED, 256, &token))
        return;
    char now[EW_TIME_LEN + 1], hash[SVC_SECRET_HASH_LEN + 1];
    svc_time(0, now);
    svc_secret_hash(token, hash);
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(u->s, &t, &e);
    if (rc) goto failed;
    const char *p[] = {hash, now};
    int64_t spent = 0;
    rc = ew_txn_exec(t,
                     "UPDATE event_store.user_verifications SET used_at = $2 WHERE token_hash = $1 "
                     "AND used_at IS NULL AND expires_at > $2",
                     p, 2, &spent, &e);
    if (!rc && spent == 1)
        rc = svc_query_row(t,
                           "SELECT v.user_id FROM event_store.user_verifications v JOIN "
                           "event_store.user_profiles p ON p.user_id = v.user_id AND "
                           "p.email = v.email WHERE v.token_hash = $1",
                           p, 1, &row, &e);
    if (!rc && (spent != 1 || !row.found)) {
        ew_txn_rollback(t);
        svc_row_free(&row);
        ew_http_reply_error(res, 400, "token",
                            "the verification token is not valid (unknown, used or expired)");
        return;
    }
    const char *u1[] = {rc ? "" : row.v[0], "email", now};
    if (!rc)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.user_profiles SET verified = 1, "
                         "verification_method = $2, verified_at = $3, updated_at = $3 "
                         "WHERE user_id = $1",
                         u1, 3, NULL, &e);
    ew_user_verified ev = {.user_id = u1[0], .method = "email"};
    if (!rc) rc = svc_emit(u->s, rq, t, EW_T_USER_VERIFIED, &ev, u1[0], &e);
    rc = svc_finish(u->s, t, rc, &e);
failed:
    if (rc) {
        svc_row_free(&row);
        svc_reply_failure(u->s, res, "verifying the user", &e);
        return;
    }
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", row.v[0]);
    ew_http_obj_bool(res, "verified", true);
    ew_http_obj_str(res, "method", "email");
    ew_http_obj_str(res, "verified_at", now);
    ew_http_obj_end(res);
    svc_row_free(&row);
}

/* ---- PUT /users/{id}/consent --------------------------------------------------------------- */

/* A user grants or withdraws consent for a purpose ("analytics", "marketing", ...): the
 * services that process for that purpose honour user.consent_changed. Nothing is kept here. */
static void h_put_consent(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    usvc *u = ud;
    const char *id = svc_path_user(rq, res, "id", "profile for user");
    if (!id) return;
    static const char *const fields[] = {"purpose", "granted", NULL};
    const char *purpose = NULL;
    bool granted = false;
    if (svc_json_only(rq, res, fields) ||
        svc_json_str(rq, res, "purpose", SVC_REQUIRED, METHOD_MAX, &purpose) ||
        svc_json_bool(rq, res, "granted", SVC_REQUIRED, &granted, NULL))
        return;
    for (const char *p = purpose; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_')) {
            ew_http_reply_error(res, 400, "purpose", "purpose may hold only a-z and '_'");
            return;
        }
    ew_txn *t;
    ew_error e = {0};
    svc_row row = {0};
    int rc = svc_begin(u->s, &t, &e);
    if (rc) goto failed;
    const char *p[] = {id};
    rc = svc_query_row(t, "SELECT 1 FROM event_store.user_profiles WHERE user_id = $1", p, 1, &row,
                       &e);
    if (!rc && !row.found) {
        ew_txn_rollback(t);
        svc_row_free(&row);
        ew_http_reply_error(res, 404, NULL, "no profile for user %s", id);
        return;
    }
    svc_row_free(&row);
    ew_user_consent_changed ev = {.user_id = id, .purpose = purpose, .granted = granted};
    if (!rc) rc = svc_emit(u->s, rq, t, EW_T_USER_CONSENT_CHANGED, &ev, id, &e);
    rc = svc_finish(u->s, t, rc, &e);
failed:
    if (rc) {
        svc_reply_failure(u->s, res, "recording the consent", &e);
        return;
    }
    /* who gave or withdrew which consent, and when: what GDPR art. 7(1) asks to show */
    char details[METHOD_MAX + 48];
    snprintf(details, sizeof details, "{\"purpose\":\"%s\",\"granted\":%s}", purpose,
             granted ? "true" : "false");
    svc_audit(u->s, rq, NULL, "user.consent_changed", id, details);
    ew_http_obj_begin(res, 200);
    ew_http_obj_str(res, "user_id", id);
    ew_http_obj_str(res, "purpose", purpose);
    ew_http_obj_bool(res, "granted", granted);
    ew_http_obj_end(res);
}

const svc_http_route user_routes[] = {
    {"GET /users/{id}/profile", 0, h_get_profile},
    {"PUT /users/{id}/profile", EW_HTTP_JSON, h_put_profile},
    {"GET /users/{id}/preferences", 0, h_get_preferences},
    {"PUT /users/{id}/preferences", EW_HTTP_JSON, h_put_preferences},
    {"POST /users/{id}/verify", EW_HTTP_JSON_OPT, h_verify},
    {"PUT /users/{id}/consent", EW_HTTP_JSON, h_put_consent},
    {"POST /users/verify/confirm", EW_HTTP_JSON | SVC_PUBLIC, h_verify_confirm},
    {0},
};
