/* ewctl schema — the event catalog: list the types, print one type's JSON Schema. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "eventwire/catalog.h"

static const char usage[] =
    "usage: ewctl schema list\n"
    "       ewctl schema show TYPE [--version N] [--envelope]\n"
    "\n"
    "list   prints every event type of the catalog, one per line: type, version, whether it is\n"
    "       the latest version, the number of fields, and its description (tab-separated).\n"
    "show   prints the JSON Schema (draft 2020-12) of TYPE's data; --envelope prints the schema\n"
    "       of a whole CloudEvent of that type instead; --version N picks an older version.\n";

int ewctl_schema(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc < 1) {
        fputs(usage, stderr);
        return 2;
    }
    if (strcmp(argv[0], "list") == 0) {
        if (argc > 1) return ewctl_fail(2, "schema list takes no arguments");
        for (size_t i = 0; i < ew_catalog_count(); i++) {
            const ew_type_info *t = ew_catalog_at(i);
            printf("%s\t%d\t%s\t%zu\t%s\n", t->type, t->version, t->latest ? "latest" : "old",
                   t->nfields, t->doc);
        }
        return 0;
    }
    if (strcmp(argv[0], "show") != 0) return ewctl_fail(2, "unknown schema command '%s'", argv[0]);
    const char *type = NULL;
    int version = 0, envelope = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--envelope") == 0) {
            envelope = 1;
        } else if (strcmp(argv[i], "--version") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1000000)
                return ewctl_fail(2, "--version takes a positive number, not '%s'", argv[i]);
            version = (int)v;
        } else if (argv[i][0] == '-') {
            return ewctl_fail(2, "unknown option '%s'", argv[i]);
        } else if (!type) {
            type = argv[i];
        } else {
            return ewctl_fail(2, "schema show takes one type");
        }
    }
    if (!type) return ewctl_fail(2, "schema show needs a TYPE (ewctl schema list shows them)");
    const ew_type_info *t = ew_catalog_find(type, version);
    if (!t) {
        if (ew_catalog_find(type, 0)) return ewctl_fail(1, "%s has no version %d", type, version);
        return ewctl_fail(1, "unknown event type '%s' (ewctl schema list shows them)", type);
    }
    char *s;
    ew_error err = {0};
    if ((envelope ? ew_type_envelope_schema(t, &s, &err) : ew_type_schema(t, &s, &err)) != 0)
        return ewctl_fail(1, "%s", err.msg);
    fputs(s, stdout);
    free(s);
    return 0;
}
