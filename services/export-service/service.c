/* export-service: what the service is -- its settings, routes, handlers, sweeper and tables
 * wired into a svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "core/files.h"
#include "export.h"

static int setup(svc *s, void *ud, ew_error *err)
{
    exporter *x = ud;
    x->s = s;
    pthread_mutex_init(&x->mu, NULL);
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
    rc = export_sweeper_start(x, svc_db_url(s), err);
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
    if (x->s) pthread_mutex_destroy(&x->mu); /* setup ran */
    x->s = NULL;
}

svc_def export_service(exporter *x)
{
    return (svc_def){
        .name = EXPORT_SERVICE,
        .default_port = EXPORT_PORT,
        .schema = export_schema,
        .routes = export_routes,
        .handlers = export_handlers,
        .setup = setup,
        .teardown = teardown,
        .ud = x,
        .gdpr = &export_gdpr,
    };
}
