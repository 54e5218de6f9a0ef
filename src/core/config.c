/* eventwire — the configuration object: a fixed table of known entries, each checked when set.
 * The table is the one list of every setting; docs/configuration.md is printed from it. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "eventwire/config.h"

typedef enum { K_STRING, K_ENUM, K_INT, K_BOOL, K_URL, K_NAME, K_PAIRS, K_SECRET } kind;

typedef struct entry {
    ew_config_entry pub;
    kind k;
    int64_t min, max; /* K_INT */
} entry;

#define BUS_TYPES "memory|sqlite|redis|kafka|rabbitmq"

static const entry entries[] = {
    {{"EVENT_BUS_TYPE", "sqlite", BUS_TYPES, "Which bus carries the events."}, K_ENUM, 0, 0},
    {{"SERVICE_NAME", "eventwire", "[a-z0-9._-]+",
      "This process's service: the source of the events it publishes and its default subscriber "
      "group."},
     K_NAME,
     0,
     0},
    {{"EVENT_MAX_BYTES", "1048576", "1024..67108864",
      "Largest encoded event accepted from the wire or published, in bytes."},
     K_INT,
     1024,
     64 << 20},
    {{"EVENT_CONTENT_MODE", "structured", "structured|binary",
      "How the kafka and rabbitmq buses publish events by the CloudEvents bindings: structured "
      "(the message is the whole event as JSON) or binary (attributes in headers or application "
      "properties, the message body is the data). Both are always read; other buses publish "
      "structured."},
     K_ENUM,
     0,
     0},
    {{"EVENT_HANDLER_MAX_ATTEMPTS", "5", "1..1000",
      "Deliveries of one event to a handler before it is dead-lettered."},
     K_INT,
     1,
     1000},
    {{"EVENT_HANDLER_BACKOFF_MS", "100", "1..3600000", "First retry delay; doubles each retry."},
     K_INT,
     1,
     3600000},
    {{"EVENT_HANDLER_BACKOFF_MAX_MS", "30000", "1..86400000", "Longest retry delay."},
     K_INT,
     1,
     86400000},
    {{"EVENT_BUS_DRAIN_TIMEOUT_MS", "30000", "0..3600000",
      "How long closing a bus waits for pending events."},
     K_INT,
     0,
     3600000},
    {{"EVENT_BUS_CONNECT_TIMEOUT_MS", "10000", "100..600000",
      "How long opening a bus waits for its broker before it gives up with an error."},
     K_INT,
     100,
     600000},
    {{"EVENT_BUS_MAX_IN_FLIGHT", "1000", "1..1000000",
      "Events a consumer holds unacknowledged at once (prefetch, poll size)."},
     K_INT,
     1,
     1000000},
    {{"REDIS_EVENT_URL", "redis://127.0.0.1:6379", "redis://[user:password@]host:port[/db]",
      "The Redis server of the redis bus."},
     K_URL,
     0,
     0},
    {{"REDIS_CHANNEL_PREFIX", "events", "[a-z0-9._-]+",
      "Prefix of the Redis streams and channels: PREFIX:TYPE."},
     K_NAME,
     0,
     0},
    {{"REDIS_MODE", "streams", "streams|pubsub",
      "streams: durable consumer groups; pubsub: fire-and-forget Pub/Sub."},
     K_ENUM,
     0,
     0},
    {{"REDIS_STREAM_MAXLEN", "1000000", "0..1000000000",
      "Approximate length Redis streams are trimmed to on XADD; 0 never trims."},
     K_INT,
     0,
     1000000000},
    {{"REDIS_CLAIM_IDLE_MS", "30000", "100..86400000",
      "A pending Redis stream entry idle this long is reclaimed from its dead consumer."},
     K_INT,
     100,
     86400000},
    {{"KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "host:port[,host:port...]",
      "The Kafka brokers of the kafka bus."},
     K_STRING,
     0,
     0},
    {{"KAFKA_TOPIC_PREFIX", "events", "[a-z0-9._-]+", "Prefix of the Kafka topics: PREFIX.TYPE."},
     K_NAME,
     0,
     0},
    {{"KAFKA_CONSUMER_GROUP", "event-handlers", "[a-z0-9._-]+",
      "Prefix of the Kafka consumer groups: PREFIX.GROUP."},
     K_NAME,
     0,
     0},
    {{"KAFKA_CLIENT_CONFIG", "", "key=value[,key=value...]",
      "librdkafka properties for the kafka bus's producer and consumers (TLS, SASL); a "
      "backslash before a comma keeps it in the value."},
     K_PAIRS,
     0,
     0},
    {{"RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/",
      "amqp://user:password@host:port/[vhost]", "The RabbitMQ broker of the rabbitmq bus."},
     K_URL,
     0,
     0},
    {{"RABBITMQ_EXCHANGE", "events", "[a-z0-9._-]+", "The topic exchange events go to."},
     K_NAME,
     0,
     0},
    {{"ENABLE_EVENT_STORE", "false", "true|false",
      "Record every published event in the event store (the audit trail)."},
     K_BOOL,
     0,
     0},
    {{"EVENT_STORE_URL", "sqlite:var/eventwire.db", "sqlite:PATH|postgresql://...",
      "The event store's database."},
     K_URL,
     0,
     0},
    {{"EVENT_STORE_TTL_DAYS", "90", "0..36500", "Days events are kept; 0 keeps them forever."},
     K_INT,
     0,
     36500},
    {{"ENABLE_SAGAS", "true", "true|false", "Run the saga engine."}, K_BOOL, 0, 0},
    {{"SAGA_TIMEOUT_SECONDS", "3600", "1..31536000", "Deadline of a saga instance."},
     K_INT,
     1,
     31536000},
    {{"LOG_LEVEL", "info", "debug|info|warn|error", "The least severe log records written."},
     K_ENUM,
     0,
     0},
    {{"LOG_FORMAT", "auto", "auto|json|text",
      "How log lines are written: JSON lines (ts, level, service, module, msg and the event's "
      "ids), or text; auto: JSON for the services, text for ewctl."},
     K_ENUM,
     0,
     0},
    {{"OTEL_EXPORTER_OTLP_ENDPOINT", "", "http(s)://host:port",
      "An OpenTelemetry collector's OTLP/HTTP endpoint: the services send their spans to "
      "ENDPOINT/v1/traces (JSON); unset, no spans are sent."},
     K_URL,
     0,
     0},
    {{"CONSOLE_TOKEN", "", "16 characters or more",
      "The operator token every API call of `ewctl console` needs (Authorization: Bearer); "
      "unset, the console makes a random one and prints it at start."},
     K_SECRET,
     0,
     0},
    /* ---- the services (services/common, docs/services.md) ---- */
    {{"HTTP_ADDR", "127.0.0.1", "an IPv4 or IPv6 address",
      "The address a service's HTTP API listens on."},
     K_STRING,
     0,
     0},
    {{"HTTP_PORT", "8000", "0..65535",
      "The port of a service's HTTP API; 0 picks a free one (the service prints it). Unset, each "
      "service takes its own: auth-service 8001, user-service 8002, notification-service 8003, "
      "analytics-service 8004, export-service 8005."},
     K_INT,
     0,
     65535},
    {{"HTTP_MAX_BODY_BYTES", "65536", "1024..67108864",
      "Largest request body a service reads; a larger one is answered 413."},
     K_INT,
     1024,
     64 << 20},
    {{"HTTP_MAX_CONNECTIONS", "256", "1..100000",
      "Connections a service's HTTP API serves at once (one thread each)."},
     K_INT,
     1,
     100000},
    {{"HTTP_MAX_CONNECTIONS_PER_ADDRESS", "64", "1..100000",
      "Connections one client address may hold open to a service at once; more are closed as "
      "soon as they are accepted. Load tests from one address raise it."},
     K_INT,
     1,
     100000},
    {{"HTTP_IDLE_TIMEOUT_SECONDS", "30", "1..3600",
      "A connection to a service on which nothing arrives for this long is closed."},
     K_INT,
     1,
     3600},
    {{"HTTP_CORS_ORIGINS", "", "origin[,origin...]|*",
      "Origins (https://app.example.com) whose browser pages may call the services "
      "(cross-origin, with CORS headers); unset, a request with another Origin is answered 403."},
     K_STRING,
     0,
     0},
    {{"HTTP_DRAIN_TIMEOUT_MS", "10000", "1..3600000",
      "How long a stopping service waits for the HTTP requests in flight."},
     K_INT,
     1,
     3600000},
    {{"SERVICE_DB_URL", "sqlite:var/{SERVICE_NAME}.db", "sqlite:PATH|postgresql://...",
      "A service's own database (its tables, inbox and outbox); {SERVICE_NAME} becomes the "
      "service's name."},
     K_URL,
     0,
     0},
    {{"OUTBOX_RETENTION_SECONDS", "3600", "0..31536000",
      "How long a service keeps an outbox row after publishing it (then it is deleted, and with "
      "it the copy of the event); 0 keeps them."},
     K_INT,
     0,
     31536000},
    {{"DEAD_LETTER_RETENTION_DAYS", "30", "0..36500",
      "Days a dead letter is kept after its last failure, whatever its status; 0 keeps them."},
     K_INT,
     0,
     36500},
    {{"INBOX_RETENTION_DAYS", "30", "0..36500",
      "Days a service remembers an event id it handled (its inbox); a redelivery older than that "
      "runs the handler again. 0 remembers forever."},
     K_INT,
     0,
     36500},
    {{"HOUSEKEEPING_INTERVAL_MS", "60000", "100..86400000",
      "How often each service applies EVENT_STORE_TTL_DAYS, OUTBOX_RETENTION_SECONDS, "
      "DEAD_LETTER_RETENTION_DAYS and INBOX_RETENTION_DAYS, in bounded batches."},
     K_INT,
     100,
     86400000},
    {{"OUTBOX_POLL_MS", "1000", "10..60000",
      "How often a service's outbox relay looks for unsent events, besides being woken by each "
      "commit."},
     K_INT,
     10,
     60000},
    {{"AUTH_PASSWORD_HASH", "interactive", "min|interactive|moderate|sensitive",
      "libsodium crypto_pwhash limits for stored passwords; min is for tests only."},
     K_ENUM,
     0,
     0},
    {{"AUTH_TOKEN_TTL_SECONDS", "900", "60..86400",
      "How long an access token from auth-service's POST /auth/login is accepted (its exp); the "
      "session ends with it (docs/security.md)."},
     K_INT,
     60,
     86400},
    {{"AUTH_KEY_DIR", "", "a folder",
      "Where auth-service keeps its token signing key (auth-token.key, 0600) and public key "
      "(auth-token.pub), which every service reads to check tokens; unset: the folder keys "
      "beside EVENT_STORE_URL's SQLite file, or var/keys when the event store is not SQLite."},
     K_STRING,
     0,
     0},
    {{"AUTH_TOKEN_CACHE_SIZE", "4096", "1..1048576",
      "Checked access tokens each service remembers, so that a repeated token is not checked "
      "again (its expiry and revocations are)."},
     K_INT,
     1,
     1048576},
    {{"AUTH_RESET_TOKEN_TTL_SECONDS", "3600", "1..604800",
      "How long a password reset token of auth-service stays valid."},
     K_INT,
     1,
     604800},
    {{"AUTH_MAX_CONCURRENT_HASHES", "4", "1..1024",
      "Password hashes auth-service computes at once (each takes AUTH_PASSWORD_HASH's memory, 64 "
      "MiB for interactive); more requests wait, up to 10 s, then get 503 with Retry-After."},
     K_INT,
     1,
     1024},
    {{"AUTH_LIMIT_WINDOW_SECONDS", "60", "1..86400",
      "The window the AUTH_*_PER_* limits count in (each key's from its first attempt)."},
     K_INT,
     1,
     86400},
    {{"AUTH_LOGIN_FAILURES_PER_ACCOUNT", "10", "1..1000000",
      "Failed logins one username or email may have in a window; past it, 429 with Retry-After "
      "(whether the account exists or not, and whatever the password)."},
     K_INT,
     1,
     1000000},
    {{"AUTH_LOGIN_FAILURES_PER_ADDRESS", "10", "1..1000000",
      "Failed logins one client address may have in a window; past it, 429 with Retry-After."},
     K_INT,
     1,
     1000000},
    {{"AUTH_RESETS_PER_ADDRESS", "10", "1..1000000",
      "Password reset requests one client address may make in a window; past it, 429."},
     K_INT,
     1,
     1000000},
    {{"AUTH_RESETS_PER_EMAIL", "5", "1..1000000",
      "Password reset requests for one email address in a window; past it, 429."},
     K_INT,
     1,
     1000000},
    {{"AUTH_REGISTRATIONS_PER_ADDRESS", "10", "1..1000000",
      "Registrations one client address may make in a window (AUTH_LIMIT_WINDOW_SECONDS); past "
      "it, 429 with Retry-After."},
     K_INT,
     1,
     1000000},
    {{"USER_VERIFICATION_TTL_SECONDS", "86400", "60..604800",
      "How long the email verification token that user-service mails stays valid."},
     K_INT,
     60,
     604800},
    /* ---- notification-service, export-service (docs/services-notification.md, -export.md) ---- */
    {{"SMTP_URL", "", "smtp://[user:password@]host:port[?tls=none]|smtps://...",
      "The SMTP server notification-service sends mail through (libcurl; STARTTLS required, "
      "unless the URL ends in ?tls=none, which a user forbids); unset, each message is written "
      "as an .eml file into MAIL_DIR."},
     K_URL,
     0,
     0},
    {{"SMTP_CA_FILE", "", "a PEM file",
      "The certificate authorities notification-service trusts for the SMTP server's TLS "
      "certificate (STARTTLS or smtps://); unset, the system's."},
     K_STRING,
     0,
     0},
    {{"SMTP_TIMEOUT_MS", "10000", "100..600000",
      "How long notification-service waits for the SMTP server to take one message."},
     K_INT,
     100,
     600000},
    {{"MAIL_FROM", "eventwire <no-reply@eventwire.local>", "address|Name <address>",
      "The sender of notification-service's messages (From: and the SMTP envelope)."},
     K_STRING,
     0,
     0},
    {{"MAIL_DIR", "var/mail", "a folder",
      "Where notification-service writes each message as MESSAGE_ID.eml when SMTP_URL is unset."},
     K_STRING,
     0,
     0},
    {{"EXPORT_DIR", "var/exports", "a folder",
      "Where export-service keeps the assembled data exports (EXPORT_ID.json)."},
     K_STRING,
     0,
     0},
    {{"EXPORT_SERVICES",
      "auth-service,user-service,notification-service,analytics-service,export-service",
      "name[,name...]", "The services whose user.data_collected answer a data export waits for."},
     K_STRING,
     0,
     0},
    {{"EXPORT_TIMEOUT_SECONDS", "300", "1..86400",
      "How long a data export waits for every service's answer before it fails, naming the "
      "missing ones."},
     K_INT,
     1,
     86400},
    {{"EXPORT_LINK_TTL_SECONDS", "86400", "1..31536000",
      "How long the download link of a completed data export works; then its file is deleted."},
     K_INT,
     1,
     31536000},
    {{"EXPORT_REQUESTS_PER_USER", "5", "1..1000000",
      "Data exports one user's data may be requested for in EXPORT_LIMIT_WINDOW_SECONDS (by the "
      "user or an admin); past it, 429 with Retry-After."},
     K_INT,
     1,
     1000000},
    {{"EXPORT_LIMIT_WINDOW_SECONDS", "3600", "1..604800",
      "The window EXPORT_REQUESTS_PER_USER counts in (each user's from their first request)."},
     K_INT,
     1,
     604800},
    {{"EXPORT_PUBLIC_URL", "", "http(s)://host[:port][/prefix]",
      "The base of export-service's download links; unset, its own http://HTTP_ADDR:PORT."},
     K_URL,
     0,
     0},
};

#define NENTRIES (sizeof entries / sizeof entries[0])

struct ew_config {
    char *values[NENTRIES];
};

static int find(const char *name)
{
    for (size_t i = 0; i < NENTRIES; i++)
        if (strcmp(entries[i].pub.name, name) == 0) return (int)i;
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

/* K_PAIRS: empty, or key=value items separated by commas (spaces around them allowed; in a
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

static int check(const entry *e, const char *v, ew_error *err)
{
    const char *n = e->pub.name;
    int64_t iv;
    switch (e->k) {
    case K_STRING:
        /* a string whose default is empty is optional, as an URL is: empty means unset */
        if (!*v && *e->pub.def) return ew_error_set(err, EW_ECONFIG, "%s: must not be empty", n);
        return 0;
    case K_ENUM:
        if (!enum_has(e->pub.allowed, v))
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not one of %s", n, v,
                                e->pub.allowed);
        return 0;
    case K_INT:
        if (parse_int(v, &iv))
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not a whole number", n, v);
        if (iv < e->min || iv > e->max)
            return ew_error_set(err, EW_ECONFIG, "%s: %lld is outside %lld..%lld", n, (long long)iv,
                                (long long)e->min, (long long)e->max);
        return 0;
    case K_BOOL:
        if (parse_bool(v) < 0)
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not true or false", n, v);
        return 0;
    case K_URL:
        /* The scheme is checked here; the backend that uses the URL parses the rest. An URL
         * whose default is empty is optional: empty means unset. */
        if (!*v && !*e->pub.def) return 0;
        if (!strstr(v, ":") || !*v)
            return ew_error_set(err, EW_ECONFIG, "%s: '%.64s' is not a URL (%s)", n, v,
                                e->pub.allowed);
        return 0;
    case K_PAIRS:
        if ((iv = pairs_bad_item(v)))
            return ew_error_set(err, EW_ECONFIG, "%s: item %d is not key=value (%s)", n, (int)iv,
                                e->pub.allowed);
        return 0;
    case K_SECRET:
        if (*v && strlen(v) < 16)
            return ew_error_set(err, EW_ECONFIG, "%s: must be at least 16 characters", n);
        return 0;
    case K_NAME:
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
    if (!c) return ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < NENTRIES; i++) {
        c->values[i] = strdup(entries[i].pub.def);
        if (!c->values[i]) {
            ew_config_free(c);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
    }
    *out = c;
    return 0;
}

int ew_config_dup(ew_config **out, const ew_config *cfg, ew_error *err)
{
    ew_config *c = NULL;
    int rc = ew_config_new(&c, err);
    if (rc) return rc;
    for (size_t i = 0; i < NENTRIES; i++) {
        char *v = strdup(cfg->values[i]);
        if (!v) {
            ew_config_free(c);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        free(c->values[i]);
        c->values[i] = v;
    }
    *out = c;
    return 0;
}

void ew_config_free(ew_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < NENTRIES; i++)
        free(cfg->values[i]);
    free(cfg);
}

int ew_config_set(ew_config *cfg, const char *name, const char *value, ew_error *err)
{
    if (!name || !value) return ew_error_set(err, EW_EINVAL, "config name and value are required");
    int i = find(name);
    if (i < 0) return ew_error_set(err, EW_ECONFIG, "%.64s: unknown setting", name);
    int rc = check(&entries[i], value, err);
    if (rc) return rc;
    char *v = strdup(value);
    if (!v) return ew_error_set(err, EW_ENOMEM, "out of memory");
    free(cfg->values[i]);
    cfg->values[i] = v;
    return 0;
}

int ew_config_from_env(ew_config *cfg, ew_error *err)
{
    for (size_t i = 0; i < NENTRIES; i++) {
        const char *v = getenv(entries[i].pub.name);
        if (!v) continue;
        int rc = ew_config_set(cfg, entries[i].pub.name, v, err);
        if (rc) return rc;
    }
    return 0;
}

const char *ew_config_get(const ew_config *cfg, const char *name)
{
    int i = find(name);
    return i < 0 ? NULL : cfg->values[i];
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

/* A URL: the password of its user info, and of password= in its query, become ***. The user
 * info ends at the last '@' before the first '/': libpq and librabbitmq read a '?' or '#' there
 * as part of the password, so cutting at them (as RFC 3986 does) would show it. A password= value
 * ends at '&' only, as libpq reads it. */
static void shown_url(out *o, const char *v)
{
    const char *p = strstr(v, "://");
    if (p) {
        p += 3;
        size_t auth = strcspn(p, "/");
        const char *at = NULL;
        for (size_t i = 0; i < auth; i++)
            if (p[i] == '@') at = p + i;
        const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
        if (colon) {
            put(o, v, (size_t)(colon + 1 - v));
            put(o, "***", 3);
            v = at;
        }
    }
    while (*v) {
        const char *q = strpbrk(v, "?&");
        if (!q) break;
        put(o, v, (size_t)(q + 1 - v));
        v = q + 1;
        if (strncasecmp(v, "password=", 9) == 0) {
            put(o, v, 9);
            put(o, "***", 3);
            v += 9 + strcspn(v + 9, "&");
        }
    }
    put(o, v, strlen(v));
}

/* key=value items (K_PAIRS): the values of secret-looking keys become ***. */
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
    int i = find(name);
    if (i < 0 || !buf || n == 0) return NULL;
    out o = {buf, n, 0};
    buf[0] = '\0';
    const char *v = cfg->values[i];
    if (entries[i].k == K_PAIRS)
        shown_pairs(&o, v);
    else if (entries[i].k == K_SECRET)
        put(&o, *v ? "***" : "", *v ? 3 : 0);
    else if (strstr(v, "://"))
        shown_url(&o, v);
    else
        put(&o, v, strlen(v));
    return buf;
}

int64_t ew_config_get_int(const ew_config *cfg, const char *name)
{
    int i = find(name);
    if (i < 0) return 0;
    if (entries[i].k == K_BOOL) return parse_bool(cfg->values[i]) == 1;
    int64_t v = 0;
    parse_int(cfg->values[i], &v);
    return v;
}

const ew_config_entry *ew_config_describe(int i)
{
    return i >= 0 && (size_t)i < NENTRIES ? &entries[i].pub : NULL;
}
