/* notification-service: what the service is -- its settings, mail, routes, handlers and tables
 * wired into a svc_def -- for main.c and for the harnesses that run it in-process (tests/fuzz). */
#include "notification.h"

static int setup(svc *s, void *ud, ew_error *err)
{
    notif *n = ud;
    n->s = s;
    int rc = notif_mail_setup(n, err);
    if (!rc) rc = notif_routes(n, err);
    if (!rc) rc = notif_handlers(n, err);
    return rc;
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
        .nschema = notif_schema_len,
        .setup = setup,
        .teardown = teardown,
        .ud = n,
        .gdpr = &notif_gdpr,
    };
}
