/* eventwire — the settings of the reference system's services (svc_settings.h). */
#include <stdbool.h>
#include <string.h>
#include "svc_settings.h"

#define SVC_NAMES_CSV                                                                              \
    "auth-service,user-service,notification-service,analytics-service,export-service"

/* Read by the runtime of every service (svc.c, keeper.c, svc_auth.c). */
static const ew_setting common[] = {
    {"HTTP_ADDR", "127.0.0.1", "an IPv4 or IPv6 address",
     "The address a service's HTTP API listens on.", EW_SETTING_STRING, 0, 0},
    {"HTTP_PORT", "8000", "0..65535",
     "The port of a service's HTTP API; 0 picks a free one (the service prints it). Unset, each "
     "service takes its own: auth-service 8001, user-service 8002, notification-service 8003, "
     "analytics-service 8004, export-service 8005.",
     EW_SETTING_INT, 0, 65535},
    {"HTTP_MAX_BODY_BYTES", "65536", "1024..67108864",
     "Largest request body a service reads; a larger one is answered 413.", EW_SETTING_INT, 1024,
     64 << 20},
    {"HTTP_MAX_CONNECTIONS", "256", "1..100000",
     "Connections a service's HTTP API serves at once (one thread each).", EW_SETTING_INT, 1,
     100000},
    {"HTTP_MAX_CONNECTIONS_PER_ADDRESS", "64", "1..100000",
     "Connections one client address may hold open to a service at once; more are closed as "
     "soon as they are accepted. Load tests from one address raise it.",
     EW_SETTING_INT, 1, 100000},
    {"HTTP_IDLE_TIMEOUT_SECONDS", "30", "1..3600",
     "A connection to a service on which nothing arrives for this long is closed.", EW_SETTING_INT,
     1, 3600},
    {"HTTP_CORS_ORIGINS", "", "origin[,origin...]|*",
     "Origins (https://app.example.com) whose browser pages may call the services "
     "(cross-origin, with CORS headers); unset, a request with another Origin is answered 403.",
     EW_SETTING_STRING, 0, 0},
    {"HTTP_DRAIN_TIMEOUT_MS", "10000", "1..3600000",
     "How long a stopping service waits for the HTTP requests in flight.", EW_SETTING_INT, 1,
     3600000},
    {"SERVICE_DB_URL", "sqlite:var/{SERVICE_NAME}.db", "sqlite:PATH|postgresql://...",
     "A service's own database (its tables, inbox and outbox); {SERVICE_NAME} becomes the "
     "service's name.",
     EW_SETTING_URL, 0, 0},
    {"OUTBOX_POLL_MS", "1000", "10..60000",
     "How often a service's outbox relay looks for unsent events, besides being woken by each "
     "commit.",
     EW_SETTING_INT, 10, 60000},
    {"OUTBOX_MAX_PENDING", "10000", "0..10000000",
     "Most events a service's outbox may hold unpublished (the broker down or slow); past it, "
     "requests that would add one are answered 503 with Retry-After and write nothing. 0: no "
     "bound.",
     EW_SETTING_INT, 0, 10000000},
    {"OUTBOX_RETENTION_SECONDS", "3600", "0..31536000",
     "How long a service keeps an outbox row after publishing it (then it is deleted, and with "
     "it the copy of the event); 0 keeps them.",
     EW_SETTING_INT, 0, 31536000},
    {"DEAD_LETTER_RETENTION_DAYS", "30", "0..36500",
     "Days a dead letter is kept after its last failure, whatever its status; 0 keeps them.",
     EW_SETTING_INT, 0, 36500},
    {"INBOX_RETENTION_DAYS", "30", "0..36500",
     "Days a service remembers an event id it handled (its inbox); a redelivery older than that "
     "runs the handler again. 0 remembers forever.",
     EW_SETTING_INT, 0, 36500},
    {"HOUSEKEEPING_INTERVAL_MS", "60000", "100..86400000",
     "How often each service applies EVENT_STORE_TTL_DAYS, OUTBOX_RETENTION_SECONDS, "
     "DEAD_LETTER_RETENTION_DAYS and INBOX_RETENTION_DAYS, in bounded batches.",
     EW_SETTING_INT, 100, 86400000},
    {"AUTH_KEY_DIR", "", "a folder",
     "Where auth-service keeps its token signing key (auth-token.key, 0600) and public key "
     "(auth-token.pub), which every service reads to check tokens; unset: the folder keys "
     "beside EVENT_STORE_URL's SQLite file, or var/keys when the event store is not SQLite.",
     EW_SETTING_STRING, 0, 0},
    {"AUTH_TOKEN_TTL_SECONDS", "900", "60..86400",
     "How long an access token from auth-service's POST /auth/login is accepted (its exp); the "
     "session ends with it (docs/security.md).",
     EW_SETTING_INT, 60, 86400},
    {"AUTH_TOKEN_CACHE_SIZE", "4096", "1..1048576",
     "Checked access tokens each service remembers, so that a repeated token is not checked "
     "again (its expiry and revocations are).",
     EW_SETTING_INT, 1, 1048576},
    {"USER_DATA_SERVICES", SVC_NAMES_CSV, "name[,name...]",
     "The services that hold a user's data: a data export waits for each one's "
     "user.data_collected answer, and a deletion for each one's user.data_deleted confirmation "
     "(1 to 32 distinct names).",
     EW_SETTING_STRING, 0, 0},
};

static const ew_setting auth[] = {
    {"AUTH_PASSWORD_HASH", "interactive", "min|interactive|moderate|sensitive",
     "libsodium crypto_pwhash limits for stored passwords; min is for tests only.", EW_SETTING_ENUM,
     0, 0},
    {"AUTH_RESET_TOKEN_TTL_SECONDS", "3600", "1..604800",
     "How long a password reset token of auth-service stays valid.", EW_SETTING_INT, 1, 604800},
    {"AUTH_MAX_CONCURRENT_HASHES", "4", "1..1024",
     "Password hashes auth-service computes at once (each takes AUTH_PASSWORD_HASH's memory, 64 "
     "MiB for interactive); more requests wait, up to 10 s, then get 503 with Retry-After.",
     EW_SETTING_INT, 1, 1024},
    {"AUTH_LIMIT_WINDOW_SECONDS", "60", "1..86400",
     "The window the AUTH_*_PER_* limits count in (each key's from its first attempt).",
     EW_SETTING_INT, 1, 86400},
    {"AUTH_LOGIN_FAILURES_PER_ACCOUNT", "10", "1..1000000",
     "Failed logins one username or email may have in a window; past it, 429 with Retry-After "
     "(whether the account exists or not, and whatever the password).",
     EW_SETTING_INT, 1, 1000000},
    {"AUTH_LOGIN_FAILURES_PER_ADDRESS", "10", "1..1000000",
     "Failed logins one client address may have in a window; past it, 429 with Retry-After.",
     EW_SETTING_INT, 1, 1000000},
    {"AUTH_RESETS_PER_ADDRESS", "10", "1..1000000",
     "Password reset requests one client address may make in a window; past it, 429.",
     EW_SETTING_INT, 1, 1000000},
    {"AUTH_RESETS_PER_EMAIL", "5", "1..1000000",
     "Password reset requests for one email address in a window; past it, 429.", EW_SETTING_INT, 1,
     1000000},
    {"AUTH_REGISTRATIONS_PER_ADDRESS", "10", "1..1000000",
     "Registrations one client address may make in a window (AUTH_LIMIT_WINDOW_SECONDS); past "
     "it, 429 with Retry-After.",
     EW_SETTING_INT, 1, 1000000},
};

static const ew_setting user[] = {
    {"USER_VERIFICATION_TTL_SECONDS", "86400", "60..604800",
     "How long the email verification token that user-service mails stays valid.", EW_SETTING_INT,
     60, 604800},
};

static const ew_setting notification[] = {
    {"SMTP_URL", "", "smtp://[user:password@]host:port[?tls=none]|smtps://...",
     "The SMTP server notification-service sends mail through (libcurl; STARTTLS required, "
     "unless the URL ends in ?tls=none, which a user forbids); unset, each message is written "
     "as an .eml file into MAIL_DIR.",
     EW_SETTING_URL, 0, 0},
    {"SMTP_CA_FILE", "", "a PEM file",
     "The certificate authorities notification-service trusts for the SMTP server's TLS "
     "certificate (STARTTLS or smtps://); unset, the system's.",
     EW_SETTING_STRING, 0, 0},
    {"SMTP_TIMEOUT_MS", "10000", "100..600000",
     "How long notification-service waits for the SMTP server to take one message.", EW_SETTING_INT,
     100, 600000},
    {"MAIL_FROM", "eventwire <no-reply@eventwire.local>", "address|Name <address>",
     "The sender of notification-service's messages (From: and the SMTP envelope).",
     EW_SETTING_STRING, 0, 0},
    {"MAIL_DIR", "var/mail", "a folder",
     "Where notification-service writes each message as MESSAGE_ID.eml when SMTP_URL is unset.",
     EW_SETTING_STRING, 0, 0},
};

static const ew_setting export[] = {
    {"EXPORT_DIR", "var/exports", "a folder",
     "Where export-service keeps the assembled data exports (EXPORT_ID.json).", EW_SETTING_STRING,
     0, 0},
    {"EXPORT_TIMEOUT_SECONDS", "300", "1..86400",
     "How long a data export waits for every service's answer before it fails, naming the "
     "missing ones.",
     EW_SETTING_INT, 1, 86400},
    {"EXPORT_LINK_TTL_SECONDS", "86400", "1..31536000",
     "How long the download link of a completed data export works; then its file is deleted.",
     EW_SETTING_INT, 1, 31536000},
    {"EXPORT_PUBLIC_URL", "", "http(s)://host[:port][/prefix]",
     "The base of export-service's download links; unset, its own http://HTTP_ADDR:PORT.",
     EW_SETTING_URL, 0, 0},
    {"EXPORT_REQUESTS_PER_USER", "5", "1..1000000",
     "Data exports one user's data may be requested for in EXPORT_LIMIT_WINDOW_SECONDS (by the "
     "user or an admin); past it, 429 with Retry-After.",
     EW_SETTING_INT, 1, 1000000},
    {"EXPORT_LIMIT_WINDOW_SECONDS", "3600", "1..604800",
     "The window EXPORT_REQUESTS_PER_USER counts in (each user's from their first request).",
     EW_SETTING_INT, 1, 604800},
};

#define N(t) (sizeof t / sizeof t[0])

static const svc_settings services[] = {
    {"auth-service", auth, N(auth)},
    {"user-service", user, N(user)},
    {"notification-service", notification, N(notification)},
    {"analytics-service", NULL, 0},
    {"export-service", export, N(export)},
};

static const svc_settings every = {NULL, common, N(common)};

const svc_settings *svc_settings_common(void)
{
    return &every;
}

const svc_settings *svc_settings_at(int i)
{
    return i >= 0 && (size_t)i < N(services) ? &services[i] : NULL;
}

const char *svc_system_name(int i)
{
    const svc_settings *s = svc_settings_at(i);
    return s ? s->service : NULL;
}

const svc_settings *svc_settings_find(const char *service)
{
    for (size_t i = 0; service && i < N(services); i++)
        if (strcmp(services[i].service, service) == 0) return &services[i];
    return NULL;
}

int svc_settings_define(ew_config *cfg, const char *service, ew_error *err)
{
    int rc = ew_config_define(cfg, common, N(common), err);
    const svc_settings *own = service ? svc_settings_find(service) : NULL;
    if (!rc && service && !own)
        return ew_error_set(err, EW_EINVAL, "%.64s is not a service of this system", service);
    if (!rc && own) rc = ew_config_define(cfg, own->own, own->nown, err);
    return rc;
}

/* ---- lists of service names
 * ------------------------------------------------------------------------ */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

int svc_names_parse(svc_names *l, const char *csv)
{
    l->n = 0;
    size_t len = strlen(csv);
    if (len == 0 || len >= sizeof l->buf) return -1;
    memcpy(l->buf, csv, len + 1);
    for (char *p = l->buf;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        if (!*p || l->n == SVC_MAX_SERVICES || svc_names_has(l, p)) return -1;
        for (const char *c = p; *c; c++)
            if (!name_char(*c)) return -1;
        l->name[l->n++] = p;
        if (!comma) return 0;
        p = comma + 1;
    }
}

bool svc_names_has(const svc_names *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->name[i], name)) return true;
    return false;
}

int svc_user_data_services(const ew_config *cfg, svc_names *l, ew_error *err)
{
    const char *csv = ew_config_get(cfg, "USER_DATA_SERVICES");
    if (!csv || svc_names_parse(l, csv))
        return ew_error_set(err, EW_ECONFIG,
                            "USER_DATA_SERVICES: '%.200s' is not a list of 1 to %d distinct "
                            "service names (a-z, 0-9, '.', '_', '-') separated by commas",
                            csv ? csv : "", SVC_MAX_SERVICES);
    return 0;
}
