/* The registration flow of the system on the in-memory bus, in one process: auth publishes
 * user.registered; user creates the profile and default preferences; auth marks the profile
 * created; notification sends the welcome email; analytics counts the user. Every event is
 * printed as a CloudEvents JSON line as it is handled. `make run` runs this until the services
 * run as processes of their own. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/bus.h"
#include "eventwire/id.h"

typedef struct demo {
    atomic_int profiles_marked, welcome_emails, users_counted;
    pthread_mutex_t print_lock;
} demo;

/* user-service: a profile and default preferences for every new user. */
static ew_handler_result create_profile(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_registered *u = ew_user_registered_data(ev);
    ew_user_profile_created p = {.user_id = u->user_id, .display_name = u->username};
    ew_user_preferences_updated prefs = {
        .user_id = u->user_id, .preferences = "{\"language\":\"en\",\"newsletter\":false}"};
    ew_error err;
    if (ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &p, u->user_id, &err) ||
        ew_ctx_publish(ctx, EW_T_USER_PREFERENCES_UPDATED, &prefs, u->user_id, &err)) {
        ew_ctx_set_error(ctx, "%s", err.msg);
        return EW_HANDLER_RETRY;
    }
    return EW_HANDLER_OK;
}

/* auth-service: remembers that the user's profile exists. */
static ew_handler_result mark_profile(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    atomic_fetch_add(&((demo *)ud)->profiles_marked, 1);
    return EW_HANDLER_OK;
}

/* notification-service: the welcome email. */
static ew_handler_result send_welcome(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_registered *u = ew_user_registered_data(ev);
    char msgid[EW_UUID_LEN + 1];
    ew_uuid7(msgid);
    ew_notification_welcome_email_sent s = {
        .user_id = u->user_id, .email = u->email, .message_id = msgid};
    atomic_fetch_add(&((demo *)ud)->welcome_emails, 1);
    return ew_ctx_publish(ctx, EW_T_NOTIFICATION_WELCOME_EMAIL_SENT, &s, u->user_id, NULL)
               ? EW_HANDLER_RETRY
               : EW_HANDLER_OK;
}

/* analytics-service: counts new users. */
static ew_handler_result count_user(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    const ew_user_registered *u = ew_user_registered_data(ev);
    ew_analytics_user_tracked t = {.user_id = u->user_id, .event = "user.registered"};
    atomic_fetch_add(&((demo *)ud)->users_counted, 1);
    return ew_ctx_publish(ctx, EW_T_ANALYTICS_USER_TRACKED, &t, u->user_id, NULL) ? EW_HANDLER_RETRY
                                                                                  : EW_HANDLER_OK;
}

/* A console tap: every event, as the JSON that would go on the wire. */
static ew_handler_result print_event(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    char *json;
    if (ew_event_encode(ev, &json, NULL, NULL) == 0) {
        pthread_mutex_lock(&((demo *)ud)->print_lock);
        printf("%s\n", json);
        fflush(stdout);
        pthread_mutex_unlock(&((demo *)ud)->print_lock);
        free(json);
    }
    return EW_HANDLER_OK;
}

int main(int argc, char **argv)
{
    int users = argc > 1 ? atoi(argv[1]) : 3;
    if (users < 1 || users > 100000) {
        fprintf(stderr, "usage: %s [USERS]   (1..100000, default 3)\n", argv[0]);
        return 2;
    }
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "auth-service", &err)) {
        fprintf(stderr, "demo: %s\n", err.msg);
        return 1;
    }
    ew_bus *bus;
    ew_bus_options o = {.config = cfg};
    if (ew_bus_open(&bus, &o, &err)) {
        fprintf(stderr, "demo: %s\n", err.msg);
        return 1;
    }
    ew_config_free(cfg);
    demo d = {.print_lock = PTHREAD_MUTEX_INITIALIZER};
    struct {
        const char *pattern, *group;
        ew_handler_fn fn;
    } subs[] = {
        {"user.registered", "user-service", create_profile},
        {"user.profile_created", "auth-service", mark_profile},
        {"user.registered", "notification-service", send_welcome},
        {"user.registered", "analytics-service", count_user},
        {"#", "console", print_event},
    };
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        ew_subscribe_opts so = {.group = subs[i].group};
        if (ew_bus_subscribe(bus, subs[i].pattern, subs[i].fn, &d, &so, &err)) {
            fprintf(stderr, "demo: %s\n", err.msg);
            return 1;
        }
    }
    if (ew_bus_start(bus, &err)) {
        fprintf(stderr, "demo: %s\n", err.msg);
        return 1;
    }
    static const char *const names[] = {"ada", "grace", "edsger", "barbara", "ken", "dennis"};
    for (int i = 0; i < users; i++) {
        char id[EW_UUID_LEN + 1], name[32], email[64];
        ew_uuid7(id);
        snprintf(name, sizeof name, "%s%d", names[i % 6], i + 1);
        snprintf(email, sizeof email, "%s@example.com", name);
        const char *roles[] = {"user"};
        ew_user_registered u = {
            .user_id = id, .email = email, .username = name, .roles = {roles, 1}};
        if (ew_bus_publish_new(bus, EW_T_USER_REGISTERED, &u, id, &err)) {
            fprintf(stderr, "demo: %s\n", err.msg);
            break;
        }
    }
    int rc = ew_bus_wait_for_events(bus, 10000, &err);
    fprintf(stderr,
            "demo: %d users registered; profiles marked %d, welcome emails %d, users counted %d\n",
            users, atomic_load(&d.profiles_marked), atomic_load(&d.welcome_emails),
            atomic_load(&d.users_counted));
    ew_bus_close(bus);
    return rc == 0 && atomic_load(&d.profiles_marked) == users ? 0 : 1;
}
