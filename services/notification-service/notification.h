/* notification-service: the emails of the flows (docs/services-notification.md).
 *
 * Tables (in the service's database, schema event_store; store.c, created at every start):
 *   notification_users     one row per user: the address and name from user.registered
 *   notification_messages  one row per message sent, unique per (user, template, what it is
 *                          about): the record that makes a redelivered or repeated event send
 *                          nothing twice
 *
 * Delivery (mail.c): over SMTP with libcurl when SMTP_URL is set, else each message is an
 * RFC 5322 file MAIL_DIR/<message_id>.eml. */
#ifndef NOTIFICATION_H
#define NOTIFICATION_H

#include <stdbool.h>
#include <stddef.h>
#include "svc.h"

#define NOTIF_SERVICE "notification-service"
#define NOTIF_PORT 8003

/* Message ids: 36 characters, UUID-shaped, derived from (template, reference), so that a retried
 * send of one message has the same id, the same file name and the same Message-ID header. */
#define NOTIF_ID_LEN 36

typedef struct notif {
    svc *s;
    char *smtp_url;    /* NULL: .eml files into mail_dir */
    char *smtp_ca;     /* SMTP_CA_FILE; NULL: the system's authorities */
    bool smtp_login;   /* the URL has a user */
    bool smtp_clear;   /* the URL ends in ?tls=none: no TLS (refused with a user) */
    char *from_header; /* MAIL_FROM as configured: "Name <addr>" or "addr" */
    char *from_addr;   /* its address alone */
    char *domain;      /* the address's domain, for Message-ID */
    char *mail_dir;
    long smtp_timeout_ms;
} notif;

typedef struct notif_mail {
    const char *to;            /* a plain address */
    const char *subject;       /* UTF-8; encoded for the header when it is not ASCII */
    const char *body;          /* UTF-8 text, lines separated by \n */
    const char *template_name; /* "welcome", "password_reset", "data_export_ready" */
    char message_id[NOTIF_ID_LEN + 1];
} notif_mail;

/* ---- service.c: the service for svc_main(), with n as its state: zeroed, alive as long as the
 * service runs. curl_global_init() is the caller's, before any thread starts. */
svc_def notif_service(notif *n);

/* ---- routes.c and handlers.c: the HTTP routes and the event handlers (svc_def.routes and
 * .handlers: the last entry is {0}) */
extern const svc_http_route notif_routes[];
extern const svc_handler notif_handlers[];
/* The user's data as notification-service holds it (handlers.c): {"address": {...} or null,
 * "messages": [...]}, or {} when it holds nothing; the runtime answers the GDPR events from it,
 * GET /notifications/{user_id} serves it. */
extern const svc_gdpr notif_gdpr;

/* ---- store.c: the tables */

/* CREATE TABLE IF NOT EXISTS statements, NULL-terminated, run at every start (svc_def.schema). */
extern const char *const notif_schema[];

/* ---- mail.c: composing and delivering */

/* Reads SMTP_URL, SMTP_CA_FILE, MAIL_FROM, MAIL_DIR, SMTP_TIMEOUT_MS; creates MAIL_DIR. */
int notif_mail_setup(notif *n, ew_error *err);
void notif_mail_teardown(notif *n);

/* Sends one message. 0, or -1 with the reason in why. */
int notif_send(notif *n, const notif_mail *m, char *why, size_t why_len);

/* Removes the .eml file of a message from MAIL_DIR, when there is one. */
void notif_mail_forget(notif *n, const char *message_id);

/* The id of the message `template_name` about `ref` (a user, a reset request, an export). */
void notif_message_id(const char *template_name, const char *ref, char out[NOTIF_ID_LEN + 1]);

#endif
