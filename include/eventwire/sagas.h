/* eventwire — the sagas of the reference system, declared with the engine of saga.h
 * (docs/sagas.md has each one's steps, events and timeouts).
 *
 *   UserRegistration  user.registered -> profile (user.profile_created; a
 *                     user.profile_creation_failed fails it), default preferences
 *                     (user.preferences_updated), welcome email (notification.welcome_email_sent),
 *                     analytics (analytics.user_tracked of user.registered), in any order. A
 *                     failure or the deadline compensates the registration: user.deactivated.
 *                     Correlated by user_id.
 *   UserDeletion      user.deletion_requested -> user.data_deleted from every participating
 *                     service -> user.deletion_completed. When some have not confirmed by the
 *                     step deadline it asks again (user.deletion_requested once more), a bounded
 *                     number of times, then escalates: failed, user.deletion_failed naming them.
 *                     Correlated by request_id.
 *   PasswordReset     password.reset_requested -> token (password.reset_token_issued; the token's
 *                     expiry becomes the deadline) -> email (notification.email_sent of a
 *                     password_* template) -> password.reset_completed; or expired
 *                     (password.reset_expired, or the deadline, which publishes it).
 *                     Correlated by request_id (the email by correlation id).
 *
 * Each ew_saga_add_* registers its saga type on an engine that has not started; options may be
 * NULL for the defaults and are copied. */
#ifndef EVENTWIRE_SAGAS_H
#define EVENTWIRE_SAGAS_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/saga.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EW_SAGA_USER_REGISTRATION "UserRegistration"
#define EW_SAGA_USER_DELETION "UserDeletion"
#define EW_SAGA_PASSWORD_RESET "PasswordReset"

typedef struct ew_user_registration_opts {
    int64_t timeout_ms; /* 0: SAGA_TIMEOUT_SECONDS */
} ew_user_registration_opts;

int ew_saga_add_user_registration(ew_saga_engine *e, const ew_user_registration_opts *o,
                                  ew_error *err);

typedef struct ew_user_deletion_opts {
    const char *const *services; /* the participants, required: the services holding user data,
                                    each confirming with user.data_deleted (its "service") */
    size_t nservices;
    int retries;             /* requests sent again before escalating; 0: 2; -1: none */
    int64_t step_timeout_ms; /* the wait for confirmations before each retry; 0: the saga's
                                timeout divided by (retries + 1) */
    int64_t timeout_ms;      /* 0: SAGA_TIMEOUT_SECONDS. The instance's own deadline is set just
                                after the last step deadline, so that the escalation comes first */
} ew_user_deletion_opts;

int ew_saga_add_user_deletion(ew_saga_engine *e, const ew_user_deletion_opts *o, ew_error *err);

typedef struct ew_password_reset_opts {
    int64_t timeout_ms; /* until the token is issued (then its expiry); 0: SAGA_TIMEOUT_SECONDS */
} ew_password_reset_opts;

int ew_saga_add_password_reset(ew_saga_engine *e, const ew_password_reset_opts *o, ew_error *err);

/* The three, with their defaults but the deletion's participants, which deletion names (its
 * other fields may be 0 for their defaults). */
int ew_saga_add_reference_sagas(ew_saga_engine *e, const ew_user_deletion_opts *deletion,
                                ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
