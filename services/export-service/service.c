/* export-service: what the service is (its tables, settings, the base of its download links
 * and setup), for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "export.h"
#include "core/files.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.export_requests ("
    " export_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " requested_by TEXT,"
    " status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),"
    " expected TEXT NOT NULL,"
    " correlation_id TEXT,"
    " created_at TEXT NOT NULL,"
    " deadline_at TEXT NOT NULL,"
    " finished_at TEXT,"
    " download_url TEXT,"
    " expires_at TEXT,"
    " file_name TEXT,"
    " reason TEXT)",
    "CREATE TABLE IF NOT EXISTS event_store.export_answers ("
    " export_id TEXT NOT NULL,"
    " service TEXT NOT NULL,"
    " data TEXT NOT NULL,"
    " received_at TEXT NOT NULL,"
    " PRIMARY KEY (export_id, service))",
};

void export_file_path(const exporter *x, const char *file_name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", x->dir, file_name);
}

/* ---- the base of download links -------------------------------------------------------------- */

/* The port of this process's listening TCP socket (the HTTP server's: the only one), for
 * HTTP_PORT=0; 0 when there is none yet. svc.h does not say which port the server got. */
static int listening_port(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    int port = 0;
    for (struct dirent *e; !port && (e = readdir(d));) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || fd < 0 || fd == dirfd(d)) continue;
        int on = 0;
        socklen_t l = sizeof on;
        if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &l) || !on) continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname((int)fd, (struct sockaddr *)&ss, &sl)) continue;
        if (ss.ss_family == AF_INET)
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    closedir(d);
    return port;
}

int export_base_url(exporter *x, char *out, size_t n)
{
    if (x->public_url) {
        snprintf(out, n, "%s", x->public_url);
        return 0;
    }
    pthread_mutex_lock(&x->mu);
    if (!x->base_url[0]) {
        int port = x->http_port ? x->http_port : listening_port();
        if (port) {
            const char *a = x->http_addr;
            /* a wildcard address is no place to download from: this host's loopback is */
            if (!strcmp(a, "0.0.0.0"))
                a = "127.0.0.1";
            else if (!strcmp(a, "::"))
                a = "::1";
            bool v6 = strchr(a, ':') != NULL;
            snprintf(x->base_url, sizeof x->base_url, "http://%s%s%s:%d", v6 ? "[" : "", a,
                     v6 ? "]" : "", port);
        }
    }
    snprintf(out, n, "%s", x->base_url);
    pthread_mutex_unlock(&x->mu);
    return out[0] ? 0 : -1;
}

/* ---- settings and the process ---------------------------------------------------------------- */

static int setup(svc *s, void *ud, ew_error *err)
{
    exporter *x = ud;
    x->s = s;
    const ew_config *c = svc_config(s);
    svc_names l;
    int rc = svc_user_data_services(c, &l, err);
    if (rc) return rc;
    const char *csv = ew_config_get(c, "USER_DATA_SERVICES");
    const char *pub = ew_config_get(c, "EXPORT_PUBLIC_URL");
    if (*pub && strncmp(pub, "http://", 7) && strncmp(pub, "https://", 8))
        return ew_error_set(err, EW_ECONFIG,
                            "EXPORT_PUBLIC_URL: must begin with http:// or https://");
    x->dir = strdup(ew_config_get(c, "EXPORT_DIR"));
    x->services_csv = strdup(csv);
    x->http_addr = strdup(ew_config_get(c, "HTTP_ADDR"));
    if (*pub) x->public_url = strdup(pub);
    if (!x->dir || !x->services_csv || !x->http_addr || (*pub && !x->public_url))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (x->public_url) {
        size_t n = strlen(x->public_url);
        while (n > 8 && x->public_url[n - 1] == '/')
            x->public_url[--n] = '\0';
    }
    x->http_port = (int)ew_config_get_int(c, "HTTP_PORT");
    x->timeout_s = ew_config_get_int(c, "EXPORT_TIMEOUT_SECONDS");
    x->link_ttl_s = ew_config_get_int(c, "EXPORT_LINK_TTL_SECONDS");
    x->per_user = ew_config_get_int(c, "EXPORT_REQUESTS_PER_USER");
    x->limit_window_s = ew_config_get_int(c, "EXPORT_LIMIT_WINDOW_SECONDS");
    if (!(x->limits = svc_limiter_new(16384))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (ew_mkdirs(x->dir))
        return ew_error_set(err, EW_EIO, "EXPORT_DIR %s: cannot create it: %s", x->dir,
                            strerror(errno));
    rc = export_routes(x, err);
    if (!rc) rc = export_handlers(x, err);
    if (!rc) rc = export_sweeper_start(x, svc_db_url(s), err);
    if (!rc)
        svc_log(s, EW_LOG_INFO, "exports wait %lld s for: %s; documents in %s",
                (long long)x->timeout_s, x->services_csv, x->dir);
    return rc;
}

static void teardown(svc *s, void *ud)
{
    exporter *x = ud;
    export_sweeper_stop(x);
    svc_limiter_free(x->limits);
    x->limits = NULL;
    free(x->dir);
    free(x->services_csv);
    free(x->http_addr);
    free(x->public_url);
    x->dir = x->services_csv = x->http_addr = x->public_url = NULL;
}

svc_def export_service(exporter *x)
{
    return (svc_def){
        .name = EXPORT_SERVICE,
        .default_port = EXPORT_PORT,
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .teardown = teardown,
        .ud = x,
        .gdpr = &export_gdpr,
    };
}
