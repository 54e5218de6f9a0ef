/* ewctl audit — the services' audit chains (eventwire/audit.h): list entries, verify every
 * chain, print the latest signed heads. Each service keeps its chain in its own database
 * (SERVICE_DB_URL, default sqlite:var/{SERVICE_NAME}.db). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ewctl.h"
#include "svc_settings.h"
#include "eventwire/audit.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"

static const char usage[] =
    "usage: ewctl audit list [--service NAME] [--subject ID] [--since TIME]\n"
    "       ewctl audit verify [--service NAME] [--key FILE.pub]\n"
    "       ewctl audit checkpoint [--service NAME]\n"
    "\n"
    "Every service appends what people and operators did (logins, failed logins, role changes,\n"
    "deletions, exports, dead letter retries, ...) to a hash chain in its own database, naming\n"
    "actors and subjects by id, and signs the chain's head with its Ed25519 key every 100\n"
    "entries and when it stops.\n"
    "\n"
    "list prints the entries as JSON lines, oldest first: of one subject (--subject), from a time\n"
    "on (--since, RFC 3339). verify walks each chain and its signed checkpoints and prints one\n"
    "JSON line per service; the first entry that was edited, deleted, inserted or moved is named\n"
    "(\"first_bad\") and the exit status is 1. --key checks the signatures against a public key\n"
    "file (the service's KEY.pub) instead of the key written in each checkpoint. checkpoint\n"
    "prints each chain's latest signed head, to keep somewhere else: someone holding a service's\n"
    "key could rewrite its chain and sign it again, but not the copies kept elsewhere.\n"
    "Without --service, every service whose database exists here, and the operator's own\n"
    "chain, \"ewctl\": dead letter retries and discards, key rotations and roles granted by\n"
    "ewctl, kept in the event store.\n"
    "Exit status: 0 ok, 1 a broken chain or an error, 2 usage.\n";

static int head_row(void *ud, const ew_row *r)
{
    (void)r;
    *(int *)ud = 1;
    return 0;
}

/* Does db hold a chain? The event store holds one only once ewctl recorded something. */
static bool has_chain(ew_store *db)
{
    ew_txn *t;
    int found = 0;
    if (ew_store_begin(db, &t, NULL)) return false;
    if (ew_txn_query(t, "SELECT seq FROM event_store.audit_head WHERE id = 1", NULL, 0, head_row,
                     &found, NULL))
        found = 0;
    ew_txn_rollback(t);
    return found;
}

/* Opens the database of service (EWCTL_SERVICE: the event store, where the operator's chain
 * is): 0, 1 after saying why, or -1 when it has none here (a SQLite file that does not exist;
 * an event store without a chain). */
static int open_service_db(const char *service, ew_store **db)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ewctl_config_load(&cfg, &err);
    if (rc) {
        ew_config_free(cfg);
        return ewctl_fail(1, "%s", err.msg);
    }
    bool oplog = strcmp(service, EWCTL_SERVICE) == 0;
    const char *tmpl = ew_config_get(cfg, oplog ? "EVENT_STORE_URL" : "SERVICE_DB_URL");
    char url[4096];
    const char *at = strstr(tmpl, "{SERVICE_NAME}");
    if (at)
        snprintf(url, sizeof url, "%.*s%s%s", (int)(at - tmpl), tmpl, service,
                 at + strlen("{SERVICE_NAME}"));
    else
        snprintf(url, sizeof url, "%s", tmpl);
    if (strncmp(url, "sqlite:", 7) == 0 && access(url + 7, F_OK) != 0) {
        ew_config_free(cfg);
        return -1;
    }
    rc = ew_store_open(db, &(ew_store_options){.config = cfg, .url = url}, &err);
    ew_config_free(cfg);
    if (rc) {
        char shown[512];
        return ewctl_fail(1, "%s: cannot open its database %s: %s", service,
                          ew_url_redact(url, shown, sizeof shown), err.msg);
    }
    if (oplog && !has_chain(*db)) {
        ew_store_close(*db);
        return -1;
    }
    return 0;
}

/* The chains: the services', then the operator's (ewctl's, in the event store). */
static const char *chain_name(int k)
{
    const char *name = svc_system_name(k);
    if (name) return name;
    return svc_system_name(k - 1) ? EWCTL_SERVICE : NULL;
}

typedef struct printer {
    const char *service;
} printer;

static int print_entry(void *ud, const ew_audit_entry *e)
{
    printer *p = ud;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_printf(&b, "{\"service\":\"%s\",\"seq\":%lld", p->service, (long long)e->seq);
    ewctl_put_str(&b, "recorded_at", e->recorded_at);
    ewctl_put_str(&b, "actor", e->actor);
    ewctl_put_str(&b, "action", e->action);
    ewctl_put_str(&b, "subject", e->subject);
    ew_buf_printf(&b, ",\"details\":%s", e->details ? e->details : "null");
    ewctl_put_str(&b, "hash", e->hash);
    ew_buf_puts(&b, "}\n");
    if (!b.oom) fputs(b.data, stdout);
    ew_buf_release(&b);
    return 0;
}

static int read_key(const char *path, char *hex, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f) return ewctl_fail(1, "cannot read %s", path);
    int ok = fgets(hex, (int)n, f) != NULL;
    fclose(f);
    hex[strcspn(hex, "\r\n")] = '\0';
    if (!ok || strlen(hex) != EW_AUDIT_PUBLIC_KEY_HEX)
        return ewctl_fail(1, "%s does not hold an Ed25519 public key in hex", path);
    return 0;
}

int ewctl_audit(int argc, char **argv)
{
    if (ewctl_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc < 1) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[0], *service = NULL, *subject = NULL, *key = NULL;
    int64_t since = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc && a[0] == '-') return ewctl_fail(2, "%s needs a value", a);
        if (strcmp(a, "--service") == 0) {
            service = argv[++i];
            if (strcmp(service, EWCTL_SERVICE) && !svc_settings_find(service))
                return ewctl_unknown_service(service);
        } else if (strcmp(a, "--subject") == 0 && strcmp(cmd, "list") == 0) {
            subject = argv[++i];
        } else if (strcmp(a, "--since") == 0 && strcmp(cmd, "list") == 0) {
            if (ew_time_parse(argv[++i], &since))
                return ewctl_fail(2, "--since takes an RFC 3339 time, not '%s'", argv[i]);
        } else if (strcmp(a, "--key") == 0 && strcmp(cmd, "verify") == 0) {
            key = argv[++i];
        } else {
            return ewctl_fail(2, "audit %s: unknown option '%s'", cmd, a);
        }
    }
    if (strcmp(cmd, "list") && strcmp(cmd, "verify") && strcmp(cmd, "checkpoint"))
        return ewctl_fail(2, "unknown audit command '%s' (list, verify, checkpoint)", cmd);
    char key_hex[EW_AUDIT_PUBLIC_KEY_HEX + 8];
    if (key && read_key(key, key_hex, sizeof key_hex)) return 1;

    int status = 0, seen = 0;
    for (int k = 0; chain_name(k); k++) {
        if (service && strcmp(service, chain_name(k)) != 0) continue;
        ew_store *db;
        int o = open_service_db(chain_name(k), &db);
        if (o < 0) {
            if (service && strcmp(service, EWCTL_SERVICE) == 0)
                status = ewctl_fail(1, "the operator's chain holds nothing here yet");
            else if (service)
                status = ewctl_fail(1, "%s has no database here", service);
            continue;
        }
        if (o) {
            status = 1;
            continue;
        }
        seen++;
        ew_error err = {0};
        int rc = 0;
        if (strcmp(cmd, "list") == 0) {
            printer p = {chain_name(k)};
            rc = ew_audit_list(db, subject, since, print_entry, &p, &err);
        } else if (strcmp(cmd, "verify") == 0) {
            ew_audit_report r;
            rc = ew_audit_verify(db, key ? key_hex : NULL, &r, &err);
            if (!rc) {
                ew_buf b;
                ew_buf_init(&b);
                ew_buf_printf(&b,
                              "{\"service\":\"%s\",\"ok\":%s,\"entries\":%lld,\"checkpoints\":%lld",
                              chain_name(k), r.first_bad ? "false" : "true", (long long)r.entries,
                              (long long)r.checkpoints);
                if (r.first_bad) {
                    ew_buf_printf(&b, ",\"first_bad\":%lld", (long long)r.first_bad);
                    ewctl_put_str(&b, "reason", r.reason);
                    status = 1;
                }
                ew_buf_puts(&b, "}\n");
                if (!b.oom) fputs(b.data, stdout);
                ew_buf_release(&b);
            }
        } else {
            ew_audit_checkpoint_row c;
            int found = 0;
            rc = ew_audit_latest_checkpoint(db, &c, &found, &err);
            if (!rc && found)
                printf("{\"service\":\"%s\",\"seq\":%lld,\"hash\":\"%s\",\"signed_at\":\"%s\","
                       "\"public_key\":\"%s\",\"signature\":\"%s\"}\n",
                       chain_name(k), (long long)c.seq, c.hash, c.signed_at, c.public_key,
                       c.signature);
            else if (!rc)
                printf("{\"service\":\"%s\",\"seq\":0}\n", chain_name(k));
        }
        if (rc) status = ewctl_fail(1, "%s: %s", chain_name(k), err.msg);
        ew_store_close(db);
    }
    if (!seen && !service && !status)
        return ewctl_fail(1, "no service database here (var/*.db): run where `ewctl up` ran, "
                             "or set SERVICE_DB_URL");
    return status;
}
