/* eventwire — the configuration object: the library's table of settings, and those a program
 * defines beside them (ew_config_define), each checked when set. docs/configuration.md is printed
 * from these tables (`ewctl config --markdown`). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "eventwire/config.h"

/* The backends this build contains (CMakeLists.txt defines EW_HAVE_* for the broker clients it
 * found), so that EVENT_BUS_TYPE is refused at once for one it lacks. */
#ifdef EW_HAVE_REDIS
#define BUS_REDIS "|redis"
#else
#define BUS_REDIS ""
#endif
#ifdef EW_HAVE_KAFKA
#define BUS_KAFKA "|kafka"
#else
#define BUS_KAFKA ""
#endif
#ifdef EW_HAVE_RABBITMQ
#define BUS_RABBITMQ "|rabbitmq"
#else
#define BUS_RABBITMQ ""
#endif
#define BUS_TYPES "memory|sqlite" BUS_REDIS BUS_KAFKA BUS_RABBITMQ

static const ew_setting entries[] = {
    {"EVENT_BUS_TYPE", "sqlite", BUS_TYPES, "Which bus carries the events.", EW_SETTING_ENUM, 0, 0},
    {"SERVICE_NAME", "eventwire", "[a-z0-9._-]+",
     "This process's service: the source of the events it publishes and its default subscriber "
     "group.",
     EW_SETTING_NAME, 0, 0},
    {"EVENT_MAX_BYTES", "1048576", "1024..67108864",
     "Largest encoded event accepted from the wire or published, in bytes.", EW_SETTING_INT, 1024,
     64 << 20},
    {"EVENT_CONTENT_MODE", "structured", "structured|binary",
     "How the kafka and rabbitmq buses publish events by the CloudEvents bindings: structured "
     "(the message is the whole event as JSON) or binary (attributes in headers or application "
     "properties, the message body is the data). Both are always read; other buses publish "
     "structured.",
     EW_SETTING_ENUM, 0, 0},
    {"EVENT_HANDLER_MAX_ATTEMPTS", "5", "1..1000",
     "Deliveries of one event to a handler before it is dead-lettered.", EW_SETTING_INT, 1, 1000},
    {"EVENT_HANDLER_BACKOFF_MS", "100", "1..3600000", "First retry delay; doubles each retry.",
     EW_SETTING_INT, 1, 3600000},
    {"EVENT_HANDLER_BACKOFF_MAX_MS", "30000", "1..86400000", "Longest retry delay.", EW_SETTING_INT,
     1, 86400000},
    {"EVENT_BUS_DRAIN_TIMEOUT_MS", "30000", "0..3600000",
     "How long closing a bus waits for pending events.", EW_SETTING_INT, 0, 3600000},
    {"EVENT_BUS_CONNECT_TIMEOUT_MS", "10000", "100..600000",
     "How long opening a bus waits for its broker before it gives up with an error.",
     EW_SETTING_INT, 100, 600000},
    {"EVENT_BUS_MAX_IN_FLIGHT", "1000", "1..1000000",
     "Events a consumer holds unacknowledged at once (prefetch, poll size).", EW_SETTING_INT, 1,
     1000000},
    {"EVENT_AUTH", "mac", "mac|ed25519|off",
     "How services authenticate the events they publish (docs/bus-auth.md): mac, a keyed BLAKE2b "
     "tag per event (services sharing the key store can forge each other's events); ed25519, "
     "signatures (they cannot); off, neither signed nor checked.",
     EW_SETTING_ENUM, 0, 0},
    {"EVENT_POLICY_FILE", "", "a file",
     "The bus policy: which service may publish and subscribe to which types, which types "
     "foreign producers may publish (docs/bus-auth.md); unset: the built-in default, "
     "docs/bus-policy.conf.",
     EW_SETTING_STRING, 0, 0},
    {"EVENT_KEY_DIR", "", "a folder",
     "Where each service keeps its bus key file, SERVICE.bus.key (0600, made at its first "
     "start); unset: the key store's folder.",
     EW_SETTING_STRING, 0, 0},
    {"EVENT_KEY_GRACE_SECONDS", "86400", "0..31536000",
     "After a key rotation, how long the old key still authenticates new events; after it, it "
     "only verifies events made before.",
     EW_SETTING_INT, 0, 31536000},
    {"REDIS_EVENT_URL", "redis://127.0.0.1:6379",
     "redis://[user:password@]host:port[/db]|rediss://... (TLS)",
     "The Redis server of the redis bus; rediss:// connects over TLS, verifying the server's "
     "certificate and host name.",
     EW_SETTING_URL, 0, 0},
    {"REDIS_TLS_CA_FILE", "", "a PEM file",
     "The certificate authorities trusted for a rediss:// server; empty: the system's.",
     EW_SETTING_STRING, 0, 0},
    {"REDIS_TLS_CERT_FILE", "", "a PEM file",
     "The client certificate (chain) a rediss:// connection presents; with REDIS_TLS_KEY_FILE.",
     EW_SETTING_STRING, 0, 0},
    {"REDIS_TLS_KEY_FILE", "", "a PEM file",
     "The private key of REDIS_TLS_CERT_FILE (unencrypted; keep it 0600).", EW_SETTING_STRING, 0,
     0},
    {"REDIS_CHANNEL_PREFIX", "events", "[a-z0-9._-]+",
     "Prefix of the Redis streams and channels: PREFIX:TYPE.", EW_SETTING_NAME, 0, 0},
    {"REDIS_MODE", "streams", "streams|pubsub",
     "streams: durable consumer groups; pubsub: fire-and-forget Pub/Sub.", EW_SETTING_ENUM, 0, 0},
    {"REDIS_STREAM_MAXLEN", "1000000", "0..1000000000",
     "Approximate length Redis streams are trimmed to on XADD; 0 never trims.", EW_SETTING_INT, 0,
     1000000000},
    {"REDIS_STREAM_MAX_AGE_SECONDS", "604800", "0..315360000",
     "Redis stream entries older than this are deleted (XTRIM MINID, by publishers and "
     "consumers, each stream at most every minute), whether every group has read them or not; "
     "0 keeps entries whatever their age.",
     EW_SETTING_INT, 0, 315360000},
    {"REDIS_CLAIM_IDLE_MS", "30000", "100..86400000",
     "A pending Redis stream entry idle this long is reclaimed from its dead consumer.",
     EW_SETTING_INT, 100, 86400000},
    {"KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "host:port[,host:port...]",
     "The Kafka brokers of the kafka bus.", EW_SETTING_STRING, 0, 0},
    {"KAFKA_TOPIC_PREFIX", "events", "[a-z0-9._-]+", "Prefix of the Kafka topics: PREFIX.TYPE.",
     EW_SETTING_NAME, 0, 0},
    {"KAFKA_CONSUMER_GROUP", "event-handlers", "[a-z0-9._-]+",
     "Prefix of the Kafka consumer groups: PREFIX.GROUP.", EW_SETTING_NAME, 0, 0},
    {"KAFKA_CLIENT_CONFIG", "", "key=value[,key=value...]",
     "librdkafka properties for the kafka bus's producer and consumers (TLS, SASL); a "
     "backslash before a comma keeps it in the value.",
     EW_SETTING_PAIRS, 0, 0},
    {"RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/",
     "amqp://user:password@host:port/[vhost]|amqps://... (TLS)",
     "The RabbitMQ broker of the rabbitmq bus; amqps:// connects over TLS (port 5671 when left "
     "out), verifying the broker's certificate and host name.",
     EW_SETTING_URL, 0, 0},
    {"RABBITMQ_TLS_CA_FILE", "", "a PEM file",
     "The certificate authorities trusted for an amqps:// broker; empty: the system's.",
     EW_SETTING_STRING, 0, 0},
    {"RABBITMQ_TLS_CERT_FILE", "", "a PEM file",
     "The client certificate (chain) an amqps:// connection presents; with "
     "RABBITMQ_TLS_KEY_FILE.",
     EW_SETTING_STRING, 0, 0},
    {"RABBITMQ_TLS_KEY_FILE", "", "a PEM file",
     "The private key of RABBITMQ_TLS_CERT_FILE (unencrypted; keep it 0600).", EW_SETTING_STRING, 0,
     0},
    {"RABBITMQ_EXCHANGE", "events", "[a-z0-9._-]+", "The topic exchange events go to.",
     EW_SETTING_NAME, 0, 0},
    {"RABBITMQ_MANAGEMENT_URL", "", "http[s]://[user:password@]host:port[/prefix]",
     "The broker's management plugin HTTP API; when set, a group's consumer lag is its queue's "
     "ready plus unacknowledged messages (GET /api/queues/VHOST/QUEUE), and without user info "
     "in it RABBITMQ_URL's user and password log in; unset: the ready messages alone (AMQP).",
     EW_SETTING_URL, 0, 0},
    {"ENABLE_EVENT_STORE", "false", "true|false",
     "Record every published event in the event store (the audit trail).", EW_SETTING_BOOL, 0, 0},
    {"EVENT_STORE_URL", "sqlite:var/eventwire.db", "sqlite:PATH|postgresql://...",
     "The event store's database.", EW_SETTING_URL, 0, 0},
    {"KEY_STORE_URL", "", "sqlite:PATH|postgresql://...",
     "The key store: every key of the deployment (the services' bus keys, docs/bus-auth.md, and "
     "the subjects' wrapped data keys, docs/encryption.md); unset: keys/keys.db in the folder of "
     "EVENT_STORE_URL's SQLite file, or var/keys/keys.db when the event store is not SQLite. "
     "Made 0600 in a 0700 folder; on PostgreSQL, the schema key_store.",
     EW_SETTING_URL, 0, 0},
    {"EVENT_STORE_TTL_DAYS", "90", "0..36500", "Days events are kept; 0 keeps them forever.",
     EW_SETTING_INT, 0, 36500},
    {"EVENT_ENCRYPTION", "on", "on|off",
     "Encrypt the event fields the catalog marks personal or secret, per subject "
     "(docs/encryption.md); off only for interop tests and consumers without keys: events then "
     "carry those fields in clear, and encrypted ones received are dead-lettered.",
     EW_SETTING_ENUM, 0, 0},
    {"EVENT_ENCRYPTION_KEY_FILE", "", "a file",
     "The key-encryption key that wraps every subject's data key (32 bytes, 0600; made at first "
     "start when the key store holds no keys yet); unset: eventwire.kek beside KEY_STORE_URL's "
     "file when that is set, else in the folder keys beside EVENT_STORE_URL's SQLite file, or "
     "var/keys when the event store is not SQLite.",
     EW_SETTING_STRING, 0, 0},
    {"EVENT_KEY_CACHE_SECONDS", "30", "0..3600",
     "How long a process keeps a subject's data key in memory before it reads the key store "
     "again: the longest a destroyed key stays usable in a running process (0: read it for "
     "every event).",
     EW_SETTING_INT, 0, 3600},
    {"EVENT_KEY_CACHE_SIZE", "16384", "8..1048576",
     "How many subjects' data keys a process keeps in memory (224 bytes each, locked from "
     "swapping: 3.5 MiB by default), in sets of 8 (the size rounded down to a multiple of 8) that "
     "each drop their least recently used key when full.",
     EW_SETTING_INT, 8, 1048576},
    {"ENABLE_SAGAS", "true", "true|false", "Run the saga engine.", EW_SETTING_BOOL, 0, 0},
    {"ENABLE_METRICS", "true", "true|false",
     "Count the events published and handled by type and time every handler call, for GET "
     "/metrics; false leaves those figures at 0 (what they cost is in bench/README.md).",
     EW_SETTING_BOOL, 0, 0},
    {"SAGA_TIMEOUT_SECONDS", "3600", "1..31536000", "Deadline of a saga instance.", EW_SETTING_INT,
     1, 31536000},
    {"LOG_LEVEL", "info", "debug|info|warn|error", "The least severe log records written.",
     EW_SETTING_ENUM, 0, 0},
    {"LOG_FORMAT", "auto", "auto|json|text",
     "How log lines are written: JSON lines (ts, level, service, module, msg and the event's "
     "ids), or text; auto: JSON for the services, text for ewctl.",
     EW_SETTING_ENUM, 0, 0},
    {"OTEL_EXPORTER_OTLP_ENDPOINT", "", "http(s)://host:port",
     "An OpenTelemetry collector's OTLP/HTTP endpoint: the services send their spans to "
     "ENDPOINT/v1/traces (JSON); unset, no spans are sent.",
     EW_SETTING_URL, 0, 0},
};

#define NENTRIES (sizeof entries / sizeof entries[0])

/* The library's entries are entries[]; those a program defined follow, in defs[]. values[i] is
 * the value of setting i in that order. */
struct ew_config {
    const ew_setting **defs; /* ndefs programs' settings, borrowed from their static tables */
    size_t ndefs;
    char **values; /* NENTRIES + ndefs */
};

static size_t count(const ew_config *cfg)
{
    return NENTRIES + cfg->ndefs;
}

static const ew_setting *at(const ew_config *cfg, size_t i)
{
    return i < NENTRIES ? &entries[i] : cfg->defs[i - NENTRIES];
}

static int find(const ew_config *cfg, const char *name)
{
    for (size_t i = 0; i < count(cfg); i++)
        if (strcmp(at(cfg, i)->name, name) == 0) return (int)i;
    return -1;
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s)
{
    static const char *yes[] = {"true", "1", "yes", "on"}, *no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return 1;
        if (strcasecmp(s, no[i]) == 0) return 0;
    }
    return -1;
}

static int enum_has(const char *allowed, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = allowed; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

/* EW_SETTING_PAIRS: empty, or key=value items separated by commas (spaces around them allowed; in a
 * value a backslash keeps the next character, so a backslash and a comma is a comma). Returns 0,
 * or the 1-based index of the first item that is not key=value. Values may be secrets: callers
 * never quote them. */
static int pairs_bad_item(const char *v)
{
    int item = 1;
    const char *p = v;
    while (*p == ' ')
        p++;
    if (!*p) return 0;
    for (;;) {
        while (*p == ' ')
            p++;
        const char *key = p;
        while (*p && *p != '=' && *p != ',' && *p != ' ')
            p++;
        bool key_ok = p > key;
        while (*p == ' ')
            p++;
        if (!key_ok || *p != '=') return item;
        for (p++; *p && *p != ','; p++)
            if (*p == '\\' && p[1]) p++;
        if (!*p) return 0;
        p++; /* the comma */
        item++;
    }
}

static int name_ok(const char *v)
{
    if (!*v) return 0;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' ||
              *p == '-'))
            return 0;
    return 1;
}

static int check(const ew_setting *e, const char *v, ew_error *err)
{
    const char *n = e->name;
    int64_t iv;
    switch (e->type) {
    case EW_SETTING_STRING:
        /* a string whose default is empty is optional, as an URL is: empty means unset */
        if (!*v && *e->def) return ew_error_set(err, EW_ECONFIG, "%s: must not be empty", n);
        return 0;
    case EW_SETTING_ENUM:
        if (!enum_has(e->allowed, v))
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not one of %s", n, v, e->allowed);
        return 0;
    case EW_SETTING_INT:
        if (parse_int(v, &iv))
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not a whole number", n, v);
        if (iv < e->min || iv > e->max)
            return ew_error_set(err, EW_ECONFIG, "%s: %lld is outside %lld..%lld", n, (long long)iv,
                                (long long)e->min, (long long)e->max);
        return 0;
    case EW_SETTING_BOOL:
        if (parse_bool(v) < 0)
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not true or false", n, v);
        return 0;
    case EW_SETTING_URL:
        /* The scheme is checked here; the backend that uses the URL parses the rest. An URL
         * whose default is empty is optional: empty means unset. */
        if (!*v && !*e->def) return 0;
        if (!strstr(v, ":") || !*v)
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not a URL (%s)", n, v, e->allowed);
        return 0;
    case EW_SETTING_PAIRS:
        if ((iv = pairs_bad_item(v)))
            return ew_error_set(err, EW_ECONFIG, "%s: item %d is not key=value (%s)", n, (int)iv,
                                e->allowed);
        return 0;
    case EW_SETTING_SECRET:
        if (*v && strlen(v) < 16)
            return ew_error_set(err, EW_ECONFIG, "%s: must be at least 16 characters", n);
        return 0;
    case EW_SETTING_NAME:
        if (!name_ok(v))
            return ew_error_set(err, EW_ECONFIG,
                                "%s: '%.64s' may hold only a-z, 0-9, '.', '_' and '-'", n, v);
        return 0;
    }
    return 0;
}

int ew_config_new(ew_config **out, ew_error *err)
{
    ew_config *c = calloc(1, sizeof *c);
    if (c) c->values = calloc(NENTRIES, sizeof *c->values);
    for (size_t i = 0; c && c->values && i < NENTRIES; i++)
        if (!(c->values[i] = strdup(entries[i].def))) break;
    if (!c || !c->values || !c->values[NENTRIES - 1]) {
        ew_config_free(c);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    *out = c;
    return 0;
}

int ew_config_define(ew_config *cfg, const ew_setting *table, size_t n, ew_error *err)
{
    if (!cfg || (!table && n)) return ew_error_set(err, EW_EINVAL, "config and table are required");
    for (size_t i = 0; i < n; i++) {
        const ew_setting *e = &table[i];
        if (!e->name || !*e->name || !e->def || !e->allowed || !e->doc)
            return ew_error_set(err, EW_ECONFIG,
                                "setting %zu: name, def, allowed and doc are "
                                "required",
                                i);
        if (find(cfg, e->name) >= 0)
            return ew_error_set(err, EW_ECONFIG, "%.64s: already defined", e->name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(table[j].name, e->name) == 0)
                return ew_error_set(err, EW_ECONFIG, "%.64s: defined twice", e->name);
        if (e->type == EW_SETTING_INT && e->min > e->max)
            return ew_error_set(err, EW_ECONFIG, "%.64s: min is above max", e->name);
        int rc = check(e, e->def, err);
        if (rc) {
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err ? err->msg : "");
            return ew_error_set(err, EW_ECONFIG, "the default of %s", why);
        }
    }
    /* Nothing to add (a program without settings of its own): realloc to the same size could
     * still move, or with nothing defined yet free, the arrays, which are then left dangling. */
    if (n == 0) return 0;
    size_t old = count(cfg);
    const ew_setting **defs = realloc(cfg->defs, (cfg->ndefs + n) * sizeof *defs);
    if (n && !defs) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (n) cfg->defs = defs;
    char **values = realloc(cfg->values, (old + n) * sizeof *values);
    if (n && !values) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (n) cfg->values = values;
    for (size_t i = 0; i < n; i++) {
        if (!(cfg->values[old + i] = strdup(table[i].def))) {
            while (i--)
                free(cfg->values[old + i]);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
    }
    for (size_t i = 0; i < n; i++)
        cfg->defs[cfg->ndefs++] = &table[i];
    return 0;
}

int ew_config_dup(ew_config **out, const ew_config *cfg, ew_error *err)
{
    ew_config *c = calloc(1, sizeof *c);
    size_t n = count(cfg);
    if (c) c->values = calloc(n, sizeof *c->values);
    if (c && c->values && cfg->ndefs) c->defs = malloc(cfg->ndefs * sizeof *c->defs);
    if (!c || !c->values || (cfg->ndefs && !c->defs)) {
        ew_config_free(c);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    if (cfg->ndefs) memcpy(c->defs, cfg->defs, cfg->ndefs * sizeof *c->defs);
    c->ndefs = cfg->ndefs;
    for (size_t i = 0; i < n; i++)
        if (!(c->values[i] = strdup(cfg->values[i]))) {
            ew_config_free(c);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
    *out = c;
    return 0;
}

void ew_config_free(ew_config *cfg)
{
    if (!cfg) return;
    if (cfg->values)
        for (size_t i = 0; i < count(cfg); i++)
            free(cfg->values[i]);
    free(cfg->values);
    free(cfg->defs);
    free(cfg);
}

int ew_config_set(ew_config *cfg, const char *name, const char *value, ew_error *err)
{
    if (!name || !value) return ew_error_set(err, EW_EINVAL, "config name and value are required");
    int i = find(cfg, name);
    if (i < 0) return ew_error_set(err, EW_ECONFIG, "%.64s: unknown setting", name);
    int rc = check(at(cfg, (size_t)i), value, err);
    if (rc) return rc;
    char *v = strdup(value);
    if (!v) return ew_error_set(err, EW_ENOMEM, "out of memory");
    free(cfg->values[i]);
    cfg->values[i] = v;
    return 0;
}

int ew_config_from_env(ew_config *cfg, ew_error *err)
{
    for (size_t i = 0; i < count(cfg); i++) {
        const char *name = at(cfg, i)->name;
        const char *v = getenv(name);
        if (!v) continue;
        int rc = ew_config_set(cfg, name, v, err);
        if (rc) return rc;
    }
    return 0;
}

const char *ew_config_get(const ew_config *cfg, const char *name)
{
    int i = find(cfg, name);
    return i < 0 ? NULL : cfg->values[i];
}

const ew_setting *ew_config_setting(const ew_config *cfg, int i)
{
    return cfg && i >= 0 && (size_t)i < count(cfg) ? at(cfg, (size_t)i) : NULL;
}

/* ---- values as they may be shown ------------------------------------------------------------ */

typedef struct out {
    char *buf;
    size_t n, len;
} out;

static void put(out *o, const char *s, size_t k)
{
    for (size_t i = 0; i < k && o->len + 1 < o->n; i++)
        o->buf[o->len++] = s[i];
    o->buf[o->len] = '\0';
}

static bool has_ci(const char *s, size_t len, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= len; i++)
        if (strncasecmp(s + i, needle, m) == 0) return true;
    return false;
}

/* What shown_url() hides: spans of the URL given in order of their starts; overlapping or
 * touching spans become one "***". */
typedef struct hider {
    out *o;
    const char *v;
    size_t done;   /* v[0..done) is written */
    size_t hs, he; /* the span being gathered, when open */
    bool open;
} hider;

static void hide_flush(hider *h)
{
    if (!h->open) return;
    put(h->o, h->v + h->done, h->hs - h->done);
    put(h->o, "***", 3);
    h->done = h->he;
    h->open = false;
}

static void hide(hider *h, size_t s, size_t e)
{
    if (h->open && s <= h->he) {
        if (e > h->he) h->he = e;
        return;
    }
    hide_flush(h);
    h->open = true;
    h->hs = s;
    h->he = e;
}

/* A URL: the password of its user info, and of password= in its query, become ***. The user
 * info ends at the last '@' before the first '/': libpq and librabbitmq read a '?' or '#' there
 * as part of the password, so cutting at them (as RFC 3986 does) would show it. A password= value
 * ends at '&' only, as libpq reads it. Both are looked for in the whole URL and what they cover
 * together is hidden: a query's password= can sit inside what the user info rule takes
 * ("postgresql://u:p@h?password=@x/db", whose password for libpq is "@x/db"), and hiding each
 * part apart showed it. */
static void shown_url(out *o, const char *v)
{
    hider h = {.o = o, .v = v};
    size_t u0 = 0, u1 = 0; /* the user info's password, when u1 > 0 */
    const char *p = strstr(v, "://");
    if (p) {
        p += 3;
        size_t auth = strcspn(p, "/");
        const char *at = NULL;
        for (size_t i = 0; i < auth; i++)
            if (p[i] == '@') at = p + i;
        const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
        if (colon) {
            u0 = (size_t)(colon + 1 - v);
            u1 = (size_t)(at - v);
        }
    }
    bool user_done = u1 == 0;
    /* the query begins at the first '?'; '&' parts it from there on */
    for (const char *q = strchr(v, '?'); q; q = strpbrk(q + 1, "?&")) {
        if (strncasecmp(q + 1, "password=", 9) != 0) continue;
        size_t s = (size_t)(q + 10 - v), e = s + strcspn(q + 10, "&");
        if (!user_done && u0 <= s) {
            hide(&h, u0, u1);
            user_done = true;
        }
        hide(&h, s, e);
    }
    if (!user_done) hide(&h, u0, u1);
    hide_flush(&h);
    put(o, v + h.done, strlen(v + h.done));
}

/* key=value items (EW_SETTING_PAIRS): the values of secret-looking keys become ***. */
static void shown_pairs(out *o, const char *v)
{
    while (*v) {
        const char *eq = strchr(v, '=');
        if (!eq) break;
        bool secret = has_ci(v, (size_t)(eq - v), "password") ||
                      has_ci(v, (size_t)(eq - v), "secret") || has_ci(v, (size_t)(eq - v), "key") ||
                      has_ci(v, (size_t)(eq - v), "credentials");
        put(o, v, (size_t)(eq + 1 - v));
        const char *p = eq + 1;
        while (*p && *p != ',')
            p += *p == '\\' && p[1] ? 2 : 1;
        if (secret)
            put(o, "***", 3);
        else
            put(o, eq + 1, (size_t)(p - eq - 1));
        if (!*p) return;
        put(o, ",", 1);
        v = p + 1;
    }
    put(o, v, strlen(v));
}

const char *ew_url_redact(const char *url, char *buf, size_t n)
{
    if (!buf || n == 0) return buf;
    out o = {buf, n, 0};
    buf[0] = '\0';
    if (url) shown_url(&o, url);
    return buf;
}

const char *ew_config_shown(const ew_config *cfg, const char *name, char *buf, size_t n)
{
    int i = find(cfg, name);
    if (i < 0 || !buf || n == 0) return NULL;
    out o = {buf, n, 0};
    buf[0] = '\0';
    const char *v = cfg->values[i];
    ew_setting_type type = at(cfg, (size_t)i)->type;
    if (type == EW_SETTING_PAIRS)
        shown_pairs(&o, v);
    else if (type == EW_SETTING_SECRET)
        put(&o, *v ? "***" : "", *v ? 3 : 0);
    else if (strstr(v, "://"))
        shown_url(&o, v);
    else
        put(&o, v, strlen(v));
    return buf;
}

int64_t ew_config_get_int(const ew_config *cfg, const char *name)
{
    int i = find(cfg, name);
    if (i < 0) return 0;
    if (at(cfg, (size_t)i)->type == EW_SETTING_BOOL) return parse_bool(cfg->values[i]) == 1;
    int64_t v = 0;
    parse_int(cfg->values[i], &v);
    return v;
}

const ew_setting *ew_config_describe(int i)
{
    return i >= 0 && (size_t)i < NENTRIES ? &entries[i] : NULL;
}
