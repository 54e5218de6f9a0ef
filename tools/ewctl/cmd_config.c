/* ewctl config — the settings with their defaults, what they may be, and their values in this
 * environment: the library's and ewctl's own, or those of a service; a bad value in the
 * environment is reported as the library would refuse it. --markdown prints them all, in the
 * sections of docs/configuration.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "eventwire/config.h"
#include "svc_settings.h"

static const char usage[] =
    "usage: ewctl config [--service NAME] [--markdown]\n"
    "\n"
    "Lists the settings read from the environment: name, value in force here (passwords and\n"
    "secrets as ***), default, allowed values and meaning (tab-separated). Without --service:\n"
    "the library's settings, which every program linking libeventwire reads, and ewctl's own.\n"
    "--service NAME: the settings of the service NAME (auth-service, user-service,\n"
    "notification-service, analytics-service, export-service): those every service reads, then\n"
    "its own, as `NAME --settings` prints them. --markdown prints every table of\n"
    "docs/configuration.md instead. Exit status 1 when a variable in the environment is invalid,\n"
    "2 for an unknown argument or service.\n";

static void row(const ew_config *cfg, const ew_setting *e, bool md)
{
    if (md) {
        printf("| `%s` | `%s` | `%s` | %s |\n", e->name, e->def, e->allowed, e->doc);
        return;
    }
    char shown[4096];
    printf("%s\t%s\t%s\t%s\t%s\n", e->name, ew_config_shown(cfg, e->name, shown, sizeof shown),
           e->def, e->allowed, e->doc);
}

static void table(const ew_config *cfg, const ew_setting *t, size_t n, bool md)
{
    for (size_t i = 0; i < n; i++)
        row(cfg, &t[i], md);
}

static void heading(const char *title)
{
    printf("\n### %s\n\n| variable | default | allowed | meaning |\n|---|---|---|---|\n", title);
}

/* Every table, as docs/configuration.md holds them. */
static void markdown(const ew_config *cfg)
{
    printf("### The library (every program)\n\n"
           "| variable | default | allowed | meaning |\n|---|---|---|---|\n");
    for (int i = 0; ew_config_describe(i); i++)
        row(cfg, ew_config_describe(i), true);
    heading("ewctl");
    for (int i = 0; ewctl_setting(i); i++)
        row(cfg, ewctl_setting(i), true);
    const svc_settings *common = svc_settings_common();
    heading("Every service");
    table(cfg, common->own, common->nown, true);
    for (int i = 0; svc_settings_at(i); i++) {
        const svc_settings *s = svc_settings_at(i);
        if (!s->nown) continue;
        heading(s->service);
        table(cfg, s->own, s->nown, true);
    }
}

int ewctl_config(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    bool md = false;
    const char *service = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--markdown"))
            md = true;
        else if (!strcmp(argv[i], "--service") && i + 1 < argc)
            service = argv[++i];
        else if (!strcmp(argv[i], "--service"))
            return ewctl_fail(2, "--service needs a service's name");
        else
            return ewctl_fail(2, "unknown argument '%s'", argv[i]);
    }
    if (md && service) return ewctl_fail(2, "--markdown prints every table: no --service with it");
    const svc_settings *own = service ? svc_settings_find(service) : NULL;
    if (service && !own) return ewctl_unknown_service(service);
    /* Everything defined, so that every value is checked and shown; the environment's values
     * are read, but a bad one is reported after the list. */
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err)) return ewctl_fail(1, "%s", err.msg);
    int rc = svc_settings_define(cfg, service, &err);
    for (int i = 0; !rc && !service && ewctl_setting(i); i++)
        rc = ew_config_define(cfg, ewctl_setting(i), 1, &err);
    if (rc) {
        ew_config_free(cfg);
        return ewctl_fail(1, "%s", err.msg);
    }
    int bad = ew_config_from_env(cfg, &err);
    if (md) {
        markdown(cfg);
    } else if (own) {
        const svc_settings *common = svc_settings_common();
        table(cfg, common->own, common->nown, false);
        table(cfg, own->own, own->nown, false);
    } else {
        for (int i = 0; ew_config_describe(i); i++)
            row(cfg, ew_config_describe(i), false);
        for (int i = 0; ewctl_setting(i); i++)
            row(cfg, ewctl_setting(i), false);
    }
    ew_config_free(cfg);
    if (bad) return ewctl_fail(1, "%s", err.msg);
    return 0;
}
