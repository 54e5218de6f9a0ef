/* eventwire — the UserRegistration saga (sagas.h): watches a registration through the services
 * that react to user.registered. None of its steps issues anything: user-service, notification-
 * service and analytics-service answer user.registered themselves, in whatever order; the saga
 * waits for all four answers and, when the profile cannot be created or the deadline passes,
 * undoes the registration by publishing user.deactivated (the compensation of its first step,
 * which the start event completes). It keeps only the user id: no personal data in saga state. */
#include <stdio.h>
#include <string.h>
#include "eventwire/sagas.h"

static const char *const t_registered[] = {"user.registered", NULL};
static const char *const t_profile[] = {"user.profile_created", NULL};
static const char *const t_profile_failed[] = {"user.profile_creation_failed", NULL};
static const char *const t_preferences[] = {"user.preferences_updated", NULL};
static const char *const t_welcome[] = {"notification.welcome_email_sent", NULL};
static const char *const t_analytics[] = {"analytics.user_tracked", NULL};

static int on_start(ew_saga *s, void *ud, ew_error *err)
{
    (void)ud;
    const ew_user_registered *u = ew_user_registered_data(ew_saga_cause(s));
    return u ? ew_saga_set(s, "user_id", u->user_id, err) : 0;
}

/* The registration is undone: the account is deactivated, saying why. */
static int deactivate(ew_saga *s, void *ud, ew_error *err)
{
    (void)ud;
    const char *user = ew_saga_get(s, "user_id");
    if (!user) return 0;
    char reason[300];
    snprintf(reason, sizeof reason, "registration did not complete: %s",
             ew_saga_reason(s)[0] ? ew_saga_reason(s) : "compensated");
    ew_user_deactivated d = {.user_id = user, .reason = reason};
    return ew_saga_issue(s, EW_T_USER_DEACTIVATED, &d, user, err);
}

/* Analytics tracks every kind of event about a user: only the count of the registration itself
 * completes the step. */
static ew_saga_verdict analytics_tracked(ew_saga *s, const ew_event *ev, void *ud)
{
    (void)s, (void)ud;
    const ew_analytics_user_tracked *a = ew_analytics_user_tracked_data(ev);
    return a && strcmp(a->event, "user.registered") == 0 ? EW_SAGA_DONE : EW_SAGA_IGNORE;
}

static const ew_saga_step steps[] = {
    {.name = "registration", .completed_by = t_registered, .compensation = deactivate},
    {.name = "profile", .completed_by = t_profile, .failed_by = t_profile_failed},
    {.name = "preferences", .completed_by = t_preferences},
    {.name = "welcome_email", .completed_by = t_welcome},
    {.name = "analytics", .completed_by = t_analytics, .on_event = analytics_tracked},
};

int ew_saga_add_user_registration(ew_saga_engine *e, const ew_user_registration_opts *o,
                                  ew_error *err)
{
    ew_saga_def d = {
        .name = EW_SAGA_USER_REGISTRATION,
        .started_by = "user.registered",
        .correlate = EW_SAGA_BY_FIELD,
        .correlation_field = "user_id",
        .steps = steps,
        .nsteps = sizeof steps / sizeof steps[0],
        .timeout_ms = o ? o->timeout_ms : 0,
        .on_start = on_start,
    };
    return ew_saga_engine_register(e, &d, err);
}

int ew_saga_add_reference_sagas(ew_saga_engine *e, const ew_user_deletion_opts *deletion,
                                ew_error *err)
{
    int rc = ew_saga_add_user_registration(e, NULL, err);
    if (!rc) rc = ew_saga_add_user_deletion(e, deletion, err);
    if (!rc) rc = ew_saga_add_password_reset(e, NULL, err);
    return rc;
}
