/* eventwire — the UserDeletion saga (sagas.h), GDPR art. 17: user.deletion_requested goes to
 * every service; each deletes what it holds about the user and answers user.data_deleted naming
 * itself. The saga counts the answers against its list of participants (kept in the instance's
 * data at the start, so a running deletion keeps the list it began with) and publishes
 * user.deletion_completed when all have confirmed. When some have not by the step deadline it
 * publishes the request again (services delete idempotently, and the ones that confirmed already
 * answer again, which changes nothing) up to `retries` times, then escalates: the saga fails and
 * user.deletion_failed names the services that never confirmed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "saga/saga_impl.h"
#include "eventwire/clock.h"
#include "eventwire/sagas.h"

#define DEFAULT_RETRIES 2

typedef struct deletion {
    char **services;
    size_t n;
    int retries;
    int64_t step_timeout_ms;
} deletion;

static const char *const t_requested[] = {"user.deletion_requested", NULL};
static const char *const t_deleted[] = {"user.data_deleted", NULL};

static void deletion_free(void *ud)
{
    deletion *d = ud;
    if (!d) return;
    for (size_t i = 0; i < d->n; i++)
        free(d->services[i]);
    free(d->services);
    free(d);
}

static int on_start(ew_saga *s, void *ud, ew_error *err)
{
    const deletion *d = ud;
    const ew_user_deletion_requested *r = ew_user_deletion_requested_data(ew_saga_cause(s));
    if (!r) return 0;
    int rc = ew_saga_set(s, "request_id", r->request_id, err);
    if (!rc) rc = ew_saga_set(s, "user_id", r->user_id, err);
    /* Not the reason: it is personal data (encrypted in events), and saga data is not. */
    for (size_t i = 0; !rc && i < d->n; i++)
        if ((rc = ew_saga_list_add(s, "services", d->services[i], err)) > 0) rc = 0;
    if (rc) return rc;
    /* A backstop just after the last step deadline: the escalation, which names who is missing,
     * comes first. */
    int64_t last = (int64_t)(d->retries + 1) * d->step_timeout_ms;
    ew_saga_set_deadline(s, ew_now_us() + (last + d->step_timeout_ms / 2 + 1000) * 1000);
    return 0;
}

/* The participants that have not confirmed, into out (at most cap), and how many. */
static size_t missing(const ew_saga *s, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < ew_saga_list_len(s, "services"); i++) {
        const char *svc = ew_saga_list_at(s, "services", i);
        if (!ew_saga_list_has(s, "confirmed", svc) && n < cap) out[n++] = svc;
    }
    return n;
}

static void join(char *buf, size_t size, const char *const *items, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "", items[i]);
}

static ew_saga_verdict confirmed(ew_saga *s, const ew_event *ev, void *ud)
{
    (void)ud;
    const ew_user_data_deleted *d = ew_user_data_deleted_data(ev);
    if (!d || !ew_saga_list_has(s, "services", d->service) ||
        ew_saga_list_has(s, "confirmed", d->service))
        return EW_SAGA_IGNORE; /* not a participant, or a repeated answer */
    if (ew_saga_list_add(s, "confirmed", d->service, NULL) < 0) return EW_SAGA_IGNORE;
    size_t done = ew_saga_list_len(s, "confirmed"), all = ew_saga_list_len(s, "services");
    ew_saga_note(s, "%s deleted %lld records (%zu of %zu confirmed).", d->service,
                 (long long)d->records, done, all);
    return done >= all ? EW_SAGA_DONE : EW_SAGA_PROGRESS;
}

static ew_saga_verdict no_answer(ew_saga *s, void *ud)
{
    const deletion *d = ud;
    const char *miss[64];
    size_t n = missing(s, miss, 64);
    char names[512];
    join(names, sizeof names, miss, n);
    if (ew_saga_step_attempts(s) >= d->retries) {
        ew_saga_set_reason(s, "No confirmation from %s after %d requests.", names,
                           ew_saga_step_attempts(s) + 1);
        return EW_SAGA_FAIL;
    }
    ew_user_deletion_requested r = {.request_id = ew_saga_get(s, "request_id"),
                                    .user_id = ew_saga_get(s, "user_id"),
                                    .requested_by = "saga UserDeletion"};
    ew_error err = {0};
    if (!r.request_id || !r.user_id ||
        ew_saga_issue(s, EW_T_USER_DELETION_REQUESTED, &r, r.user_id, &err)) {
        ew_saga_set_reason(s, "Cannot ask %s again: %s", names, err.msg);
        return EW_SAGA_FAIL;
    }
    ew_saga_note(s, "Asked again: %s had not confirmed.", names);
    return EW_SAGA_RETRY;
}

/* Completed: everyone confirmed. Otherwise (escalated, or the backstop deadline): who did not.
 * Either way the user's data key is destroyed first (crypto-shredding): every copy of their
 * personal data left in events, brokers, outboxes and dead letters is unreadable from now on,
 * also what a service that never confirmed still holds in events. */
static int on_end(ew_saga *s, void *ud, ew_error *err)
{
    (void)ud;
    const char *request = ew_saga_get(s, "request_id"), *user = ew_saga_get(s, "user_id");
    if (!request || !user) return 0;
    int rc = ew__saga_shred(s, user, err);
    if (rc) return rc;
    const char *list[64];
    size_t n;
    if (ew_saga_state(s) == EW_SAGA_COMPLETED) {
        for (n = 0; n < ew_saga_list_len(s, "confirmed") && n < 64; n++)
            list[n] = ew_saga_list_at(s, "confirmed", n);
        ew_user_deletion_completed c = {
            .request_id = request, .user_id = user, .services = {list, n}};
        return ew_saga_issue(s, EW_T_USER_DELETION_COMPLETED, &c, user, err);
    }
    n = missing(s, list, 64);
    ew_user_deletion_failed f = {.request_id = request,
                                 .user_id = user,
                                 .missing = {list, n},
                                 .reason = ew_saga_reason(s)[0] ? ew_saga_reason(s)
                                                                : "deletion did not complete"};
    return ew_saga_issue(s, EW_T_USER_DELETION_FAILED, &f, user, err);
}

static deletion *deletion_new(const ew_user_deletion_opts *o, int64_t saga_timeout_ms)
{
    const char *const *svc = o->services;
    size_t n = o->nservices;
    deletion *d = calloc(1, sizeof *d);
    if (!d || !(d->services = calloc(n ? n : 1, sizeof *d->services))) {
        deletion_free(d);
        return NULL;
    }
    for (; d->n < n; d->n++)
        if (!(d->services[d->n] = strdup(svc[d->n]))) {
            deletion_free(d);
            return NULL;
        }
    d->retries = o->retries == 0 ? DEFAULT_RETRIES : o->retries < 0 ? 0 : o->retries;
    int64_t timeout = o->timeout_ms ? o->timeout_ms : saga_timeout_ms;
    d->step_timeout_ms = o->step_timeout_ms ? o->step_timeout_ms : timeout / (d->retries + 1);
    if (d->step_timeout_ms < 1) d->step_timeout_ms = 1;
    return d;
}

int ew_saga_add_user_deletion(ew_saga_engine *e, const ew_user_deletion_opts *o, ew_error *err)
{
    if (!e) return ew_error_set(err, EW_EINVAL, "an engine is required");
    if (!o || !o->services || o->nservices == 0 || o->nservices > 64)
        return ew_error_set(err, EW_EINVAL,
                            "UserDeletion: 1 to 64 participating services are required");
    for (size_t i = 0; i < o->nservices; i++)
        if (!o->services[i] || !*o->services[i])
            return ew_error_set(err, EW_EINVAL, "UserDeletion: service %zu has no name", i);
    if (o->step_timeout_ms < 0 || o->timeout_ms < 0)
        return ew_error_set(err, EW_EINVAL, "UserDeletion: negative timeout");
    deletion *d = deletion_new(o, ew__saga_engine_timeout_ms(e));
    if (!d) return ew_error_set(err, EW_ENOMEM, "out of memory");
    ew_saga_step steps[] = {
        {.name = "confirmations",
         .completed_by = t_deleted,
         .on_event = confirmed,
         .timeout_ms = d->step_timeout_ms,
         .on_timeout = no_answer},
    };
    ew_saga_def def = {
        .name = EW_SAGA_USER_DELETION,
        .started_by = t_requested[0],
        .correlate = EW_SAGA_BY_FIELD,
        .correlation_field = "request_id",
        .steps = steps,
        .nsteps = 1,
        .timeout_ms = o->timeout_ms,
        .on_start = on_start,
        .on_end = on_end,
        .ud = d,
        .ud_free = deletion_free,
    };
    return ew_saga_engine_register(e, &def, err);
}
