/* eventwire — the settings of the reference system's services, and their names.
 *
 * The library's configuration (eventwire/config.h) holds the library's settings; the services
 * define theirs on it with ew_config_define(): those the runtime of every service reads (HTTP,
 * its own database, the outbox, retention, tokens: svc_settings_common) and each service's own
 * (SMTP_URL for notification-service, ...). svc.c defines both at start; `NAME --settings` and
 * `ewctl config --service NAME` list them, and docs/configuration.md is generated from all. */
#ifndef EW_SVC_SETTINGS_H
#define EW_SVC_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include "eventwire/config.h"

typedef struct svc_settings {
    const char *service;   /* "auth-service"; NULL for the common ones */
    const ew_setting *own; /* static */
    size_t nown;
} svc_settings;

/* The settings every service reads. Static. */
const svc_settings *svc_settings_common(void);

/* The services of the system, in the order they start: i < 5, then NULL. Static. */
const svc_settings *svc_settings_at(int i);

/* The name of the system's service i (svc_settings_at(i)->service), or NULL past the end. */
const char *svc_system_name(int i);

/* The service named service, or NULL. */
const svc_settings *svc_settings_find(const char *service);

/* Defines the common settings on cfg, and service's own unless service is NULL. EW_EINVAL for
 * a service this system does not have. */
int svc_settings_define(ew_config *cfg, const char *service, ew_error *err);

/* A list of service names parsed from "a,b,c" (USER_DATA_SERVICES), at most SVC_MAX_SERVICES. */
#define SVC_MAX_SERVICES 32
typedef struct svc_names {
    char buf[1024];
    const char *name[SVC_MAX_SERVICES];
    size_t n;
} svc_names;

/* Parses csv into l; -1 when it is not a list of 1..SVC_MAX_SERVICES distinct names of
 * [a-z0-9._-]. */
int svc_names_parse(svc_names *l, const char *csv);
bool svc_names_has(const svc_names *l, const char *name);

/* USER_DATA_SERVICES of cfg, parsed into l (which borrows nothing from cfg); EW_ECONFIG naming
 * the setting when it is not such a list. */
int svc_user_data_services(const ew_config *cfg, svc_names *l, ew_error *err);

#endif
