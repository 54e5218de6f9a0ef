/* eventwire — the bus policy (eventwire/policy.h): parsing the file, and the three questions the
 * bus asks of it. */
#include "eventwire/policy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/catalog.h"

#define MAX_FILE (1 << 20)
#define MAX_LINE 4096

typedef enum { R_PUBLISH, R_SUBSCRIBE, R_FOREIGN } rule_kind;

/* One line: its kind, its service ("*" or a name; NULL for foreign), its patterns (those written
 * with a leading '!' exclude). */
typedef struct rule {
    rule_kind kind;
    char *service;
    char **patterns;
    bool *negated;
    size_t n;
} rule;

struct ew_policy {
    rule *rules;
    size_t n;
};

/* The default: the four flows of the reference system (docs/bus-auth.md#the-default-policy). */
static const char default_text[] =
    "# eventwire bus policy: who may publish and subscribe to what (docs/bus-auth.md).\n"
    "# publish SERVICE PATTERN...  |  subscribe SERVICE PATTERN...  |  foreign PATTERN...\n"
    "# A '!' before a pattern excludes what it matches; SERVICE '*' is every service.\n"
    "\n"
    "# Every service answers the GDPR requests and hears of revoked tokens.\n"
    "publish   * user.data_collected user.data_deleted\n"
    "subscribe * user.deletion_requested user.data_export_requested user.tokens_revoked\n"
    "\n"
    "# auth-service: accounts, sessions, roles, resets; it hosts the sagas.\n"
    "publish   auth-service user.registered user.logged_in user.logged_out user.role_changed\n"
    "publish   auth-service user.deactivated user.tokens_revoked user.deletion_requested\n"
    "publish   auth-service password.reset_requested password.reset_token_issued\n"
    "publish   auth-service password.reset_completed password.reset_expired\n"
    "publish   auth-service user.deletion_completed user.deletion_failed saga.*\n"
    "subscribe auth-service user.registered user.profile_created user.profile_creation_failed\n"
    "subscribe auth-service user.preferences_updated user.deactivated user.role_changed\n"
    "subscribe auth-service notification.welcome_email_sent notification.email_sent\n"
    "subscribe auth-service analytics.user_tracked user.data_deleted password.*\n"
    "\n"
    "# user-service: profiles, preferences, verification, consent.\n"
    "publish   user-service user.profile_created user.profile_creation_failed\n"
    "publish   user-service user.profile_updated user.preferences_updated\n"
    "publish   user-service user.verification_requested user.verified user.consent_changed\n"
    "subscribe user-service user.registered\n"
    "\n"
    "# notification-service: the mails.\n"
    "publish   notification-service notification.*\n"
    "subscribe notification-service user.registered user.profile_created\n"
    "subscribe notification-service password.reset_token_issued user.verification_requested\n"
    "subscribe notification-service user.data_export_completed\n"
    "\n"
    "# analytics-service counts everything.\n"
    "publish   analytics-service analytics.*\n"
    "subscribe analytics-service #\n"
    "\n"
    "# export-service: GDPR exports.\n"
    "publish   export-service user.data_export_requested user.data_export_completed\n"
    "publish   export-service user.data_export_failed\n"
    "subscribe export-service user.data_collected\n"
    "\n"
    "# ewctl as itself (without --as SERVICE): redeliveries, and nothing sensitive.\n"
    "publish   ewctl eventwire.redelivery # !user.deletion_requested !user.role_changed\n"
    "publish   ewctl !user.tokens_revoked !user.data_export_completed !user.data_collected\n"
    "subscribe ewctl #\n"
    "\n"
    "# Foreign (unauthenticated) CloudEvents producers: none by default. For example:\n"
    "# foreign user.profile_updated\n";

const char *ew_policy_default_text(void)
{
    return default_text;
}

bool ew_policy_sensitive(const char *type)
{
    static const char *const sensitive[] = {
        "user.deletion_requested",    "user.role_changed",   "user.tokens_revoked",
        "user.data_export_completed", "user.data_collected", "eventwire.redelivery",
    };
    if (!type) return true;
    for (size_t i = 0; i < sizeof sensitive / sizeof sensitive[0]; i++)
        if (!strcmp(type, sensitive[i])) return true;
    return false;
}

void ew_policy_free(ew_policy *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        rule *r = &p->rules[i];
        free(r->service);
        for (size_t j = 0; j < r->n; j++)
            free(r->patterns[j]);
        free(r->patterns);
        free(r->negated);
    }
    free(p->rules);
    free(p);
}

static bool service_ok(const char *s)
{
    if (!strcmp(s, "*")) return true;
    if (!*s) return false;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' ||
              *c == '-'))
            return false;
    return true;
}

/* Parses one line (NUL-terminated, comment cut off) into r. 0: a rule; 1: a blank line. */
static int parse_line(char *line, rule *r, const char *name, int lineno, ew_error *err)
{
    const char *delim = " \t\r";
    char *save = NULL, *word = strtok_r(line, delim, &save);
    if (!word) return 1;
    memset(r, 0, sizeof *r);
    if (!strcmp(word, "publish"))
        r->kind = R_PUBLISH;
    else if (!strcmp(word, "subscribe"))
        r->kind = R_SUBSCRIBE;
    else if (!strcmp(word, "foreign"))
        r->kind = R_FOREIGN;
    else
        return ew_error_set(err, EW_ECONFIG, "%s:%d: '%.40s' is not publish, subscribe or foreign",
                            name, lineno, word);
    if (r->kind != R_FOREIGN) {
        char *svc = strtok_r(NULL, delim, &save);
        if (!svc || !service_ok(svc))
            return ew_error_set(err, EW_ECONFIG,
                                "%s:%d: %s needs a service name ([a-z0-9._-]+ or *) first", name,
                                lineno, word);
        if (!(r->service = strdup(svc))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    size_t cap = 0;
    for (char *p; (p = strtok_r(NULL, delim, &save));) {
        bool neg = *p == '!';
        const char *pat = neg ? p + 1 : p;
        if (!ew_pattern_valid(pat))
            return ew_error_set(err, EW_ECONFIG, "%s:%d: '%.100s' is not a valid pattern", name,
                                lineno, p);
        if (r->kind == R_FOREIGN && neg)
            return ew_error_set(err, EW_ECONFIG, "%s:%d: foreign takes no '!' patterns", name,
                                lineno);
        if (r->kind == R_FOREIGN && ew_policy_sensitive(pat))
            return ew_error_set(err, EW_ECONFIG,
                                "%s:%d: %s is sensitive: foreign producers are never admitted "
                                "for it",
                                name, lineno, pat);
        if (r->n == cap) {
            cap = cap ? 2 * cap : 8;
            char **np = realloc(r->patterns, cap * sizeof *np);
            if (np) r->patterns = np;
            bool *nn = realloc(r->negated, cap * sizeof *nn);
            if (nn) r->negated = nn;
            if (!np || !nn) return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        if (!(r->patterns[r->n] = strdup(pat)))
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        r->negated[r->n++] = neg;
    }
    if (!r->n)
        return ew_error_set(err, EW_ECONFIG, "%s:%d: %s names no pattern", name, lineno, word);
    return 0;
}

static void rule_release(rule *r)
{
    free(r->service);
    for (size_t j = 0; j < r->n; j++)
        free(r->patterns[j]);
    free(r->patterns);
    free(r->negated);
}

int ew_policy_parse(ew_policy **out, const char *text, size_t len, const char *name, ew_error *err)
{
    if (!out || (!text && len)) return ew_error_set(err, EW_EINVAL, "ew_policy_parse: no text");
    if (!name) name = "policy";
    ew_policy *p = calloc(1, sizeof *p);
    if (!p) return ew_error_set(err, EW_ENOMEM, "out of memory");
    size_t cap = 0;
    int lineno = 0, rc = 0;
    char line[MAX_LINE];
    for (size_t at = 0; at < len && !rc;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t n = nl ? (size_t)(nl - (text + at)) : len - at;
        lineno++;
        if (n >= sizeof line) {
            rc = ew_error_set(err, EW_ECONFIG, "%s:%d: longer than %d bytes", name, lineno,
                              MAX_LINE - 1);
            break;
        }
        memcpy(line, text + at, n);
        line[n] = '\0';
        at += n + 1;
        if (memchr(line, '\0', n)) {
            rc = ew_error_set(err, EW_ECONFIG, "%s:%d: holds a NUL byte", name, lineno);
            break;
        }
        /* A comment is a line whose first word starts with '#'; a '#' word after it is the
         * pattern that matches every type. */
        const char *first = line + strspn(line, " \t");
        if (*first == '#') continue;
        if (p->n == cap) {
            cap = cap ? 2 * cap : 32;
            rule *nr = realloc(p->rules, cap * sizeof *nr);
            if (!nr) {
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
                break;
            }
            p->rules = nr;
        }
        int r = parse_line(line, &p->rules[p->n], name, lineno, err);
        if (r == 0)
            p->n++;
        else if (r < 0) {
            rule_release(&p->rules[p->n]);
            rc = r;
        }
    }
    if (rc) {
        ew_policy_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int ew_policy_load(ew_policy **out, const char *path, ew_error *err)
{
    if (!path || !*path)
        return ew_policy_parse(out, default_text, strlen(default_text), "default policy", err);
    FILE *f = fopen(path, "rb");
    if (!f) return ew_error_set(err, EW_ECONFIG, "policy %s: %s", path, strerror(errno));
    char *buf = malloc(MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, MAX_FILE + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad)
        rc = ew_error_set(err, EW_ECONFIG, "policy %s: cannot be read", path);
    else if (n > MAX_FILE)
        rc = ew_error_set(err, EW_ECONFIG, "policy %s: larger than %d bytes", path, MAX_FILE);
    else
        rc = ew_policy_parse(out, buf, n, path, err);
    free(buf);
    return rc;
}

/* Does a line of kind for service allow type: one of its patterns matches, none of its
 * exclusions does? Exclusions of any line of the service (or of '*') exclude for all of them. */
static bool allows(const ew_policy *p, rule_kind kind, const char *service, const char *type)
{
    bool yes = false;
    for (size_t i = 0; i < p->n; i++) {
        const rule *r = &p->rules[i];
        if (r->kind != kind) continue;
        if (kind != R_FOREIGN && strcmp(r->service, "*") && strcmp(r->service, service)) continue;
        for (size_t j = 0; j < r->n; j++) {
            if (!ew_pattern_match(r->patterns[j], type)) continue;
            if (r->negated[j]) return false;
            yes = true;
        }
    }
    return yes;
}

bool ew_policy_may_publish(const ew_policy *p, const char *service, const char *type)
{
    return p && service && type && allows(p, R_PUBLISH, service, type);
}

bool ew_policy_may_subscribe(const ew_policy *p, const char *service, const char *pattern)
{
    if (!p || !service || !pattern || !ew_pattern_valid(pattern)) return false;
    /* Every type the pattern covers must be allowed: the catalog's, whatever their versions. */
    bool any = false;
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const char *type = ew_catalog_at(i)->type;
        if (!ew_pattern_match(pattern, type)) continue;
        any = true;
        if (!allows(p, R_SUBSCRIBE, service, type)) return false;
    }
    /* a pattern of no catalog type: allowed when a line of the service names it as such */
    if (!any) {
        for (size_t i = 0; i < p->n; i++) {
            const rule *r = &p->rules[i];
            if (r->kind != R_SUBSCRIBE || (strcmp(r->service, "*") && strcmp(r->service, service)))
                continue;
            for (size_t j = 0; j < r->n; j++)
                if (!r->negated[j] && !strcmp(r->patterns[j], pattern)) return true;
        }
    }
    return any;
}

bool ew_policy_admits_foreign(const ew_policy *p, const char *type)
{
    return p && type && !ew_policy_sensitive(type) && allows(p, R_FOREIGN, NULL, type);
}
