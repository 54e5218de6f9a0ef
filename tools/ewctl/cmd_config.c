/* ewctl config — every setting with its default, what it may be, and its value in this
 * environment; a bad value in the environment is reported as the library would refuse it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "eventwire/config.h"

static const char usage[] =
    "usage: ewctl config [--markdown]\n"
    "\n"
    "Lists every setting eventwire reads from the environment: name, value in force here\n"
    "(passwords and secrets as ***), default, allowed values and meaning (tab-separated).\n"
    "--markdown prints the table of docs/configuration.md. Exit status 1 when a variable in\n"
    "the environment is invalid.\n";

int ewctl_config(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    int md = argc == 1 && strcmp(argv[0], "--markdown") == 0;
    if (argc > 0 && !md) return ewctl_fail(2, "unknown argument '%s'", argv[0]);
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err)) return ewctl_fail(1, "%s", err.msg);
    int bad = ew_config_from_env(cfg, &err);
    if (md) {
        printf("| variable | default | allowed | meaning |\n|---|---|---|---|\n");
        for (int i = 0; ew_config_describe(i); i++) {
            const ew_config_entry *e = ew_config_describe(i);
            printf("| `%s` | `%s` | `%s` | %s |\n", e->name, e->def, e->allowed, e->doc);
        }
    } else {
        for (int i = 0; ew_config_describe(i); i++) {
            const ew_config_entry *e = ew_config_describe(i);
            char shown[4096];
            printf("%s\t%s\t%s\t%s\t%s\n", e->name,
                   ew_config_shown(cfg, e->name, shown, sizeof shown), e->def, e->allowed, e->doc);
        }
    }
    ew_config_free(cfg);
    if (bad) return ewctl_fail(1, "%s", err.msg);
    return 0;
}
