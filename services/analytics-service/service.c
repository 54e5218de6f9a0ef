/* analytics-service: what the service is -- its routes, handlers and tables wired into a
 * svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include "analytics.h"

static int setup(svc *s, void *ud, ew_error *err)
{
    analytics *a = ud;
    a->s = s;
    return 0;
}

svc_def analytics_service(analytics *a)
{
    return (svc_def){
        .name = ANALYTICS_SERVICE,
        .default_port = ANALYTICS_PORT,
        .schema = analytics_schema,
        .routes = analytics_routes,
        .handlers = analytics_handlers,
        .setup = setup,
        .ud = a,
        .gdpr = &analytics_gdpr,
        /* counts what still arrives about an erased user, anonymously; its own tombstones
         * (analytics_erased, by hash) keep the user's rows from coming back */
        .runs_for_erased_users = true,
    };
}
