/* notification-service: what the service is (its tables, settings and setup), for main.c
 * and for the harnesses that run it in-process (tests/fuzz). */
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include "notification.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.notification_users ("
    " user_id TEXT PRIMARY KEY,"
    " email TEXT NOT NULL,"
    " username TEXT NOT NULL,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.notification_messages ("
    " message_id TEXT PRIMARY KEY,"
    " user_id TEXT NOT NULL,"
    " template TEXT NOT NULL,"
    " ref TEXT NOT NULL,"
    " email TEXT NOT NULL,"
    " subject TEXT NOT NULL,"
    " transport TEXT NOT NULL CHECK (transport IN ('smtp', 'file')),"
    " sent_at TEXT NOT NULL,"
    " UNIQUE (user_id, template, ref))",
    /* A welcome owed to a user whose address is not known yet (user.profile_created handled
     * before user.registered: their subscriptions run apart); sent when the address comes. */
    "CREATE TABLE IF NOT EXISTS event_store.notification_pending_welcomes ("
    " user_id TEXT PRIMARY KEY,"
    " display_name TEXT,"
    " created_at TEXT NOT NULL)",
};

void notif_message_id(const char *template_name, const char *ref, char out[NOTIF_ID_LEN + 1])
{
    unsigned char h[16];
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const unsigned char *)"eventwire-mail", 14, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)template_name, strlen(template_name) + 1);
    crypto_generichash_update(&st, (const unsigned char *)ref, strlen(ref));
    crypto_generichash_final(&st, h, sizeof h);
    h[6] = (unsigned char)((h[6] & 0x0f) | 0x80); /* UUID version 8: custom */
    h[8] = (unsigned char)((h[8] & 0x3f) | 0x80); /* RFC 9562 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < sizeof h; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[h[i] >> 4];
        out[o++] = hex[h[i] & 15];
    }
    out[o] = '\0';
}

/* ---- the process ----------------------------------------------------------------------------- */

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
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .teardown = teardown,
        .ud = n,
        .gdpr = &notif_gdpr,
    };
}
