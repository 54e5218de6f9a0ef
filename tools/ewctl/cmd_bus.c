/* ewctl publish and ewctl tail — the bus from the command line, on whatever backend the
 * environment configures (EVENT_BUS_TYPE and its settings). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bus/backend.h"
#include "core/json.h"
#include "ewctl.h"
#include "security/keyring.h"
#include "eventwire/audit.h"
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/dlq.h"
#include "eventwire/id.h"
#include "eventwire/store.h"

static const char publish_usage[] =
    "usage: ewctl publish TYPE --subject S --data JSON|@FILE|- [--as SERVICE]\n"
    "                          [--source NAME] [--correlation-id ID] [--causation-id ID]\n"
    "\n"
    "Builds an event of TYPE (the latest version) from its data, validated against the catalog,\n"
    "publishes it on the bus the environment configures (EVENT_BUS_TYPE, ...) and prints its\n"
    "id once the backend has it. --data @FILE reads the data from a file, - from standard input.\n"
    "The event is authenticated (EVENT_AUTH, docs/bus-auth.md) as ewctl itself, which the\n"
    "default policy lets publish nothing sensitive, or with --as SERVICE as that service, with\n"
    "its key file (EVENT_KEY_DIR/SERVICE.bus.key), which must exist, recorded first in the\n"
    "operator's audit chain in the event store (ewctl audit list --service ewctl). The source\n"
    "is that identity (another --source is refused by the policy check). A publish the policy\n"
    "does not allow fails (EW_EPERM) and nothing is sent. With EVENT_AUTH=off --source\n"
    "defaults to SERVICE_NAME, or \"ewctl\" when that is unset.\n";

static const char tail_usage[] =
    "usage: ewctl tail [PATTERN] [--group G] [--from-beginning] [--count N] [--brief]\n"
    "                  [--decrypt]\n"
    "\n"
    "Prints the events whose type matches PATTERN (default #, everything) as CloudEvents JSON,\n"
    "one per line, as they arrive on the bus the environment configures. Without --group it\n"
    "reads as a group of its own, so it takes nothing from the services' groups, and removes\n"
    "that group from the backend when it ends. A new group\n"
    "starts with events published from now on; --from-beginning starts it with the oldest event\n"
    "the backend still holds. Stops after N events with --count, or on Ctrl-C. --brief prints\n"
    "one short line per event instead: time, type, source, subject and correlation id.\n"
    "Personal and secret fields are printed as the wire carries them, encrypted\n"
    "(\"ewenc1.SUBJECT.…\"); --decrypt prints them in clear, with the key-encryption key\n"
    "(EVENT_ENCRYPTION_KEY_FILE), and fails when that cannot be read; it is recorded first in\n"
    "the operator's audit chain in the event store (ewctl audit list --service ewctl).\n"
    "An event it cannot take (undecodable, too large, invalid) gets one line on stderr: its id\n"
    "and type when known, the reason, where it came from and where it went.\n";

/* Reads all of a file (or standard input for "-"): malloc'ed, NUL-terminated. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    if (f != stdin) fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

int ewctl_publish(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(publish_usage, stdout);
        return 0;
    }
    const char *type = NULL, *data = NULL, *as = NULL;
    ew_event_attrs a = {0};
    for (int i = 0; i < argc; i++) {
        const char *opt = argv[i];
        const char **dst = strcmp(opt, "--subject") == 0          ? &a.subject
                           : strcmp(opt, "--data") == 0           ? &data
                           : strcmp(opt, "--source") == 0         ? &a.source
                           : strcmp(opt, "--correlation-id") == 0 ? &a.correlation_id
                           : strcmp(opt, "--causation-id") == 0   ? &a.causation_id
                           : strcmp(opt, "--as") == 0             ? &as
                                                                  : NULL;
        if (dst) {
            if (i + 1 >= argc) return ewctl_fail(2, "%s needs a value", opt);
            *dst = argv[++i];
        } else if (opt[0] == '-') {
            return ewctl_fail(2, "unknown option '%s'", opt);
        } else if (!type) {
            type = opt;
        } else {
            return ewctl_fail(2, "publish takes one TYPE");
        }
    }
    if (!type || !data) {
        fputs(publish_usage, stderr);
        return 2;
    }
    if (!ew_catalog_find(type, 0))
        return ewctl_fail(1, "unknown event type '%s' (ewctl schema list shows them)", type);
    char *owned = NULL;
    size_t len = strlen(data);
    if (data[0] == '@' || strcmp(data, "-") == 0) {
        const char *path = data[0] == '@' ? data + 1 : "-";
        owned = read_all(path, &len);
        if (!owned) return ewctl_fail(1, "cannot read %s: %s", path, strerror(errno));
        data = owned;
    }
    const char *auth_mode = getenv("EVENT_AUTH");
    bool off = auth_mode && strcmp(auth_mode, "off") == 0;
    if (!a.source)
        a.source = as                       ? as
                   : !off                   ? EWCTL_SERVICE
                   : getenv("SERVICE_NAME") ? getenv("SERVICE_NAME")
                                            : EWCTL_SERVICE;
    ew_event *ev = NULL;
    ew_error err = {0};
    int rc = ew_event_from_json(&ev, type, data, len, &a, &err);
    free(owned);
    if (rc) return ewctl_fail(1, "%s: %s", ew_err_name(rc), err.msg);
    /* Publishing as a service, with its key, is recorded in the operator's chain (by the event's
     * id and type: its data may be personal) before the event leaves; a publish that cannot be
     * recorded is not made. */
    ew_store *st = NULL;
    ew_audit *oplog = NULL;
    if (as && (ewctl_open_store(&st) || ewctl_oplog_open(st, &oplog))) {
        ew_store_close(st);
        ew_event_unref(ev);
        return 1;
    }
    ewctl_bus b;
    if ((rc = ewctl_bus_open(&b, NULL, as, NULL, true))) {
        ew_audit_close(oplog);
        ew_store_close(st);
        ew_event_unref(ev);
        return rc;
    }
    if (oplog) {
        char subject[160], details[200];
        snprintf(subject, sizeof subject, "service:%s", as);
        snprintf(details, sizeof details, "{\"event_id\":\"%s\",\"type\":\"%s\"}", ew_event_id(ev),
                 ew_event_type(ev));
        if ((rc = ew_audit_append(oplog, "operator", "bus.published_as", subject, details, NULL,
                                  &err)))
            ewctl_fail(1, "not published: the audit chain cannot record it: %s", err.msg);
    }
    if (!rc) {
        rc = ew_bus_publish(b.bus, ev, &err);
        if (rc == 0)
            printf("%s\n", ew_event_id(ev));
        else
            ewctl_fail(1, "publish failed: %s: %s", ew_err_name(rc), err.msg);
    }
    ew_event_unref(ev);
    ewctl_bus_close(&b);
    ew_audit_close(oplog);
    ew_store_close(st);
    return rc ? 1 : 0;
}

typedef struct tail {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long printed, count; /* count 0: no limit */
    bool brief;
} tail;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* --brief: "12:00:01.123  user.registered  auth-service  <subject>  corr=<8 chars>" */
static int brief_line(const ew_event *ev, char **out, size_t *n)
{
    char t[EW_TIME_LEN + 1] = "";
    ew_time_format(ew_event_time_us(ev), t);
    const char *subject = ew_event_subject(ev), *corr = ew_event_correlation_id(ev);
    int len =
        asprintf(out, "%.12s  %-32s %-22s %s  corr=%.8s", t[0] ? t + 11 : "", ew_event_type(ev),
                 ew_event_source(ev), subject ? subject : "-", corr ? corr : "-");
    if (len < 0) return -1;
    *n = (size_t)len;
    return 0;
}

static ew_handler_result print_event(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    tail *t = ud;
    char *json;
    size_t n;
    if (t->brief ? brief_line(ev, &json, &n) != 0 : ew_event_encode(ev, &json, &n, NULL) != 0)
        return EW_HANDLER_RETRY;
    pthread_mutex_lock(&t->mu);
    if (t->count == 0 || t->printed < t->count) {
        fwrite(json, 1, n, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        t->printed++;
    }
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    free(json);
    return EW_HANDLER_OK;
}

/* The tail's dead letter sink: every event the tail could not take gets one line on stderr —
 * id when known, type, reason, where it came from and where it went — once it is kept where
 * the line says (a tail of its own group keeps nothing: the services' groups have their own
 * copies; with --group, the store's dead letter queue when the store opens). Called on the
 * bus's threads. */
typedef struct tail_dlq {
    ew_dlq_sink keep; /* .ops NULL: kept nowhere */
    ew_store *st;
    char where[200];
} tail_dlq;

static int tail_dlq_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    tail_dlq *d = self;
    int rc = d->keep.ops ? d->keep.ops->put(d->keep.self, dl, err) : 0;
    if (rc) return rc; /* the bus tries again; the line comes once it is kept */
    const char *id = dl->event_id ? dl->event_id : dl->event ? ew_event_id(dl->event) : NULL;
    const char *type = dl->event_type ? dl->event_type
                       : dl->event    ? ew_event_type(dl->event)
                                      : NULL;
    fprintf(stderr, "ewctl tail: could not take id=%s type=%s: %s; from %s; %s\n", id ? id : "-",
            type ? type : "-", dl->error ? dl->error : "-",
            dl->transport ? dl->transport : "handler", d->where);
    return 0;
}

static const ew_dlq_sink_ops tail_dlq_ops = {.version = 1, .put = tail_dlq_put};

/* Where the tail's dead letters go: nowhere for its own group, the store's queue for a real
 * group (in memory, lost at exit, when the store does not open). */
static void tail_dlq_init(tail_dlq *d, const char *group, bool own, ew_memdlq *mem)
{
    if (own) {
        snprintf(d->where, sizeof d->where,
                 "dropped: the tail's own group keeps nothing (the services' groups have their "
                 "own copies)");
        return;
    }
    ew_config *cfg = NULL;
    if (ewctl_config_load(&cfg, NULL) == 0 &&
        ew_store_open(&d->st, &(ew_store_options){.config = cfg}, NULL) == 0) {
        d->keep = ew_store_dlq_sink(d->st);
        snprintf(d->where, sizeof d->where,
                 "kept in event_store.dead_letter_queue (ewctl dlq list --group %s)", group);
    } else {
        d->keep = ew_memdlq_sink(mem);
        snprintf(d->where, sizeof d->where,
                 "kept in memory only, lost when ewctl exits (the event store did not open)");
    }
    ew_config_free(cfg);
}

int ewctl_tail(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(tail_usage, stdout);
        return 0;
    }
    const char *pattern = "#", *group = NULL;
    bool from_beginning = false, decrypt = false;
    tail t = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--group") == 0 && i + 1 < argc) {
            group = argv[++i];
        } else if (strcmp(argv[i], "--from-beginning") == 0) {
            from_beginning = true;
        } else if (strcmp(argv[i], "--brief") == 0) {
            t.brief = true;
        } else if (strcmp(argv[i], "--decrypt") == 0) {
            decrypt = true;
        } else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            char *end;
            t.count = strtol(argv[++i], &end, 10);
            if (*end || t.count < 1) return ewctl_fail(2, "--count takes a positive number");
        } else if (argv[i][0] == '-') {
            return ewctl_fail(2, "unknown option '%s'", argv[i]);
        } else if (npos++ == 0) {
            pattern = argv[i];
        } else {
            return ewctl_fail(2, "tail takes one PATTERN");
        }
    }
    if (!ew_pattern_valid(pattern))
        return ewctl_fail(2, "'%s' is not a pattern (user.registered, user.*, user.#, #)", pattern);
    char own_group[64];
    bool own = !group; /* a group of its own goes when the tail ends */
    if (!group) {
        char id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        snprintf(own_group, sizeof own_group, "ewctl-tail-%.12s", id + 24);
        group = own_group;
    }
    ew_memdlq *mem = NULL;
    tail_dlq dlq = {0};
    ew_error err = {0};
    if (ew_memdlq_new(&mem, &err)) return ewctl_fail(1, "%s", err.msg);
    tail_dlq_init(&dlq, group, own, mem);
    ewctl_bus b;
    if (ewctl_bus_open(&b, NULL, NULL, &(ew_bus_options){.dlq = {&tail_dlq_ops, &dlq}}, false)) {
        ew_store_close(dlq.st);
        ew_memdlq_free(mem);
        return 1;
    }
    ew_bus *bus = b.bus;
    /* Ciphertext unless asked, and then only with the key file. */
    ew__keyring *keys = ew__bus_keyring(bus);
    if (!decrypt)
        ew__bus_keep_encrypted(bus);
    else if (keys && ew__keyring_load(keys, &err)) {
        ewctl_bus_close(&b);
        ew_store_close(dlq.st);
        ew_memdlq_free(mem);
        return ewctl_fail(1, "--decrypt: %s", err.msg);
    }
    /* Personal data read in clear is recorded in the operator's chain first: what was read,
     * from where; a tail that cannot be recorded decrypts nothing. */
    ew_store *ost = NULL;
    ew_audit *oplog = NULL;
    int rc = 0;
    if (decrypt && keys) {
        ew_buf d;
        ew_buf_init(&d);
        ew_buf_puts(&d, "{\"pattern\":");
        ew_json_write_string(&d, pattern, strlen(pattern));
        if (!own) ewctl_put_str(&d, "group", group);
        ew_buf_putc(&d, '}');
        rc = ewctl_open_store(&ost) || ewctl_oplog_open(ost, &oplog);
        if (!rc && (rc = d.oom ? ew_error_set(&err, EW_ENOMEM, "out of memory")
                               : ew_audit_append(oplog, "operator", "events.decrypted", NULL,
                                                 d.data, NULL, &err)))
            ewctl_fail(1, "--decrypt: the audit chain cannot record it: %s", err.msg);
        ew_buf_release(&d);
    }
    ew_subscribe_opts so = {
        .group = group, .name = "tail", .from_beginning = from_beginning, .ephemeral = own};
    if (rc || ew_bus_subscribe(bus, pattern, print_event, &t, &so, &err) ||
        ew_bus_start(bus, &err)) {
        ewctl_bus_close(&b);
        ew_audit_close(oplog);
        ew_store_close(ost);
        ew_store_close(dlq.st);
        ew_memdlq_free(mem);
        return rc ? 1 : ewctl_fail(1, "%s", err.msg);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_mutex_lock(&t.mu);
    while (!interrupted && (t.count == 0 || t.printed < t.count)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&t.cv, &t.mu, &ts);
    }
    pthread_mutex_unlock(&t.mu);
    ewctl_bus_close(&b);
    ew_audit_close(oplog);
    ew_store_close(ost);
    ew_store_close(dlq.st);
    ew_memdlq_free(mem);
    return 0;
}
