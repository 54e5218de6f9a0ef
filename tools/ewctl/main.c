/* ewctl — the one command-line tool of eventwire: looks up the command and runs it. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "eventwire/version.h"
#include "ewctl.h"

static const ewctl_cmd commands[] = {
    {"schema", "list the event catalog, show an event type's JSON Schema", ewctl_schema},
    {"validate", "check events (JSON lines) and say what is wrong with each bad one",
     ewctl_validate},
    {"publish", "publish an event built from its data on the configured bus", ewctl_publish},
    {"tail", "print events as JSON lines as they arrive on the configured bus", ewctl_tail},
    {"dlq", "list, show, retry and discard dead letters in the event store", ewctl_dlq},
    {"store", "read a stream of the event store, replay events to a group, purge old ones",
     ewctl_store},
    {"saga", "list saga instances, show one and every transition it went through", ewctl_saga},
    {"audit", "list and verify the services' audit chains, checkpoint (sign) their heads",
     ewctl_audit},
    {"config", "list every setting, its default and its value here", ewctl_config},
    {"console", "serve a web console: live events, timelines, dead letters, sagas, charts",
     ewctl_console},
    {"up", "start the five services in the background, state under ./var", ewctl_up},
    {"down", "stop the services that ewctl up started", ewctl_down},
    {"user", "grant-admin / revoke-admin: change a user's roles as the operator", ewctl_user},
    {"keys", "list the key store's keys, rotate a service's bus key, print the bus policy",
     ewctl_keys},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

int ewctl_wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

int ewctl_fail(int status, const char *fmt, ...)
{
    va_list ap;
    fputs("ewctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ewctl COMMAND [ARGS...]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'ewctl COMMAND --help' tells more about each; 'ewctl --version' prints the "
               "version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("ewctl %s\n", ew_version());
        return 0;
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
    ewctl_fail(2, "unknown command '%s'", argv[1]);
    usage(stderr);
    return 2;
}
