/* eventwire — configuration.
 *
 * A configuration is an object set by name and value (librdkafka's rd_kafka_conf_set): every
 * entry is checked when it is set, so a bad value is refused at start with its name and the
 * reason. The names are the environment variables of the system (EVENT_BUS_TYPE, ...);
 * ew_config_from_env() reads all of them at once. ew_config_describe() lists every name with its
 * default and meaning; docs/configuration.md and `ewctl config` print that list.
 *
 * Thread safety: a config is not locked. Set it up on one thread, then share it read-only. */
#ifndef EVENTWIRE_CONFIG_H
#define EVENTWIRE_CONFIG_H

#include <stdint.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_config ew_config;

/* One known configuration entry. */
typedef struct ew_config_entry {
    const char *name; /* the environment variable, e.g. "EVENT_BUS_TYPE" */
    const char *def;  /* the default value as text; "" for none */
    const char
        *allowed;    /* what a value may be, in words, e.g. "memory|sqlite|redis|kafka|rabbitmq" */
    const char *doc; /* one sentence */
} ew_config_entry;

/* A new configuration holding every default. Caller frees with ew_config_free(). */
int ew_config_new(ew_config **out, ew_error *err);

/* A deep copy. Caller frees with ew_config_free(). */
int ew_config_dup(ew_config **out, const ew_config *cfg, ew_error *err);

void ew_config_free(ew_config *cfg);

/* Sets one entry. EW_ECONFIG with "NAME: reason" when the name is unknown or the value is not
 * allowed; the entry keeps its previous value then. value is copied. */
int ew_config_set(ew_config *cfg, const char *name, const char *value, ew_error *err);

/* Sets every known entry that the environment defines. Stops at the first bad value, naming it. */
int ew_config_from_env(ew_config *cfg, ew_error *err);

/* The value of an entry (borrowed, valid until the entry is set again or cfg is freed); NULL for
 * an unknown name. */
const char *ew_config_get(const ew_config *cfg, const char *name);

/* The value of an entry as it may be shown (ewctl config, logs): the password of a URL
 * (scheme://user:***@host) and of a password= parameter, and in key=value lists the values of
 * keys that name a password, a secret, a key or credentials, are written ***. Into buf (n bytes,
 * NUL included; cut when longer); returns buf, or NULL for an unknown name. */
const char *ew_config_shown(const ew_config *cfg, const char *name, char *buf, size_t n);

/* url with the password of its user info and of a password= parameter written ***, into buf
 * (n bytes, NUL included; cut when longer). Returns buf. For logs and messages. */
const char *ew_url_redact(const char *url, char *buf, size_t n);

/* The value of a numeric or boolean entry (booleans are 0 or 1). Unknown names give 0. */
int64_t ew_config_get_int(const ew_config *cfg, const char *name);

/* The table of known entries: entry i for i < n, or NULL past the end. Static storage. */
const ew_config_entry *ew_config_describe(int i);

#ifdef __cplusplus
}
#endif
#endif
