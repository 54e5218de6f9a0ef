/* ewctl: the operator's audit chain (docs/audit.md). What an operator does through ewctl to the
 * deployment — dead letters retried and discarded, keys rotated, roles granted — is appended
 * to a chain of its own, "ewctl", kept in the event store beside the dead letters it acts on
 * and signed with KEY_DIR/ewctl.audit.key, the folder where the services keep theirs. */
#include <stdlib.h>
#include <string.h>
#include "ewctl.h"
#include "eventwire/config.h"

/* The services' key folder (services/common/svc.c authn_start): AUTH_KEY_DIR, else keys beside
 * EVENT_STORE_URL's SQLite file, else var/keys. Malloc'ed. */
static char *key_dir(const ew_config *cfg)
{
    const char *dir = ew_config_get(cfg, "AUTH_KEY_DIR");
    const char *store = ew_config_get(cfg, "EVENT_STORE_URL");
    if (dir && *dir) return strdup(dir);
    if (!strncmp(store, "sqlite:", 7)) {
        const char *path = store + 7, *slash = strrchr(path, '/');
        ew_buf b;
        ew_buf_init(&b);
        if (slash) ew_buf_append(&b, path, (size_t)(slash - path) + 1);
        ew_buf_puts(&b, "keys");
        return ew_buf_steal(&b, NULL);
    }
    return strdup("var/keys");
}

int ewctl_oplog_open(ew_store *st, ew_audit **out)
{
    *out = NULL;
    ew_config *cfg = NULL;
    ew_error err = {0};
    if (ewctl_config_load(&cfg, &err)) return ewctl_fail(1, "%s", err.msg);
    char *dir = key_dir(cfg);
    ew_config_free(cfg);
    ew_buf path;
    ew_buf_init(&path);
    if (dir) ew_buf_printf(&path, "%s/" EWCTL_SERVICE ".audit.key", dir);
    free(dir);
    int rc = !dir || path.oom ? ew_error_set(&err, EW_ENOMEM, "out of memory")
                              : ew_audit_open(out, st, EWCTL_SERVICE, path.data, &err);
    ew_buf_release(&path);
    if (rc) return ewctl_fail(1, "cannot open the operator's audit chain: %s", err.msg);
    return 0;
}

int ewctl_oplog(ew_audit *a, const char *action, const char *subject, const char *details)
{
    ew_error err = {0};
    if (ew_audit_append(a, "operator", action, subject, details, NULL, &err))
        return ewctl_fail(1, "%s%s%s was done but not recorded in the audit chain: %s", action,
                          subject ? " " : "", subject ? subject : "", err.msg);
    return 0;
}
