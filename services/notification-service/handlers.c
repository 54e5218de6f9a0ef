/* notification-service: the event handlers. Each runs in the inbox's transaction, so its rows
 * and the events it emits commit together with the record that the event was handled.
 *
 * A message is sent at most once per (user, template, reference): the row of
 * notification_messages is inserted before the send, in the handler's transaction, and a second
 * event finds it and sends nothing. A failed send publishes notification.email_failed at once
 * (outside the transaction, which is rolled back) and returns retry; after the last attempt the
 * bus dead-letters the event.
 *
 * The GDPR events (user.data_export_requested, user.deletion_requested) the runtime answers from
 * notif_gdpr (svc.h). */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "notification.h"

#define NAME_MAX_BYTES 100 /* of a user's name quoted in a message */

/* s cut to at most max bytes on a UTF-8 character boundary, into out (max + 1 bytes). */
static void cut_utf8(const char *s, char *out, size_t max)
{
    size_t n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

/* Publishes notification.email_failed now, with the handled event's correlation. */
static void publish_failed(notif *n, ew_handler_ctx *ctx, const char *user_id, const char *email,
                           const char *tmpl, const char *why)
{
    ew_notification_email_failed f = {
        .user_id = user_id, .email = email, .template_name = tmpl, .error = why};
    ew_event_attrs a;
    ew_ctx_follow_up_attrs(ctx, &a);
    a.source = svc_name(n->s);
    a.subject = user_id;
    ew_event *ev = NULL;
    ew_error e = {0};
    if (ew_event_new(&ev, EW_T_NOTIFICATION_EMAIL_FAILED, &f, &a, &e) ||
        ew_bus_publish(svc_bus(n->s), ev, &e))
        svc_log(n->s, EW_LOG_ERROR, "cannot publish notification.email_failed: %s", e.msg);
    ew_event_unref(ev);
}

/* Sends a message once: records it in notification_messages (in the handler's transaction) and
 * sends it. *sent is false when it had been sent already. On a failed send: email_failed is
 * published and the result is retry. */
static ew_handler_result send_once(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                   const char *ref, notif_mail *m, bool *sent)
{
    *sent = false;
    char now[EW_TIME_LEN + 1];
    notif_message_id(m->template_name, ref, m->message_id);
    const char *id = m->message_id;
    svc_time(0, now);
    const char *p[] = {
        id, user_id, m->template_name, ref, m->to, m->subject, n->smtp_url ? "smtp" : "file", now};
    int64_t changes = 0;
    ew_error e = {0};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "INSERT INTO event_store.notification_messages"
                    " (message_id, user_id, template, ref, email, subject, transport, sent_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    p, 8, &changes, &e))
        return svc_retry(n->s, ctx, "recording a message", &e);
    if (changes == 0) {
        svc_log(n->s, EW_LOG_INFO, "%s for %s was sent already (message %s): not sending again",
                m->template_name, user_id, id);
        return EW_HANDLER_OK;
    }
    char why[512];
    if (notif_send(n, m, why, sizeof why)) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s (attempt %d)", why, ew_ctx_attempt(ctx));
        svc_log(n->s, EW_LOG_WARN, "%s for %s not sent: %s", m->template_name, user_id, msg);
        publish_failed(n, ctx, user_id, m->to, m->template_name, msg);
        ew_ctx_set_error(ctx, "%s", msg);
        return EW_HANDLER_RETRY;
    }
    *sent = true;
    return EW_HANDLER_OK;
}

static ew_handler_result send_welcome(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                      const char *display_name, svc_row *u);
static ew_handler_result send_pending_exports(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                              svc_row *u);

/* ---- user.registered: keep the address ------------------------------------------------------- */

static ew_handler_result on_registered(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    notif *n = ud;
    const ew_user_registered *d = ew_user_registered_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    const char *p[] = {d->user_id, d->email, d->username, now};
    ew_error e = {0};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "INSERT INTO event_store.notification_users"
                    " (user_id, email, username, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (user_id) DO UPDATE"
                    " SET email = excluded.email, username = excluded.username,"
                    " updated_at = excluded.updated_at",
                    p, 4, NULL, &e))
        return svc_retry(n->s, ctx, "recording a user", &e);
    /* a welcome (user.profile_created) and export links that arrived first are owed now */
    svc_row w;
    const char *q[] = {d->user_id};
    if (svc_query_row(ew_ctx_txn(ctx),
                      "SELECT display_name FROM event_store.notification_pending_welcomes"
                      " WHERE user_id = $1",
                      q, 1, &w, &e))
        return svc_retry(n->s, ctx, "reading a pending welcome", &e);
    svc_row u = {.found = true, .n = 2, .v = {strdup(d->email), strdup(d->username)}};
    ew_handler_result r = EW_HANDLER_RETRY;
    if (!u.v[0] || !u.v[1])
        ew_ctx_set_error(ctx, "out of memory");
    else if (!w.found)
        r = EW_HANDLER_OK;
    else if (ew_txn_exec(ew_ctx_txn(ctx),
                         "DELETE FROM event_store.notification_pending_welcomes WHERE user_id = $1",
                         q, 1, NULL, &e))
        r = svc_retry(n->s, ctx, "taking a pending welcome", &e);
    else
        r = send_welcome(n, ctx, d->user_id, w.v[0], &u);
    if (r == EW_HANDLER_OK) r = send_pending_exports(n, ctx, d->user_id, &u);
    svc_row_free(&u);
    svc_row_free(&w);
    return r;
}

/* ---- user.profile_created: the welcome email ------------------------------------------------- */

/* The welcome email to user_id, whose address and name are in u, once. */
static ew_handler_result send_welcome(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                      const char *display_name, svc_row *u)
{
    ew_handler_result r;
    char name[NAME_MAX_BYTES + 1], subject[NAME_MAX_BYTES + 64], *body = NULL;
    cut_utf8(display_name && *display_name ? display_name : u->v[1], name, NAME_MAX_BYTES);
    snprintf(subject, sizeof subject, "Welcome, %s!", name);
    char uname[NAME_MAX_BYTES + 1];
    cut_utf8(u->v[1], uname, NAME_MAX_BYTES);
    if (asprintf(&body,
                 "Hello %s,\n\n"
                 "welcome aboard: your account \"%s\" is ready and your profile is set up.\n\n"
                 "If you did not sign up, write back to this message and we will close the "
                 "account.\n\n"
                 "-- \neventwire\n",
                 name, uname) < 0) {
        ew_ctx_set_error(ctx, "out of memory");
        return EW_HANDLER_RETRY;
    }
    notif_mail m = {.to = u->v[0], .subject = subject, .body = body, .template_name = "welcome"};
    bool sent;
    r = send_once(n, ctx, user_id, user_id, &m, &sent);
    if (r == EW_HANDLER_OK && sent) {
        ew_notification_welcome_email_sent w = {
            .user_id = user_id, .email = u->v[0], .message_id = m.message_id};
        r = svc_ctx_emit_or_retry(n->s, ctx, EW_T_NOTIFICATION_WELCOME_EMAIL_SENT, &w, user_id);
        if (r == EW_HANDLER_OK)
            svc_log(n->s, EW_LOG_INFO, "welcome email %s sent to user %s", m.message_id, user_id);
    }
    free(body);
    return r;
}

/* The user's address and name, as user.registered left them (u->found is 0 until it has been
 * handled). */
static int read_user(ew_handler_ctx *ctx, const char *user_id, svc_row *u, ew_error *e)
{
    const char *p[] = {user_id};
    return svc_query_row(ew_ctx_txn(ctx),
                         "SELECT email, username FROM event_store.notification_users"
                         " WHERE user_id = $1",
                         p, 1, u, e);
}

static ew_handler_result on_profile_created(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    notif *n = ud;
    const ew_user_profile_created *d = ew_user_profile_created_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    svc_row u;
    ew_error e = {0};
    if (read_user(ctx, d->user_id, &u, &e)) return svc_retry(n->s, ctx, "reading a user", &e);
    if (!u.found) {
        /* user.registered has not been handled yet (its subscription runs apart): the welcome
         * waits for it rather than retrying after a back-off */
        svc_row_free(&u);
        char now[EW_TIME_LEN + 1];
        svc_time(0, now);
        const char *w[] = {d->user_id, d->display_name, now};
        if (ew_txn_exec(ew_ctx_txn(ctx),
                        "INSERT INTO event_store.notification_pending_welcomes"
                        " (user_id, display_name, created_at) VALUES ($1, $2, $3)"
                        " ON CONFLICT (user_id) DO NOTHING",
                        w, 3, NULL, &e))
            return svc_retry(n->s, ctx, "keeping a welcome for later", &e);
        return EW_HANDLER_OK;
    }
    ew_handler_result r = send_welcome(n, ctx, d->user_id, d->display_name, &u);
    svc_row_free(&u);
    return r;
}

/* ---- password.reset_token_issued: the reset email -------------------------------------------- */

static ew_handler_result on_reset_token(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    notif *n = ud;
    const ew_password_reset_token_issued *d = ew_password_reset_token_issued_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    char *body = NULL;
    if (asprintf(&body,
                 "Hello,\n\n"
                 "someone, hopefully you, asked to reset the password of your account.\n"
                 "Use this token to choose a new password:\n\n"
                 "    %s\n\n"
                 "It can be used once, until %s.\n"
                 "If you did not ask for it, ignore this message: your password stays as it is.\n\n"
                 "-- \neventwire\n",
                 d->token, d->expires_at) < 0) {
        ew_ctx_set_error(ctx, "out of memory");
        return EW_HANDLER_RETRY;
    }
    notif_mail m = {.to = d->email,
                    .subject = "Reset your password",
                    .body = body,
                    .template_name = "password_reset"};
    bool sent;
    ew_handler_result r = send_once(n, ctx, d->user_id, d->request_id, &m, &sent);
    if (r == EW_HANDLER_OK && sent) {
        ew_notification_email_sent s = {.user_id = d->user_id,
                                        .email = d->email,
                                        .template_name = "password_reset",
                                        .message_id = m.message_id};
        r = svc_ctx_emit_or_retry(n->s, ctx, EW_T_NOTIFICATION_EMAIL_SENT, &s, d->user_id);
    }
    /* the token is a secret: do not leave it in freed memory */
    sodium_memzero(body, strlen(body));
    free(body);
    return r;
}

/* ---- user.verification_requested: the address verification email ----------------------------- */

static ew_handler_result on_verification(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    notif *n = ud;
    const ew_user_verification_requested *d = ew_user_verification_requested_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    char *body = NULL;
    if (asprintf(&body,
                 "Hello,\n\n"
                 "please confirm that this address is yours with this token\n"
                 "(POST /users/verify/confirm {\"token\": \"...\"}):\n\n"
                 "    %s\n\n"
                 "It can be used once, until %s.\n"
                 "If you did not ask for it, ignore this message.\n\n"
                 "-- \neventwire\n",
                 d->token, d->expires_at) < 0) {
        ew_ctx_set_error(ctx, "out of memory");
        return EW_HANDLER_RETRY;
    }
    notif_mail m = {.to = d->email,
                    .subject = "Confirm your email address",
                    .body = body,
                    .template_name = "email_verification"};
    bool sent;
    ew_handler_result r = send_once(n, ctx, d->user_id, ew_event_id(ev), &m, &sent);
    if (r == EW_HANDLER_OK && sent) {
        ew_notification_email_sent s = {.user_id = d->user_id,
                                        .email = d->email,
                                        .template_name = "email_verification",
                                        .message_id = m.message_id};
        r = svc_ctx_emit_or_retry(n->s, ctx, EW_T_NOTIFICATION_EMAIL_SENT, &s, d->user_id);
    }
    sodium_memzero(body, strlen(body));
    free(body);
    return r;
}

/* ---- user.data_export_completed: the download link ------------------------------------------- */

/* The mail of export export_id's link to user_id, whose address and name are in u, once. */
static ew_handler_result send_export(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                     const char *export_id, const char *url, const char *expires_at,
                                     svc_row *u)
{
    char name[NAME_MAX_BYTES + 1], *body = NULL;
    cut_utf8(u->v[1], name, NAME_MAX_BYTES);
    if (asprintf(&body,
                 "Hello %s,\n\n"
                 "the copy of your data that you asked for is ready. Download it here:\n\n"
                 "    %s\n\n"
                 "The link works until %s.\n\n"
                 "-- \neventwire\n",
                 name, url, expires_at) < 0) {
        ew_ctx_set_error(ctx, "out of memory");
        return EW_HANDLER_RETRY;
    }
    notif_mail m = {.to = u->v[0],
                    .subject = "Your data export is ready",
                    .body = body,
                    .template_name = "data_export_ready"};
    bool sent;
    ew_handler_result r = send_once(n, ctx, user_id, export_id, &m, &sent);
    if (r == EW_HANDLER_OK && sent) {
        ew_notification_email_sent s = {.user_id = user_id,
                                        .email = u->v[0],
                                        .template_name = "data_export_ready",
                                        .message_id = m.message_id};
        r = svc_ctx_emit_or_retry(n->s, ctx, EW_T_NOTIFICATION_EMAIL_SENT, &s, user_id);
    }
    /* the link is a capability: do not leave it in freed memory */
    sodium_memzero(body, strlen(body));
    free(body);
    return r;
}

/* The export links kept for user_id until its address came (on_export_completed), mailed now
 * and forgotten. */
static ew_handler_result send_pending_exports(notif *n, ew_handler_ctx *ctx, const char *user_id,
                                              svc_row *u)
{
    const char *q[] = {user_id};
    for (;;) {
        svc_row x;
        ew_error e = {0};
        if (svc_query_row(ew_ctx_txn(ctx),
                          "SELECT export_id, download_url, expires_at"
                          " FROM event_store.notification_pending_exports WHERE user_id = $1"
                          " ORDER BY created_at, export_id LIMIT 1",
                          q, 1, &x, &e))
            return svc_retry(n->s, ctx, "reading a pending export link", &e);
        if (!x.found) {
            svc_row_free(&x);
            return EW_HANDLER_OK;
        }
        const char *p[] = {x.v[0]};
        ew_handler_result r;
        if (ew_txn_exec(ew_ctx_txn(ctx),
                        "DELETE FROM event_store.notification_pending_exports WHERE export_id = $1",
                        p, 1, NULL, &e))
            r = svc_retry(n->s, ctx, "taking a pending export link", &e);
        else
            r = send_export(n, ctx, user_id, x.v[0], x.v[1], x.v[2], u);
        if (x.v[1]) sodium_memzero(x.v[1], strlen(x.v[1]));
        svc_row_free(&x);
        if (r != EW_HANDLER_OK) return r;
    }
}

static ew_handler_result on_export_completed(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    notif *n = ud;
    const ew_user_data_export_completed *d = ew_user_data_export_completed_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    svc_row u;
    ew_error e = {0};
    if (read_user(ctx, d->user_id, &u, &e)) return svc_retry(n->s, ctx, "reading a user", &e);
    if (u.found) {
        ew_handler_result r =
            send_export(n, ctx, d->user_id, d->export_id, d->download_url, d->expires_at, &u);
        svc_row_free(&u);
        return r;
    }
    svc_row_free(&u);
    /* user.registered has not been handled yet (its subscription runs apart, and a consumer
     * killed while holding it leaves it pending until it is reclaimed, REDIS_CLAIM_IDLE_MS):
     * the link waits for the address rather than retrying after back-offs that may all end
     * before then and dead-letter it. Links past their expiry are no use to anyone: dropped. */
    char now[EW_TIME_LEN + 1];
    svc_time(0, now);
    const char *w[] = {d->export_id, d->user_id, d->download_url, d->expires_at, now};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "DELETE FROM event_store.notification_pending_exports WHERE expires_at <= $1",
                    w + 4, 1, NULL, &e) ||
        ew_txn_exec(ew_ctx_txn(ctx),
                    "INSERT INTO event_store.notification_pending_exports"
                    " (export_id, user_id, download_url, expires_at, created_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (export_id) DO NOTHING",
                    w, 5, NULL, &e))
        return svc_retry(n->s, ctx, "keeping an export link for later", &e);
    return EW_HANDLER_OK;
}

/* ---- GDPR: the runtime answers from this ---------------------------------------------------- */

/* Once the rows are gone, the spool's copies of the messages go too. */
static void forget_message(svc *s, void *ud, const char *message_id)
{
    notif_mail_forget(ud, message_id);
}

const svc_gdpr notif_gdpr = {
    .parts =
        (const svc_gdpr_part[]){
            {.key = "address",
             .kind = SVC_GDPR_ROW,
             .sql = "SELECT email, username, created_at AS known_since"
                    " FROM event_store.notification_users WHERE user_id = $1"},
            {.key = "messages",
             .kind = SVC_GDPR_ROWS,
             .sql = "SELECT message_id, template, subject, email, transport, sent_at"
                    " FROM event_store.notification_messages WHERE user_id = $1"
                    " ORDER BY sent_at, message_id"},
            {0},
        },
    .empty_is_nothing = true,
    .deletes =
        (const char *const[]){
            "DELETE FROM event_store.notification_messages WHERE user_id = $1",
            "DELETE FROM event_store.notification_users WHERE user_id = $1",
            "DELETE FROM event_store.notification_pending_welcomes WHERE user_id = $1",
            "DELETE FROM event_store.notification_pending_exports WHERE user_id = $1",
            NULL,
        },
    .leftovers = "SELECT message_id FROM event_store.notification_messages WHERE user_id = $1",
    .forget = forget_message,
    .failure = svc_retry,
};

const svc_handler notif_handlers[] = {
    {"user.registered", on_registered},
    {"user.profile_created", on_profile_created},
    {"password.reset_token_issued", on_reset_token},
    {"user.verification_requested", on_verification},
    {"user.data_export_completed", on_export_completed},
    {0},
};
