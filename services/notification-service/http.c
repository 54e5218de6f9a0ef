/* notification-service: the HTTP API. GET /notifications/{user_id} lists what was sent to a user.
 */
#include <string.h>
#include "core/json.h"
#include "notification.h"

static void get_notifications(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    notif *n = ud;
    const char *id = ew_http_param(rq, "user_id");
    if (!svc_uuid_valid(id)) {
        ew_http_reply_error(res, 400, "user_id", "user_id must be a UUID (lower-case 8-4-4-4-12)");
        return;
    }
    ew_txn *t;
    ew_error e = {0};
    if (svc_begin(n->s, &t, &e)) {
        svc_reply_failure(n->s, res, "listing notifications", &e);
        return;
    }
    ew_buf data;
    ew_buf_init(&data);
    bool found = false;
    int rc = notif_user_json(t, id, &data, &found, &e);
    ew_txn_rollback(t);
    if (rc) {
        svc_reply_failure(n->s, res, "listing notifications", &e);
    } else if (!found) {
        ew_http_reply_error(res, 404, "user_id", "notification-service holds nothing about user %s",
                            id);
    } else {
        ew_buf b;
        ew_buf_init(&b);
        ew_buf_puts(&b, "{\"user_id\":");
        ew_json_write_string(&b, id, strlen(id));
        ew_buf_putc(&b, ',');
        ew_buf_append(&b, data.data + 1, data.len - 1); /* the members of data, and its '}' */
        if (b.oom)
            ew_http_reply_error(res, 500, NULL, "out of memory");
        else
            ew_http_reply_raw(res, 200, b.data, b.len);
        ew_buf_release(&b);
    }
    ew_buf_release(&data);
}

int notif_routes(notif *n, ew_error *err)
{
    return svc_route(n->s, "GET /notifications/{user_id}", 0, get_notifications, n, err);
}
