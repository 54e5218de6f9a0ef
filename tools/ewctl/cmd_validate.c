/* ewctl validate — decodes events, one JSON document per line, and says what is wrong with each
 * bad one. The same strict decoder every backend uses reads them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "core/json.h"
#include "eventwire/config.h"
#include "eventwire/event.h"

static const char usage[] =
    "usage: ewctl validate [--quiet] [--json] FILE|-\n"
    "\n"
    "Reads CloudEvents in structured JSON, one per line, from FILE or standard input (-), and\n"
    "decodes each as a subscriber would: envelope, catalog type and version, data fields.\n"
    "Prints one line per event: 'line N: ok TYPE vVERSION ID' or 'line N: CODE: what is wrong'.\n"
    "--quiet prints only the bad ones; --json prints each result as a JSON object instead.\n"
    "Blank lines are skipped. EVENT_MAX_BYTES sets the size limit. Exit status: 0 when every\n"
    "event is valid, 1 when any is not, 2 for a usage error or an unreadable file.\n";

static void print_result(int json, size_t line, int rc, const ew_event *ev, const ew_error *err)
{
    if (!json) {
        if (rc == 0)
            printf("line %zu: ok %s v%d %s\n", line, ew_event_type(ev), ew_event_version(ev),
                   ew_event_id(ev));
        else
            printf("line %zu: %s: %s\n", line, ew_err_name(rc), err->msg);
        return;
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"line\":%zu,\"ok\":%s", line, rc == 0 ? "true" : "false");
    if (rc == 0) {
        ew_buf_puts(&b, ",\"type\":");
        ew_json_write_string(&b, ew_event_type(ev), strlen(ew_event_type(ev)));
        ew_buf_printf(&b, ",\"version\":%d,\"id\":", ew_event_version(ev));
        ew_json_write_string(&b, ew_event_id(ev), strlen(ew_event_id(ev)));
    } else {
        ew_buf_printf(&b, ",\"error\":\"%s\",\"message\":", ew_err_name(rc));
        ew_json_write_string(&b, err->msg, strlen(err->msg));
    }
    ew_buf_puts(&b, "}\n");
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
}

int ewctl_validate(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *path = NULL;
    int quiet = 0, json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return ewctl_fail(2, "unknown option '%s'", argv[i]);
        else if (!path)
            path = argv[i];
        else
            return ewctl_fail(2, "validate takes one FILE");
    }
    if (!path) {
        fputs(usage, stderr);
        return 2;
    }
    ew_config *cfg = NULL;
    ew_error err = {0};
    if (ewctl_config_load(&cfg, &err)) {
        ew_config_free(cfg);
        return ewctl_fail(2, "%s", err.msg);
    }
    ew_decode_opts opts = {.max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES")};
    ew_config_free(cfg);

    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) return ewctl_fail(2, "cannot open %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lineno = 0, total = 0, bad = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (strspn(line, " \t") == (size_t)n) continue;
        total++;
        ew_event *ev = NULL;
        int rc = ew_event_decode(&ev, line, (size_t)n, &opts, &err);
        if (rc) bad++;
        if (rc || !quiet) print_result(json, lineno, rc, ev, &err);
        ew_event_unref(ev);
    }
    int read_error = ferror(f);
    free(line);
    if (f != stdin) fclose(f);
    if (read_error) return ewctl_fail(2, "error reading %s", path);
    fprintf(stderr, "ewctl: %zu event%s, %zu valid, %zu invalid\n", total, total == 1 ? "" : "s",
            total - bad, bad);
    return bad ? 1 : 0;
}
