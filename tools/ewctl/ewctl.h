/* ewctl — the command-line tool: one function per command, each taking the arguments after its
 * name and returning the process's exit status (0 ok, 1 failure, 2 usage). */
#ifndef EWCTL_H
#define EWCTL_H

#include <stdbool.h>
#include <stdio.h>
#include "core/buf.h"
#include "eventwire/audit.h"
#include "eventwire/bus.h"
#include "eventwire/saga.h"
#include "eventwire/store.h"

typedef struct ewctl_cmd {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} ewctl_cmd;

int ewctl_schema(int argc, char **argv);
int ewctl_validate(int argc, char **argv);
int ewctl_config(int argc, char **argv);

/* The configuration every command reads: the library's settings, those every service reads
 * (SERVICE_DB_URL, ...) and ewctl's own (ewctl_setting), from the environment. NULL and the
 * error when the environment holds a bad value. Caller frees. */
int ewctl_config_load(ew_config **out, ew_error *err);

/* ewctl's own settings: i < n, then NULL. Static. */
const ew_setting *ewctl_setting(int i);

/* Says that name is not a service of the system, listing those that are; returns 2. */
int ewctl_unknown_service(const char *name);

int ewctl_publish(int argc, char **argv);
int ewctl_tail(int argc, char **argv);
int ewctl_dlq(int argc, char **argv);
int ewctl_store(int argc, char **argv);
int ewctl_saga(int argc, char **argv);
int ewctl_audit(int argc, char **argv);
int ewctl_up(int argc, char **argv);
int ewctl_down(int argc, char **argv);
int ewctl_console(int argc, char **argv);
int ewctl_metrics(int argc, char **argv);
int ewctl_export(int argc, char **argv);
int ewctl_user(int argc, char **argv);
int ewctl_keys(int argc, char **argv);

/* Is argv[i] a request for help? */
int ewctl_wants_help(int argc, char **argv);

/* Prints "ewctl: " and the message on stderr; returns status. */
int ewctl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens the event store the environment names (EVENT_STORE_URL, ...) into *st: 0, or 1 after
 * saying why on stderr (common.c). */
int ewctl_open_store(ew_store **st);

/* The same, making the store when there is none (a command that runs on, like console). */
int ewctl_open_store_or_make(ew_store **st, bool make);

/* --limit N: 0, or 2 after saying what it takes (common.c). */
int ewctl_parse_limit(const char *v, size_t *out);

/* Warns on stderr when type is not a catalog type: a filter that will match nothing of ours. */
void ewctl_check_type(const char *type);

/* Appends ,"key":v to b, v as a JSON string, or null when it is NULL (common.c). */
void ewctl_put_str(ew_buf *b, const char *key, const char *v);

/* A dead letter as JSON (dlq list/show, the console): the row's fields, its event when
 * with_event (cmd_store.c). */
void ewctl_dlq_put_row(ew_buf *b, const ew_dlq_row *r, int with_event);

/* Hands a pending (or retried) dead letter back to its handler through bus, as dlq retry does:
 * marked retried, then redelivered (cmd_store.c). */
int ewctl_dlq_retry_one(ew_store *st, ew_bus *bus, const ew_dlq_row *row, ew_error *err);

/* Records a dead letter's retry or discard (action "dlq.retried", "dlq.discarded") in the
 * operator's chain: the dead letter's id as subject; its event's id and type, handler and group
 * as details. 0, or 1 after saying why (cmd_store.c). */
int ewctl_dlq_audit(ew_audit *a, const char *action, const ew_dlq_row *row);

/* Appends "groups":[{"group":G,"lag":N,"known":true},...],"groups_from":F to b: the consumer
 * lag of the groups named in wanted[0..nwanted) (F "arguments"; one the backend does not know
 * as "lag":null,"known":false), else of every group the backend lists (F "backend"), else of
 * the groups the system makes that the backend knows: the five services' and saga.TYPE for each
 * saga type in st (F "services"). 0, or the error of the backend or the store (cmd_metrics.c). */
int ewctl_put_group_lags(ew_bus *bus, ew_store *st, char *const *wanted, size_t nwanted, ew_buf *b,
                         ew_error *err);

/* A bus for a command, and what authenticates it (common.c). */
typedef struct ewctl_bus {
    ew_bus *bus;
    ew_evauth *auth; /* NULL with EVENT_AUTH=off */
} ewctl_bus;

/* Opens the bus that cfg (NULL: the environment) configures, with opts' other members (may be
 * NULL), authenticated as the service `as` with that service's key file, which must exist
 * (--as), or as ewctl itself (its own key, made at first use) when as is NULL; SERVICE_NAME is
 * that identity, unless EVENT_AUTH=off. Starts it when start. 0, or 1 after saying why on
 * stderr. */
int ewctl_bus_open(ewctl_bus *b, const ew_config *cfg, const char *as, const ew_bus_options *opts,
                   bool start);
void ewctl_bus_close(ewctl_bus *b);

/* The identity ewctl publishes as without --as. */
#define EWCTL_SERVICE "ewctl"

/* The operator's audit chain, "ewctl", in the event store st (borrowed until ew_audit_close),
 * signed with KEY_DIR/ewctl.audit.key (made 0600 at first use; KEY_DIR as the services find
 * theirs: AUTH_KEY_DIR, else keys beside the SQLite event store): 0, or 1 after saying why on
 * stderr (oplog.c). A command opens it before it acts, so that one it cannot record does not
 * act. */
int ewctl_oplog_open(ew_store *st, ew_audit **out);

/* Appends what the operator did (actor "operator"): action, subject by id (may be NULL), details
 * a JSON object of ids and figures (may be NULL), never personal data. 0, or 1 after saying on
 * stderr that it was done but not recorded (oplog.c). */
int ewctl_oplog(ew_audit *a, const char *action, const char *subject, const char *details);

/* A saga instance's fields as JSON, without the closing brace (cmd_saga.c). */
void ewctl_saga_put_info(ew_buf *b, const ew_saga_info *in);

/* One saga instance (by id, or by type and key) with its data and transitions, as saga show
 * prints it (cmd_saga.c). */
int ewctl_saga_show_json(ew_store *st, const char *id, const char *type, const char *key, ew_buf *b,
                         ew_error *err);

#endif
