/* notification-service: what the service is -- its settings, mail, routes, handlers and tables
 * wired into a svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include "notification.h"

static int setup(svc *s, void *ud, ew_error *err)
{
    notif *n = ud;
    n->s = s;
    return notif_mail_setup(n, err);
}

static void teardown(svc *s, void *ud)
{
    notif_mail_teardown(ud);
}

svc_def notif_service(notif *n)
{
    return (svc_def){
        .name = NOTIF_SERVICE,
        .default_port = NOTIF_PORT,
        .schema = notif_schema,
        .routes = notif_routes,
        .handlers = notif_handlers,
        .setup = setup,
        .teardown = teardown,
        .ud = n,
        .gdpr = &notif_gdpr,
    };
}
