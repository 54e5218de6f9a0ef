/* eventwire — fuzzes every place a URL is parsed: REDIS_EVENT_URL (src/bus/redis.c),
 * RABBITMQ_URL (src/bus/rabbitmq.c, through librabbitmq's amqp_parse_url), EVENT_STORE_URL as
 * the store (src/store/store.c, sqlite.c, postgres.c through libpq's PQconninfoParse) and the
 * sqlite bus read it, the URL settings' check (ew_config_set) and ew_url_redact().
 *
 * The input, cut at its first NUL, is one URL given to each. Properties: a refusal has its code
 * and message; a parsed Redis URL has a host and a port in 1..65535; a redacted URL fits its
 * buffer, and a password that a URL carries once, in its user info, never shows in it. */
#include <libpq-fe.h>
#include <strings.h>
#include "bus/url.h"
#include "eventwire/config.h"
#include "fuzz.h"
#include "store/store_impl.h"
#ifdef EW_HAVE_RABBITMQ
#include <amqp.h>
#endif

static void check_err(int rc, const ew_error *err)
{
    FUZZ_CHECK(rc == 0 || (rc < 0 && err->code == rc && err->msg[0] != '\0'));
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0, k = strlen(needle);
    for (const char *p = hay; k && (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* Is pass written as it is, once, where a password goes: in the user info (up to the last '@'
 * before the first '/', the widest any of the parsers reads) right after a ':' and up to an '@',
 * or after "password="? A password the parser decoded from %-escapes is not, and its decoded
 * form may match other text: "%40" is the password "@" that a user name "h>%40@"
 * holds as text (corpus/url/decoded-password-in-the-user-name). */
static int written_once_as_password(const char *url, const char *pass)
{
    const char *at = strstr(url, pass), *p = strstr(url, "://");
    if (!at || count_of(url, pass) != 1) return 0;
    if (p) {
        p += 3;
        const char *last = NULL;
        for (const char *q = p; q < p + strcspn(p, "/"); q++)
            if (*q == '@') last = q;
        if (last && at > p && at + strlen(pass) <= last && at[-1] == ':' && at[strlen(pass)] == '@')
            return 1;
    }
    return at - url >= 9 && strncasecmp(at - 9, "password=", 9) == 0;
}

/* The redacted forms of url fit their buffers, and pass, the password a parser took from url,
 * never shows in them when it is written once where a password goes and is long enough to be
 * told apart from the rest of the URL. The same for the value of a URL setting as
 * ew_config_shown() shows it. */
static void check_redacted(const char *url, const char *pass, ew_config *cfg, const char *setting)
{
    static const size_t sizes[] = {1, 2, 9, 64, 4096};
    char buf[4096];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memset(buf, 'Z', sizeof buf);
        const char *r = ew_url_redact(url, buf, sizes[i]);
        FUZZ_CHECK(r == buf && strlen(buf) < sizes[i]);
    }
    if (!pass || strlen(pass) < 4 || strchr(pass, '*') || !written_once_as_password(url, pass) ||
        strlen(url) >= sizeof buf / 2)
        return;
    ew_url_redact(url, buf, sizeof buf);
    if (strstr(buf, pass)) fprintf(stderr, "redacted <%s> shows the password <%s>\n", buf, pass);
    FUZZ_CHECK(strstr(buf, pass) == NULL);
    if (cfg && ew_config_set(cfg, setting, url, NULL) == 0) {
        FUZZ_CHECK(ew_config_shown(cfg, setting, buf, sizeof buf) == buf);
        if (strstr(buf, pass)) fprintf(stderr, "%s shown <%s> shows <%s>\n", setting, buf, pass);
        FUZZ_CHECK(strstr(buf, pass) == NULL);
    }
}

/* The password libpq reads from a connection URL, malloc'ed, or NULL. */
static char *pg_password(const char *url)
{
    char *perr = NULL, *pass = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &perr);
    PQfreemem(perr);
    for (PQconninfoOption *i = o; i && i->keyword; i++)
        if (strcmp(i->keyword, "password") == 0 && i->val) pass = strdup(i->val);
    PQconninfoFree(o);
    return pass;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_cstr(data, size);
    ew_error err = {0};
    ew_config *cfg = NULL;
    FUZZ_CHECK(ew_config_new(&cfg, NULL) == 0);
    int rc;
    check_redacted(url, NULL, NULL, NULL);
#ifdef EW_HAVE_REDIS
    ew__redis_url ru;
    rc = ew__redis_url_parse(&ru, url, &err);
    check_err(rc, &err);
    if (rc == 0) {
        FUZZ_CHECK(ru.host[0] && ru.port >= 1 && ru.port <= 65535 && ru.db >= 0);
        FUZZ_CHECK(!ru.has_pass || ru.pass[0]);
        if (ru.has_pass) check_redacted(url, ru.pass, cfg, "REDIS_EVENT_URL");
    }
#endif
#ifdef EW_HAVE_RABBITMQ
    {
        struct amqp_connection_info ci;
        char *buf = NULL;
        ew_error_clear(&err);
        rc = ew__amqp_url_parse(url, &buf, &ci, &err);
        check_err(rc, &err);
        if (rc == 0) {
            FUZZ_CHECK(ci.host && ci.host[0] && ci.port >= 1 && ci.port <= 65535);
            /* "guest" is librabbitmq's default, not necessarily taken from the URL. */
            if (strcmp(ci.password, "guest") != 0)
                check_redacted(url, ci.password, cfg, "RABBITMQ_URL");
        }
        free(buf);
    }
#endif
    ew_error_clear(&err);
    check_err(ew__sqlite_bus_url_check(url, &err), &err);

    const ew_store_ops *ops = NULL;
    const char *arg = ew__store_url_arg(url, &ops);
    if (arg && ops == &ew__store_sqlite) {
        ew_error_clear(&err);
        check_err(ew__sqlite_path_check(arg, &err), &err);
    } else if (arg) {
        FUZZ_CHECK(ops == &ew__store_postgres && arg == url);
        ew_error_clear(&err);
        rc = ew__pg_url_check(arg, &err);
        check_err(rc, &err);
        if (rc == 0) {
            char *pass = pg_password(arg);
            check_redacted(url, pass, cfg, "EVENT_STORE_URL");
            free(pass);
        }
    }

    /* The settings that hold a URL check their scheme when set. */
    static const char *const url_settings[] = {"REDIS_EVENT_URL", "RABBITMQ_URL",
                                               "EVENT_STORE_URL", "SERVICE_DB_URL",
                                               "SMTP_URL",        "EXPORT_PUBLIC_URL"};
    for (size_t i = 0; i < sizeof url_settings / sizeof url_settings[0]; i++) {
        ew_error_clear(&err);
        check_err(ew_config_set(cfg, url_settings[i], url, &err), &err);
    }
    ew_config_free(cfg);
    free(url);
    return 0;
}
