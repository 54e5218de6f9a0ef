/* ewctl: what several commands share. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ewctl.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/config.h"

int ewctl_open_store(ew_store **st)
{
    return ewctl_open_store_or_make(st, false);
}

int ewctl_open_store_or_make(ew_store **st, bool make)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ew_config_new(&cfg, &err);
    if (rc == 0) rc = ew_config_from_env(cfg, &err);
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
        rc = ew_config_new(&own, &err);
        if (rc == 0) rc = ew_config_from_env(own, &err);
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
