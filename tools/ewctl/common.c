/* ewctl: what several commands share. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ewctl.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/config.h"
#include "svc_settings.h"

/* ewctl's own settings. */
static const ew_setting settings[] = {
    {"CONSOLE_TOKEN", "", "16 characters or more",
     "The operator token every API call of `ewctl console` needs (Authorization: Bearer); "
     "unset, the console makes a random one and prints it at start.",
     EW_SETTING_SECRET, 0, 0},
};

const ew_setting *ewctl_setting(int i)
{
    return i >= 0 && (size_t)i < sizeof settings / sizeof settings[0] ? &settings[i] : NULL;
}

int ewctl_config_load(ew_config **out, ew_error *err)
{
    ew_config *cfg = NULL;
    int rc = ew_config_new(&cfg, err);
    if (!rc) rc = ew_config_define(cfg, settings, sizeof settings / sizeof settings[0], err);
    if (!rc) rc = svc_settings_define(cfg, NULL, err);
    if (!rc) rc = ew_config_from_env(cfg, err);
    if (rc) {
        ew_config_free(cfg);
        cfg = NULL;
    }
    *out = cfg;
    return rc;
}

int ewctl_open_store(ew_store **st)
{
    return ewctl_open_store_or_make(st, false);
}

int ewctl_open_store_or_make(ew_store **st, bool make)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ewctl_config_load(&cfg, &err);
    /* a command that reads the store must not make an empty one where there is none */
    const char *url = rc ? NULL : ew_config_get(cfg, "EVENT_STORE_URL");
    if (!make && url && strncmp(url, "sqlite:", 7) == 0 && access(url + 7, F_OK) != 0) {
        ewctl_fail(1, "no event store at %s — run where `ewctl up` ran, or set EVENT_STORE_URL",
                   url + 7);
        ew_config_free(cfg);
        return 1;
    }
    if (rc == 0) rc = ew_store_open(st, &(ew_store_options){.config = cfg}, &err);
    ew_config_free(cfg);
    if (rc) return ewctl_fail(1, "cannot open the event store: %s", err.msg);
    return 0;
}

void ewctl_put_str(ew_buf *b, const char *key, const char *v)
{
    ew_buf_printf(b, ",\"%s\":", key);
    if (v)
        ew_json_write_string(b, v, strlen(v));
    else
        ew_buf_puts(b, "null");
}

int ewctl_parse_limit(const char *v, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || n < 1 || n > 1000000)
        return ewctl_fail(2, "--limit takes a number from 1 to 1000000, not '%s'", v);
    *out = (size_t)n;
    return 0;
}

void ewctl_check_type(const char *type)
{
    if (!type || ew_catalog_find(type, 0)) return;
    fprintf(stderr,
            "ewctl: warning: '%s' is not an event type of the catalog (`ewctl schema` lists "
            "them); only foreign events can match it\n",
            type);
}

int ewctl_bus_open(ewctl_bus *b, const ew_config *cfg, const char *as, const ew_bus_options *opts,
                   bool start)
{
    b->bus = NULL;
    b->auth = NULL;
    ew_config *own = NULL;
    ew_error err = {0};
    int rc = 0;
    if (!cfg) {
        rc = ewctl_config_load(&own, &err);
    } else {
        rc = ew_config_dup(&own, cfg, &err);
    }
    if (rc) {
        ew_config_free(own);
        return ewctl_fail(1, "%s", err.msg);
    }
    bool off = strcmp(ew_config_get(own, "EVENT_AUTH"), "off") == 0;
    if (as && off) {
        ew_config_free(own);
        return ewctl_fail(2, "--as %s: EVENT_AUTH=off, nothing to authenticate with", as);
    }
    if (!off) {
        const char *who = as ? as : EWCTL_SERVICE;
        rc = ew_config_set(own, "SERVICE_NAME", who, &err);
        ew_evauth_options ao = {.config = own, .service = who, .existing_key_only = as != NULL};
        if (rc == 0) rc = ew_evauth_open(&b->auth, &ao, &err);
        if (rc) {
            ew_config_free(own);
            return ewctl_fail(1, "cannot authenticate as %s: %s", who, err.msg);
        }
    }
    ew_bus_options o = opts ? *opts : (ew_bus_options){0};
    o.config = own;
    o.auth = b->auth;
    rc = ew_bus_open(&b->bus, &o, &err);
    ew_config_free(own);
    if (rc == 0 && start) rc = ew_bus_start(b->bus, &err);
    if (rc) {
        ewctl_bus_close(b);
        return ewctl_fail(1, "cannot open the bus: %s", err.msg);
    }
    return 0;
}

void ewctl_bus_close(ewctl_bus *b)
{
    if (b->bus) ew_bus_close(b->bus);
    ew_evauth_close(b->auth);
    b->bus = NULL;
    b->auth = NULL;
}

int ewctl_unknown_service(const char *name)
{
    fprintf(stderr, "ewctl: no service '%s'; the services are:", name);
    for (int i = 0; svc_system_name(i); i++)
        fprintf(stderr, " %s", svc_system_name(i));
    fputc('\n', stderr);
    return 2;
}
