/* ewctl user: the operator's commands on users, run on the deployment (docs/security.md). Roles
 * change through the bus, never through the public API: the command reads the user from
 * auth-service's database and publishes user.role_changed, which auth-service applies (and then
 * revokes the user's tokens, so that the next login carries the new roles). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/bus.h"
#include "eventwire/config.h"
#include "eventwire/event.h"
#include "ewctl.h"

static const char user_usage[] =
    "usage: ewctl user grant-admin USERNAME\n"
    "       ewctl user revoke-admin USERNAME\n\n"
    "Gives a user the role admin, or takes it away: looks the user up in auth-service's\n"
    "database (SERVICE_DB_URL, with {SERVICE_NAME} = auth-service) and publishes\n"
    "user.role_changed on the bus the environment configures; auth-service sets the roles and\n"
    "revokes the user's tokens, so the user logs in again to use them. This is how the first\n"
    "administrator is made: only on the deployment, never over HTTP. Prints the user's id and\n"
    "roles as JSON.\n";

#define ROLES_MAX 32

/* SERVICE_DB_URL for auth-service, malloc'ed. */
static char *auth_db_url(const ew_config *c)
{
    const char *url = ew_config_get(c, "SERVICE_DB_URL");
    static const char key[] = "{SERVICE_NAME}";
    ew_buf b;
    ew_buf_init(&b);
    for (const char *p = url; *p;) {
        const char *k = strstr(p, key);
        if (!k) {
            ew_buf_puts(&b, p);
            break;
        }
        ew_buf_append(&b, p, (size_t)(k - p));
        ew_buf_puts(&b, "auth-service");
        p = k + sizeof key - 1;
    }
    return ew_buf_steal(&b, NULL);
}

typedef struct found {
    char user_id[64];
    char *roles; /* JSON array text */
} found;

static int keep_user(void *ud, const ew_row *r)
{
    found *f = ud;
    snprintf(f->user_id, sizeof f->user_id, "%s", r->values[0] ? r->values[0] : "");
    f->roles = strdup(r->values[1] ? r->values[1] : "[]");
    return 1;
}

int ewctl_user(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(user_usage, stdout);
        return 0;
    }
    if (argc != 2 || (strcmp(argv[0], "grant-admin") && strcmp(argv[0], "revoke-admin"))) {
        fputs(user_usage, stderr);
        return 2;
    }
    bool grant = !strcmp(argv[0], "grant-admin");
    char key[64];
    if (snprintf(key, sizeof key, "%s", argv[1]) >= (int)sizeof key)
        return ewctl_fail(1, "no user named %s", argv[1]);
    for (char *p = key; *p; p++)
        *p = (char)tolower((unsigned char)*p);

    ew_config *cfg = NULL;
    ew_error err = {0};
    ew_store *db = NULL, *events = NULL;
    ew_audit *oplog = NULL;
    ewctl_bus eb = {0};
    ew_event *ev = NULL;
    found f = {0};
    ew_arena ar;
    ew_arena_init(&ar, NULL, 0);
    int status = 1;
    if (ewctl_config_load(&cfg, &err)) {
        ewctl_fail(1, "%s", err.msg);
        goto out;
    }
    char *url = auth_db_url(cfg);
    if (!strncmp(url, "sqlite:", 7) && access(url + 7, F_OK)) { /* do not make an empty one */
        ewctl_fail(1, "auth-service's database %s is not there (SERVICE_DB_URL)", url + 7);
        free(url);
        goto out;
    }
    int rc = ew_store_open(&db, &(ew_store_options){.config = cfg, .url = url}, &err);
    free(url);
    if (rc) {
        ewctl_fail(1, "cannot open auth-service's database (SERVICE_DB_URL): %s", err.msg);
        goto out;
    }
    ew_txn *t;
    const char *p[] = {key};
    if ((rc = ew_store_begin(db, &t, &err)) == 0) {
        rc = ew_txn_query(t,
                          "SELECT user_id, roles FROM event_store.auth_users "
                          "WHERE username_key = $1",
                          p, 1, keep_user, &f, &err);
        ew_txn_rollback(t);
    }
    if (rc) {
        ewctl_fail(1, "cannot read auth-service's users: %s", err.msg);
        goto out;
    }
    if (!f.user_id[0]) {
        ewctl_fail(1, "no user named %s", argv[1]);
        goto out;
    }
    /* the roles now, and the roles wanted */
    const char *before[ROLES_MAX], *after[ROLES_MAX + 1];
    size_t nb = 0, na = 0;
    ew_json *j;
    if (ew_json_parse(&j, f.roles, strlen(f.roles), NULL, &ar, &err) == 0 &&
        j->kind == EW_JSON_ARRAY)
        for (const ew_json *e = j->child; e && nb < ROLES_MAX; e = e->next)
            if (e->kind == EW_JSON_STRING) before[nb++] = e->str;
    bool had = false;
    for (size_t i = 0; i < nb; i++) {
        if (!strcmp(before[i], "admin")) {
            had = true;
            if (!grant) continue;
        }
        after[na++] = before[i];
    }
    if (grant && !had) after[na++] = "admin";
    if (na == 0) after[na++] = "user"; /* a user has one role at least */
    ew_user_role_changed d = {.user_id = f.user_id,
                              .roles = {after, na},
                              .previous_roles = {before, nb},
                              .changed_by = "operator (ewctl user)"};
    /* A role change is auth-service's to publish (the policy lets nobody else): the operator
     * publishes it as auth-service, with its key file, as `ewctl publish --as` does. */
    bool off = strcmp(ew_config_get(cfg, "EVENT_AUTH"), "off") == 0;
    ew_event_attrs a = {.source = off ? EWCTL_SERVICE : "auth-service", .subject = f.user_id};
    if ((rc = ew_user_role_changed_new(&ev, &d, &a, &err))) {
        ewctl_fail(1, "cannot publish user.role_changed: %s", err.msg);
        goto out;
    }
    if (ewctl_open_store(&events) || ewctl_oplog_open(events, &oplog)) goto out;
    if ((rc = ewctl_bus_open(&eb, cfg, off ? NULL : "auth-service", NULL, true))) goto out;
    if ((rc = ew_bus_publish(eb.bus, ev, &err))) {
        ewctl_fail(1, "cannot publish user.role_changed: %s", err.msg);
        goto out;
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"user_id\":");
    ew_json_write_string(&b, f.user_id, strlen(f.user_id));
    ew_buf_puts(&b, ",\"roles\":[");
    for (size_t i = 0; i < na; i++) {
        if (i) ew_buf_putc(&b, ',');
        ew_json_write_string(&b, after[i], strlen(after[i]));
    }
    ew_buf_puts(&b, "]");
    ewctl_put_str(&b, "event_id", ew_event_id(ev));
    ew_buf_puts(&b, "}");
    printf("%s\n", b.data);
    /* the operator's chain: the same, without the user's id twice */
    ew_buf det;
    ew_buf_init(&det);
    ew_buf_putc(&det, '{');
    if (!b.oom) ew_buf_puts(&det, strstr(b.data, ",\"roles\":") + 1);
    status = det.oom || b.oom ? ewctl_fail(1, "out of memory")
                              : ewctl_oplog(oplog, "user.role_changed", f.user_id, det.data);
    ew_buf_release(&det);
    ew_buf_release(&b);
out:
    ew_event_unref(ev);
    ewctl_bus_close(&eb);
    ew_audit_close(oplog);
    ew_store_close(events);
    ew_store_close(db);
    ew_config_free(cfg);
    free(f.roles);
    ew_arena_release(&ar);
    return status;
}
