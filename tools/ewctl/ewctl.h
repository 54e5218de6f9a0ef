/* ewctl — the command-line tool: one function per command, each taking the arguments after its
 * name and returning the process's exit status (0 ok, 1 failure, 2 usage). */
#ifndef EWCTL_H
#define EWCTL_H

#include <stdio.h>
#include "core/buf.h"
#include "eventwire/store.h"

typedef struct ewctl_cmd {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} ewctl_cmd;

int ewctl_schema(int argc, char **argv);
int ewctl_validate(int argc, char **argv);
int ewctl_config(int argc, char **argv);
int ewctl_publish(int argc, char **argv);
int ewctl_tail(int argc, char **argv);
int ewctl_dlq(int argc, char **argv);
int ewctl_store(int argc, char **argv);
int ewctl_saga(int argc, char **argv);
int ewctl_up(int argc, char **argv);
int ewctl_down(int argc, char **argv);
int ewctl_user(int argc, char **argv);

/* Is argv[i] a request for help? */
int ewctl_wants_help(int argc, char **argv);

/* Prints "ewctl: " and the message on stderr; returns status. */
int ewctl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens the event store the environment names (EVENT_STORE_URL, ...) into *st: 0, or 1 after
 * saying why on stderr (common.c). */
int ewctl_open_store(ew_store **st);

/* Appends ,"key":v to b, v as a JSON string, or null when it is NULL (common.c). */
void ewctl_put_str(ew_buf *b, const char *key, const char *v);

#endif
