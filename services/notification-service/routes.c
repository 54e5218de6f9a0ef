/* notification-service: the HTTP API. GET /notifications/{user_id} lists what was sent to a user.
 */
#include "notification.h"

static void get_notifications(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    notif *n = ud;
    svc_reply_user_data(n->s, rq, res, "listing notifications");
}

const svc_http_route notif_routes[] = {
    {"GET /notifications/{user_id}", 0, get_notifications},
    {0},
};
