/* eventwire — the PasswordReset saga (sagas.h): a request, a single-use token with an expiry
 * (issued by auth-service), the email that carries it (notification-service), and the reset
 * itself. The token's expires_at becomes the instance's deadline: when it passes before
 * password.reset_completed arrives, the saga times out and publishes password.reset_expired; a
 * password.reset_expired from auth-service (a confirm with an expired token) fails it. The email
 * event has no request id: it is matched by correlation id, so notification-service answers
 * with the token event's correlation id (ew_ctx_follow_up_attrs does). */
#include <string.h>
#include "eventwire/clock.h"
#include "eventwire/sagas.h"

static const char *const t_requested[] = {"password.reset_requested", NULL};
static const char *const t_token[] = {"password.reset_token_issued", NULL};
static const char *const t_email[] = {"notification.email_sent", NULL};
static const char *const t_completed[] = {"password.reset_completed", NULL};
static const char *const t_expired[] = {"password.reset_expired", NULL};

static int on_start(ew_saga *s, void *ud, ew_error *err)
{
    (void)ud;
    const ew_password_reset_requested *r = ew_password_reset_requested_data(ew_saga_cause(s));
    if (!r) return 0;
    int rc = ew_saga_set(s, "request_id", r->request_id, err);
    return rc ? rc : ew_saga_set(s, "user_id", r->user_id, err);
}

/* The token is out: it expires when it says, and so does the saga. */
static ew_saga_verdict token_issued(ew_saga *s, const ew_event *ev, void *ud)
{
    (void)ud;
    const ew_password_reset_token_issued *t = ew_password_reset_token_issued_data(ev);
    int64_t at = 0;
    if (t && ew_time_parse(t->expires_at, &at) == 0) {
        ew_saga_set_deadline(s, at);
        ew_saga_set(s, "expires_at", t->expires_at, NULL);
        ew_saga_note(s, "The token expires at %s.", t->expires_at);
    }
    return EW_SAGA_DONE;
}

/* Only the reset mail counts (the same user may get other mail meanwhile). */
static ew_saga_verdict email_sent(ew_saga *s, const ew_event *ev, void *ud)
{
    (void)s, (void)ud;
    const ew_notification_email_sent *m = ew_notification_email_sent_data(ev);
    return m && strncmp(m->template_name, "password", 8) == 0 ? EW_SAGA_DONE : EW_SAGA_IGNORE;
}

/* The deadline (the token's expiry) passed unused: say so. */
static int on_end(ew_saga *s, void *ud, ew_error *err)
{
    (void)ud;
    const char *request = ew_saga_get(s, "request_id"), *user = ew_saga_get(s, "user_id");
    if (ew_saga_state(s) != EW_SAGA_TIMED_OUT || !request || !user) return 0;
    ew_password_reset_expired x = {.request_id = request, .user_id = user};
    return ew_saga_issue(s, EW_T_PASSWORD_RESET_EXPIRED, &x, user, err);
}

static const ew_saga_step steps[] = {
    {.name = "token", .completed_by = t_token, .on_event = token_issued},
    {.name = "email", .completed_by = t_email, .on_event = email_sent},
    {.name = "reset", .completed_by = t_completed, .failed_by = t_expired},
};

int ew_saga_add_password_reset(ew_saga_engine *e, const ew_password_reset_opts *o, ew_error *err)
{
    ew_saga_def d = {
        .name = EW_SAGA_PASSWORD_RESET,
        .started_by = t_requested[0],
        .correlate = EW_SAGA_BY_FIELD,
        .correlation_field = "request_id",
        .steps = steps,
        .nsteps = sizeof steps / sizeof steps[0],
        .timeout_ms = o ? o->timeout_ms : 0,
        .on_start = on_start,
        .on_end = on_end,
    };
    return ew_saga_engine_register(e, &d, err);
}
