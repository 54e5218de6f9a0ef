/* user-service: what the service is -- its settings, routes, handlers and tables wired into a
 * svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include "user.h"

static int setup(svc *s, void *ud, ew_error *err)
{
    usvc *u = ud;
    u->s = s;
    u->verify_ttl_s = ew_config_get_int(svc_config(s), "USER_VERIFICATION_TTL_SECONDS");
    return 0;
}

svc_def user_service(usvc *u)
{
    return (svc_def){
        .name = USER_SERVICE,
        .default_port = USER_PORT,
        .schema = user_schema,
        .routes = user_routes,
        .handlers = user_handlers,
        .setup = setup,
        .ud = u,
        .gdpr = &user_gdpr,
    };
}
